"""A blocking client for an app's attach endpoint (tests, the CLI, tools)."""

from __future__ import annotations

import json
import os

from iottymux import attachproto as proto
from iottymux.unixsock import connect_unix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


def endpoint_path(run_dir: str, app: str) -> str:
    """Where a monitor with ``run_dir`` puts ``app``'s attach socket."""
    return os.path.join(run_dir, "apps", app, "attach.sock")


def read_endpoints(app_dir: str) -> dict[str, Any]:
    """The ``endpoints`` file of an app directory."""
    with open(os.path.join(app_dir, "endpoints"), "rb") as f:
        body: dict[str, Any] = json.load(f)
    return body


class AttachClient:
    """One attach session: connect, say hello, then exchange frames."""

    def __init__(
        self,
        path: str,
        *,
        stdin: bool = True,
        stdout: bool = True,
        stderr: bool = True,
        replay: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        self.path = path
        self.sock = connect_unix(path, timeout)
        self._decoder = proto.FrameDecoder(proto.SERVER_KINDS)
        self._frames: list[tuple[int, bytes]] = []
        self.sock.sendall(
            proto.encode_hello(stdin=stdin, stdout=stdout, stderr=stderr, replay=replay)
        )
        kind, payload = self.next_frame()
        if kind == proto.ERROR:
            self.close()
            raise ConnectionError(payload.decode(errors="replace"))
        if kind != proto.READY:
            self.close()
            raise proto.AttachProtocolError(f"expected READY, got frame kind {kind}")
        self.ready = proto.decode_json(payload)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AttachClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending -------------------------------------------------------------

    def send_stdin(self, data: bytes) -> None:
        for start in range(0, len(data), proto.MAX_PAYLOAD):
            self.sock.sendall(proto.encode(proto.STDIN, data[start : start + proto.MAX_PAYLOAD]))

    def close_stdin(self) -> None:
        self.sock.sendall(proto.encode(proto.STDIN_CLOSE))

    def resize(self, rows: int, cols: int) -> None:
        self.sock.sendall(proto.encode_resize(rows, cols))

    # -- receiving -----------------------------------------------------------

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """For event-loop users: decode bytes read from :attr:`sock` themselves."""
        return self._decoder.receive_data(data)

    def next_frame(self) -> tuple[int, bytes]:
        """The next frame; ``ConnectionError`` once the monitor closed the socket."""
        while not self._frames:
            data = self.sock.recv(1 << 18)
            if not data:
                raise ConnectionError("attach connection closed")
            self._frames.extend(self._decoder.receive_data(data))
        return self._frames.pop(0)

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """Every frame until the connection closes."""
        while True:
            try:
                yield self.next_frame()
            except ConnectionError:
                return

    def collect(self) -> tuple[bytes, bytes, dict[str, Any] | None, str | None]:
        """Read to the end: (stdout, stderr, exit body or None, error or None)."""
        out, err = bytearray(), bytearray()
        exit_body: dict[str, Any] | None = None
        error: str | None = None
        for kind, payload in self.frames():
            if kind == proto.STDOUT:
                out += payload
            elif kind == proto.STDERR:
                err += payload
            elif kind == proto.EXIT:
                exit_body = proto.decode_json(payload)
            elif kind == proto.ERROR:
                error = payload.decode(errors="replace")
        return bytes(out), bytes(err), exit_body, error
