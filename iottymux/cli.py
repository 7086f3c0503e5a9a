"""The ``iottymux`` command: ``monitor``, ``logs`` and ``attach``.

Each subcommand lives in its own module and is imported only when chosen, so
that ``iottymux monitor`` loads nothing but what the monitor needs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: iottymux COMMAND [ARGS...]

commands:
  monitor   run the per-pod monitor (normally started by rktlet)
  logs      read CRI log files: tail, follow, since, merged containers
  attach    attach to a running app's stdio or tty
  forkserver  (internal) start pods' monitors by fork, for rktlet

Run 'iottymux COMMAND --help' for a command's options.
"""

COMMANDS = {
    "monitor": "iottymux.monitor_cmd",
    "logs": "iottymux.logs_cmd",
    "attach": "iottymux.attach_cmd",
    "forkserver": "iottymux.forkserver",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if args[0] == "--version":
        from iottymux import __version__

        print(f"iottymux {__version__}")
        return 0
    module_name = COMMANDS.get(args[0])
    if module_name is None:
        sys.stderr.write(f"iottymux: unknown command {args[0]!r}\n{USAGE}")
        return 2
    import importlib

    module = importlib.import_module(module_name)
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
