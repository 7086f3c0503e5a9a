"""``rktlet image``: pull, list, rm and import images in the local store.

The commands work on the store directly (``<root>/images``), the way ``rkt fetch`` and
``rkt image`` did, so that a node can be prepared before the daemon runs and so that a
pull can show its progress; the daemon sees the results through the shared SQLite
database.  Wire into the main CLI with :func:`add_subparsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cri.errors import RktletError
from cri.images.auth import Credentials
from cri.images.config import ImagesConfig, load_images_config_file
from cri.images.manager import ImageManager, ProgressEvent
from cri.images.store import ImageStore

__all__ = ["add_subparsers", "main"]

DEFAULT_ROOT = Path("/var/lib/rktlet")
DEFAULT_CONFIG = Path("/etc/rktlet/config.toml")


def add_subparsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``image`` with its subcommands to a parent parser's subparsers."""
    image = subparsers.add_parser("image", help="manage images in the local store")
    image.add_argument(
        "--root", dest="image_root", type=Path, help=f"rktlet state root (default {DEFAULT_ROOT})"
    )
    image.add_argument(
        "--config", dest="image_config", type=Path, help=f"config file (default {DEFAULT_CONFIG})"
    )
    sub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)

    pull = sub.add_parser("pull", help="pull an image from a registry")
    pull.add_argument("image", help="image reference, e.g. busybox or quay.io/x/y@sha256:…")
    pull.add_argument("--creds", metavar="USER[:PASSWORD]", help="registry credentials")
    pull.add_argument("--identity-token", default="", help="OAuth2 refresh token")
    pull.add_argument("--registry-token", default="", help="bearer token for the registry")
    pull.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    pull.set_defaults(image_handler=_pull)

    lst = sub.add_parser("list", aliases=["ls"], help="list images")
    lst.add_argument("filter", nargs="?", default="", help="show only this image")
    lst.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    lst.add_argument("--digests", action="store_true", help="show repo digests")
    lst.set_defaults(image_handler=_list)

    rm = sub.add_parser("rm", help="remove images (by id: whole image; by tag/digest: untag)")
    rm.add_argument("images", nargs="+")
    rm.set_defaults(image_handler=_rm)

    imp = sub.add_parser("import", help="import an OCI image-layout tar or a docker save tar")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", help="name for images the archive leaves unnamed")
    imp.set_defaults(image_handler=_import)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


class _Progress:
    """Pull progress on stderr: one updating line on a terminal, layer events otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        status = (
            f"{event.layers_done}/{event.layers_total} layers, "
            f"{_human(event.bytes_done)}/{_human(event.bytes_total)}"
        )
        if event.kind == "downloading":
            now = time.monotonic()
            if not self.tty or now - self.last < 0.1:
                return
            self.last = now
            self.out.write(f"\rdownloading {event.digest[:19]}  {status}\x1b[K")
        elif event.kind == "resolved":
            self.out.write(f"resolved {event.digest}: {status}\n")
        elif event.kind == "done":
            self.out.write(("\r\x1b[K" if self.tty else "") + f"done: {status}\n")
        else:
            prefix = "\r\x1b[K" if self.tty else ""
            self.out.write(f"{prefix}{event.kind} {event.digest}  {status}\n")
        self.out.flush()


def _credentials(args: argparse.Namespace) -> Credentials:
    username = password = ""
    if args.creds:
        username, sep, password = args.creds.partition(":")
        if not sep:
            password = getpass.getpass(f"password for {username}: ")
    return Credentials.from_auth_config(
        username=username,
        password=password,
        identity_token=args.identity_token,
        registry_token=args.registry_token,
        field="--creds",
    )


def _columns(rows: list[list[str]]) -> list[list[str]]:
    if not rows:
        return rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [[c.ljust(w) for c, w in zip(r, widths, strict=True)] for r in rows]


async def _pull(manager: ImageManager, args: argparse.Namespace, out: TextIO) -> int:
    progress = None if args.quiet else _Progress(sys.stderr)
    record = await manager.pull(args.image, _credentials(args), progress, field_name="image")
    print(record.id, file=out)
    return 0


async def _list(manager: ImageManager, args: argparse.Namespace, out: TextIO) -> int:
    records = manager.list_images(args.filter, "filter")
    if args.quiet:
        for r in records:
            print(r.id, file=out)
        return 0
    header = ["IMAGE", "TAG", "IMAGE ID", "SIZE"]
    if args.digests:
        header.insert(2, "DIGEST")
    rows = [header]
    for r in records:
        for name in list(r.repo_tags) or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":")
            row = [repo, tag, r.id.split(":", 1)[1][:12], _human(r.size)]
            if args.digests:
                mine = [d.split("@", 1)[1] for d in r.repo_digests if d.startswith(repo + "@")]
                row.insert(2, mine[0][:19] if mine else "<none>")
            rows.append(row)
    for row in _columns(rows):
        print("  ".join(row).rstrip(), file=out)
    return 0


async def _rm(manager: ImageManager, args: argparse.Namespace, out: TextIO) -> int:
    status = 0
    for image in args.images:
        if await manager.remove(image, "image"):
            print(f"removed {image}", file=out)
        else:
            print(f"rktlet image rm: no such image: {image}", file=sys.stderr)
            status = 1
    return status


async def _import(manager: ImageManager, args: argparse.Namespace, out: TextIO) -> int:
    records = await manager.import_archive(args.file, args.name)
    for r in records:
        names = ", ".join(r.repo_tags) or "(untagged)"
        print(f"imported {r.id} {names}", file=out)
    return 0


def _load_config(args: argparse.Namespace) -> ImagesConfig:
    path = args.image_config or getattr(args, "config", None) or DEFAULT_CONFIG
    return load_images_config_file(Path(path))


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    root = args.image_root or getattr(args, "root", None) or DEFAULT_ROOT
    config = _load_config(args)
    store = ImageStore(Path(root) / "images")
    manager = ImageManager(store, config)
    try:
        result: int = await args.image_handler(manager, args, out)
        return result
    finally:
        await manager.aclose()
        store.close()


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a parsed ``image`` command; domain errors become a message and exit code 1."""
    try:
        return asyncio.run(_run(args, out or sys.stdout))
    except RktletError as exc:
        print(f"rktlet image {args.image_command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rktlet")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subparsers(subparsers)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
