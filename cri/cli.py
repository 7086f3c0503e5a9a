"""The ``rktlet`` command: ``serve`` (the CRI daemon), ``image``, ``version``."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from cri.errors import RktletError


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: rktlet COMMAND [ARGS...]\n\n"
            "commands:\n"
            "  serve     run the CRI daemon (RuntimeService + ImageService)\n"
            "  image     pull, list, remove and import images\n"
            "  version   print the version\n"
        )
        return 0
    command, rest = args[0], args[1:]
    if command == "version":
        print("rktlet 0.1.0 (CRI v1)")
        return 0
    if command == "serve":
        return _serve(rest)
    if command == "image":
        from cri import image_cmd

        return image_cmd.main(args)
    print(f"rktlet: unknown command {command!r}", file=sys.stderr)
    return 2


def _serve(argv: list[str]) -> int:
    from cri.config import load
    from cri.server import serve

    try:
        config = load(argv)
    except RktletError as exc:
        print(f"rktlet serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
