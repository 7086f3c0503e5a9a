"""``rktlet image`` through the CRI ImageService: pull, list and remove images.

``rktlet image import`` and any ``--root``/``--config`` work on the local store
instead, with no daemon: :mod:`cri.client.image_store`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import TextIO

from cri.api import api_pb2
from cri.client.common import (
    EXIT_CODES,
    EXIT_NOT_FOUND,
    EXIT_OK,
    Client,
    Parser,
    add_verb,
)
from cri.client.output import emit, size, table, to_dict

# -- image -------------------------------------------------------------------------------


class Spinner:
    """An elapsed-time spinner on a terminal while a call with no progress runs."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, err: TextIO) -> None:
        self.label = label
        self.err = err
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Spinner:
        if self.err.isatty():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self.started
            self.err.write(f"\r{self.FRAMES[frame % 4]} {self.label}  {elapsed:.1f}s\x1b[K")
            self.err.flush()
            frame += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.err.write("\r\x1b[K")
            self.err.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def image_pull(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    auth = api_pb2.AuthConfig()
    if args.creds:
        username, sep, password = args.creds.partition(":")
        if not sep:
            import getpass

            password = getpass.getpass(f"password for {username}: ")
        auth.username, auth.password = username, password
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=args.image), auth=auth)
    deadline = args.timeout  # None: no deadline for pulls unless --timeout is given
    with Spinner(f"pulling {args.image}", sys.stderr) as spinner:
        reply = client.call(client.images.PullImage, request, f"image pull {args.image}", deadline)
    if not args.quiet:
        print(f"pulled {args.image} in {spinner.elapsed:.1f}s", file=sys.stderr)
    print(reply.image_ref, file=out)
    return EXIT_OK


def image_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    request = api_pb2.ListImagesRequest()
    if args.filter:
        request.filter.image.image = args.filter
    images = list(client.call(client.images.ListImages, request, "image list").images)
    if args.output != "table":
        emit([to_dict(i) for i in images], args.output, out)
        return EXIT_OK
    if args.quiet:
        for i in images:
            print(i.id, file=out)
        return EXIT_OK
    rows = [["IMAGE", "TAG", "IMAGE ID", "SIZE"]]
    for i in images:
        for name in list(i.repo_tags) or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":")
            rows.append([repo, tag, i.id.split(":", 1)[-1][:13], size(i.size)])
    table(rows, out)
    return EXIT_OK


def image_rm(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    status = EXIT_OK
    for ref in args.images:
        reply = client.call(
            client.images.ImageStatus,
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)),
            f"image rm {ref}",
        )
        if not reply.image.id:
            print(f"rktlet image rm: IMAGE: no such image: {ref}", file=sys.stderr)
            status = EXIT_NOT_FOUND
            continue
        client.call(
            client.images.RemoveImage,
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)),
            f"image rm {ref}",
        )
        print(f"removed {ref}", file=out)
    return status


# -- the parser --------------------------------------------------------------------------


def add_parser(nouns: argparse._SubParsersAction[Parser]) -> None:
    """Add the ``image`` group and its verbs to the client's parser."""
    image = nouns.add_parser(
        "image",
        help="pull, list and remove images through CRI ('import' works on the store)",
        description=(
            "Images through the CRI ImageService.  'rktlet image import FILE' and any "
            "'rktlet image --root DIR ...' work on the local store instead (no daemon)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    verbs = image.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    p = add_verb(
        verbs,
        "pull",
        image_pull,
        "pull an image; print its reference",
        "  rktlet image pull docker.io/library/busybox:latest\n"
        "  rktlet image pull registry.example/app:1 --creds me",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--creds", metavar="USER[:PASSWORD]", help="registry credentials")
    p.add_argument("-q", "--quiet", action="store_true", help="no timing on stderr")
    p = add_verb(
        verbs,
        "list",
        image_list,
        "list images",
        "  rktlet image list\n  rktlet image list -q\n  rktlet image list -o yaml",
        aliases=["ls"],
    )
    p.add_argument("filter", nargs="?", default="", help="only this image")
    p.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    p = add_verb(
        verbs,
        "rm",
        image_rm,
        "remove images",
        "  rktlet image rm docker.io/library/busybox:latest",
        aliases=["remove"],
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
