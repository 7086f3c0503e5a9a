"""The ``rktlet`` command: ``serve`` (the CRI daemon, :mod:`cri.server`), ``pod``/``app``/
``image`` (the CRI client, :mod:`cri.client`), ``version``.

One entry point for both sides; each is imported only when chosen, so the client
never loads the daemon and the daemon never loads the client."""

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
            "  pod       create, list, inspect, stop and remove pods (CRI client)\n"
            "  app       add, start, stop, rm, list, status, exec, attach, logs of apps\n"
            "  image     pull, list, remove images (CRI); import into the store\n"
            "  version   print the version\n\n"
            "'rktlet COMMAND --help' describes each; pod/app/image take\n"
            "--runtime-endpoint PATH (env RKTLET_ENDPOINT, default /run/rktlet/rktlet.sock).\n"
        )
        return 0
    command, rest = args[0], args[1:]
    if command == "version":
        print("rktlet 0.1.0 (CRI v1)")
        return 0
    if command == "serve":
        return _serve(rest)
    if (
        command in ("pod", "app")
        or command.startswith("-")
        or (command == "image" and rest and not _store_image(rest))
    ):
        from cri.client import main as client

        return client.main(args)
    if command == "image":
        from cri.client import image_store

        return image_store.main(args)
    print(f"rktlet: unknown command {command!r}", file=sys.stderr)
    return 2


def _store_image(rest: list[str]) -> bool:
    from cri.client.main import is_store_image_command

    return is_store_image_command(rest)


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
