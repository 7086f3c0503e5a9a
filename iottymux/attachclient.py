"""A blocking client for an app's attach endpoint (tests, the CLI, tools).

With ``ring=True`` it asks the monitor for the shared output ring
(:mod:`iottymux.outring`): output is then read from the ring when a ``RING`` frame
says it is there, and acknowledged; the frames handed out are the same either
way, so callers never see the difference.
"""

from __future__ import annotations

import json
import os
import socket

from iottymux import attachproto as proto
from iottymux.outring import RingLapped, RingReader
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
        ring: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        self.path = path
        self.sock = connect_unix(path, timeout)
        self._decoder = proto.FrameDecoder(proto.SERVER_KINDS)
        self._frames: list[tuple[int, bytes]] = []
        self.wants = {k for k, on in ((proto.STDOUT, stdout), (proto.STDERR, stderr)) if on}
        #: The output ring, when the monitor handed one over.
        self.ring: RingReader | None = None
        #: Where the next ring read starts.
        self.ring_offset = 0
        self._ring_frames = proto.FrameDecoder(frozenset({proto.STDOUT, proto.STDERR}))
        try:
            self.sock.sendall(
                proto.encode_hello(
                    stdin=stdin, stdout=stdout, stderr=stderr, replay=replay, ring=ring
                )
            )
            kind, payload = self._first_frame(ring)
            if kind == proto.ERROR:
                raise ConnectionError(payload.decode(errors="replace"))
            if kind != proto.READY:
                raise proto.AttachProtocolError(f"expected READY, got frame kind {kind}")
            self.ready = proto.decode_json(payload)
            if ring and self.ring is None and self.ready.get("ring"):
                raise proto.AttachProtocolError("READY offers a ring but carries no descriptor")
        except BaseException:
            self.close()
            raise

    def _first_frame(self, ring: bool) -> tuple[int, bytes]:
        """READY (or ERROR); with ``ring``, the descriptor that rides on it."""
        while not self._frames:
            if ring:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 18, 1)
                for fd in fds:
                    if self.ring is None:
                        self.ring = RingReader(fd)
                    else:
                        os.close(fd)
            else:
                data = self.sock.recv(1 << 18)
            if not data:
                raise ConnectionError("attach connection closed")
            frames = self._decoder.receive_data(data)
            if frames and frames[0][0] == proto.READY:
                info = proto.decode_json(frames[0][1]).get("ring")
                if isinstance(info, dict) and self.ring is not None:
                    self.ring_offset = int(info.get("offset", 0))
                elif self.ring is not None:  # a descriptor nobody announced
                    self.ring.close()
                    self.ring = None
                first, rest = frames[0], frames[1:]
                self._frames.append(first)
                self._frames.extend(self._expand(rest))
            else:
                self._frames.extend(frames)
        return self._frames.pop(0)

    def _expand(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Socket frames with every ``RING`` replaced by the output it points at."""
        out: list[tuple[int, bytes]] = []
        for kind, payload in frames:
            if kind != proto.RING:
                out.append((kind, payload))
                continue
            told = proto.decode_offset(payload)
            if self.ring is None:
                raise proto.AttachProtocolError("RING frame without a ring")
            if told > self.ring_offset:  # else: already read ahead past it
                out.extend(self._read_ring(told))
        return out

    def _read_ring(self, told: int) -> list[tuple[int, bytes]]:
        """Read the ring from where we are to at least ``told`` (on to its write end if
        more is there), acknowledge, and return the frames wanted."""
        assert self.ring is not None
        end = self.ring.available(self.ring_offset, told)
        if end <= self.ring_offset:
            return []
        try:
            data = self.ring.read(self.ring_offset, end)
        except RingLapped as exc:
            # The monitor would have said so too; this side found out first.
            self.ring.close()
            self.ring = None
            return [(proto.ERROR, f"overflow: {exc}".encode())]
        self.ring_offset = end
        try:
            self.sock.sendall(proto.encode_offset(proto.ACK, end))
        except OSError:
            pass  # the monitor has closed; what is read is still good
        return [f for f in self._ring_frames.receive_data(data) if f[0] in self.wants]

    def close(self) -> None:
        self.sock.close()
        if self.ring is not None:
            self.ring.close()
            self.ring = None

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
        return self._expand(self._decoder.receive_data(data))

    def next_frame(self) -> tuple[int, bytes]:
        """The next frame; ``ConnectionError`` once the monitor closed the socket."""
        while not self._frames:
            if self.ring is not None and self.ring.write_end() > self.ring_offset:
                # Behind: read on from the ring without waiting for a RING.
                self._frames.extend(self._read_ring(0))
                continue
            data = self.sock.recv(1 << 18)
            if not data:
                raise ConnectionError("attach connection closed")
            self._frames.extend(self._expand(self._decoder.receive_data(data)))
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
