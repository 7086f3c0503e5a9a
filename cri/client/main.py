"""``rktlet pod|app|image``: the CRI client's parser and entry point.

Each verb group is a module (:mod:`cri.client.pods`, :mod:`cri.client.apps`,
:mod:`cri.client.images`) that adds its parser here; :mod:`cri.cli` dispatches
``rktlet pod|app|image`` to :func:`main`, or to :mod:`cri.client.image_store` for the
commands that work on the local image store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from cri.client import apps, images, pods
from cri.client.common import (
    DEFAULT_ENDPOINT,
    DEFAULT_RUN_DIR,
    DEFAULT_TIMEOUT,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Client,
    CliError,
    Parser,
)
from cri.client.output import FORMATS

__all__ = ["build_parser", "is_store_image_command", "main"]


def build_parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="rktlet",
        description="A CRI client with rkt's app-level verbs (pods and their apps).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--runtime-endpoint", default=None, help=argparse.SUPPRESS)
    root.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)
    root.add_argument("-o", "--output", choices=FORMATS, default="table", help=argparse.SUPPRESS)
    root.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    nouns = root.add_subparsers(dest="noun", metavar="NOUN", required=True, parser_class=Parser)
    pods.add_parser(nouns)
    apps.add_parser(nouns)
    images.add_parser(nouns)
    return root


def is_store_image_command(argv: Sequence[str]) -> bool:
    """Whether ``rktlet image ARGS`` is a store command (:mod:`cri.client.image_store`)."""
    for arg in argv:
        if arg in ("--root", "--config") or arg.startswith(("--root=", "--config=")):
            return True
        if not arg.startswith("-"):
            return arg == "import"
    return False


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Run ``rktlet pod|app|image ...`` (``argv`` starts with the noun)."""
    out = out or sys.stdout
    client: Client | None = None
    try:
        words, trailing = list(argv), None
        if "--" in words:  # argparse 3.11 mishandles '--' inside subcommands: split here
            cut = words.index("--")
            words, trailing = words[:cut], words[cut + 1 :]
        args = build_parser().parse_args(words)
        if trailing is not None:
            if not hasattr(args, "command"):
                raise CliError("'--' only introduces the command of 'app add' and 'app exec'", 2)
            args.command = [*args.command, *trailing]
        endpoint = args.runtime_endpoint or os.environ.get("RKTLET_ENDPOINT") or DEFAULT_ENDPOINT
        timeout = args.timeout
        if timeout is not None and timeout <= 0:
            raise CliError("--timeout: must be positive", EXIT_USAGE)
        client = Client(endpoint, timeout or DEFAULT_TIMEOUT)
        result: int = args.handler(client, args, out)
        return result
    except CliError as exc:
        print(f"rktlet: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        if client is not None:
            client.close()
