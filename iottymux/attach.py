"""Attach endpoints: many clients per app, stdin fan-in, resize, slow-client isolation.

Theory of operation
-------------------
Every app has one :class:`AttachEndpoint`: a listening unix socket and the
connected :class:`Attacher` objects.  The monitor hands each read of the app's
output to :meth:`AttachEndpoint.broadcast`, which

* appends it to a ring buffer of recent output (replayed on request), and
* queues one frame per attacher: the frame header is new, the payload is the
  very bytes object the monitor read, shared by every attacher (no copies).

Queued frames are written with ``sendmsg`` whenever the attacher's socket takes
them.  Nothing ever waits for a client: an attacher whose queue grows past its
limit loses its queued output, is sent an ``ERROR`` frame saying why, and is
disconnected (after a short grace for that last frame); the app, the log and
the other attachers never notice.  A frame already partly written is finished
first, so the client's byte stream stays well formed.

That copies every read into every attacher's socket: the kernel's work grows with
the number of attachers, and a hundred of them cost the app most of its
throughput.  An attacher that asks for the *ring* (``HELLO`` ``ring``) gets the
output through the endpoint's :class:`~iottymux.outring.OutputRing` instead:
each read is written there once, whoever reads it; the attacher reads on by
itself while it is behind, and its socket carries its ``ACK`` frames and, when it
has caught up, a small ``RING`` wake-up once there is more.  How far a ring
attacher is behind is what it has not acknowledged; past its queue size plus the
socket buffer a socket attacher would have had (twice :data:`SEND_BUFFER`: the
same slack either way) it is disconnected with the same ``overflow`` reason, and
the ring is sized so that no attacher still served is ever overwritten.  The ring
is written only while ring attachers take output, and its pages are given back
when the last one has gone.

Stdin from all attachers goes into one queue, written to the app whole message
by whole message, in arrival order.  When the app does not read and the queue
passes its limit, the endpoint stops reading from attachers (back-pressure
instead of loss) until the app has taken half of it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import struct
import termios

from iottymux import attachproto as proto
from iottymux.outring import OutputRing
from iottymux.state import write_atomic
from iottymux.unixsock import listen_unix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from iottymux.loop import Loop, Timer

DEFAULT_QUEUE_SIZE = 1 << 20
DEFAULT_RING_SIZE = 64 << 10
#: Back-pressure bound on stdin waiting for the app to read it.
STDIN_QUEUE_LIMIT = 1 << 20
#: How long a disconnected attacher gets to take its last frame (EXIT, ERROR).
CLOSE_GRACE = 30.0
#: Requested socket send buffer of each attacher (capped by net.core.wmem_max).
SEND_BUFFER = 4 << 20
#: Buffers per sendmsg call (well under IOV_MAX).
SEND_BATCH = 64
RECV_SIZE = 1 << 18
#: The byte a tty turns into end-of-file for the app reading it (VEOF, ^D).
TTY_EOF = b"\x04"


class Attacher:
    """One client of an attach endpoint."""

    __slots__ = (
        "sock",
        "fd",
        "decoder",
        "greeted",
        "wants",
        "took_stdin",
        "queue",
        "queued",
        "head_sent",
        "closing",
        "grace",
        "closed",
        "paused",
        "detached",
        "ring",
        "notified",
        "acked",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.decoder = proto.FrameDecoder(proto.CLIENT_KINDS)
        self.greeted = False
        self.wants: frozenset[int] = frozenset()
        self.took_stdin = False
        # Frames waiting for the socket: (header, payload); ``head_sent``
        # bytes of the first one are already written.
        self.queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.queued = 0
        self.head_sent = 0
        self.closing = False
        self.grace: Timer | None = None
        self.closed = False
        self.paused = False
        self.detached = False
        #: Output comes through the endpoint's ring (until the attacher closes).
        self.ring = False
        #: Ring offsets: up to where it was last told (RING), up to where it has read (ACK).
        self.notified = 0
        self.acked = 0


class AttachEndpoint:
    """The attach socket of one app and everything attached to it."""

    def __init__(
        self,
        loop: Loop,
        app_dir: str,
        app_name: str,
        *,
        tty: bool,
        stdin_fd: int,
        stdin_once: bool,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        ring_size: int = DEFAULT_RING_SIZE,
        resize_fd: int = -1,
        on_stdin_closed: Callable[[int], None] = os.close,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.app_dir = app_dir
        self.app_name = app_name
        self.tty = tty
        self.stdin_fd = stdin_fd
        self.stdin_once = stdin_once
        self.queue_size = queue_size
        self.ring_size = ring_size
        self.path = os.path.join(app_dir, "attach.sock")
        #: The pty master, for TIOCSWINSZ (tty apps only).
        self.resize_fd = resize_fd
        self._on_stdin_closed = on_stdin_closed
        self._log = log or (lambda msg: None)
        self.attachers: dict[int, Attacher] = {}
        self.ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self.ring_bytes = 0
        self.stdin_queue: collections.deque[bytes] = collections.deque()
        self.stdin_queued = 0
        self.stdin_head_sent = 0
        self.stdin_closing = False  # close once the queue is written
        self.exit_body: dict[str, Any] | None = None
        self.state = "created"
        #: The shared output ring, while ring attachers are connected.
        self.output_ring: OutputRing | None = None
        #: Ring attachers still taking output (the ring is written while there are any),
        #: and those still connected (its pages are kept while there are any).
        self.ring_attachers = 0
        self._ring_holders = 0
        self.ring_sessions = 0
        # counters for status and metrics
        self.sessions = 0
        self.overflow_disconnects = 0
        self.stdin_bytes = 0
        os.makedirs(app_dir, mode=0o700, exist_ok=True)
        self.listener = listen_unix(self.path, mode=0o600)
        try:
            endpoints = {
                "version": 1,
                "app": app_name,
                "attach": self.path,
                "tty": tty,
                "stdin": stdin_fd >= 0,
            }
            write_atomic(os.path.join(app_dir, "endpoints"), json.dumps(endpoints).encode())
        except BaseException:
            self.listener.close()
            raise
        loop.add_reader(self.listener.fileno(), self._accept)

    # -- life of the endpoint --------------------------------------------------

    def close(self) -> None:
        for attacher in list(self.attachers.values()):
            self._drop(attacher)
        if self.output_ring is not None:
            self.output_ring.close()
            self.output_ring = None
        fd = self.listener.fileno()
        self.loop.forget(fd)
        self.listener.close()
        if self.stdin_fd >= 0:
            self.loop.remove_writer(self.stdin_fd)
        for name in ("attach.sock", "endpoints"):
            try:
                os.unlink(os.path.join(self.app_dir, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.app_dir)
        except OSError:
            pass

    def app_started(self) -> None:
        self.state = "running"

    def app_exited(self, body: dict[str, Any]) -> None:
        """Tell every attacher how the app ended, then let them go."""
        self.state = "exited"
        self.exit_body = body
        frame = proto.encode_json(proto.EXIT, body)
        end = self.output_ring.write_end if self.output_ring is not None else 0
        for attacher in list(self.attachers.values()):
            if attacher.greeted and not attacher.closing:
                if attacher.ring and attacher.notified < end:
                    # The last of the output first, whatever is still unanswered.
                    self._notify(attacher, end)
                self._finish(attacher, frame)
        # Nobody writes to a dead app's stdin.
        self.stdin_queue.clear()
        self.stdin_queued = 0

    def status(self) -> dict[str, int]:
        return {
            "attachers": len(self.attachers),
            "ring_attachers": self.ring_attachers,
            "ring_sessions": self.ring_sessions,
            "sessions": self.sessions,
            "overflow_disconnects": self.overflow_disconnects,
            "stdin_bytes": self.stdin_bytes,
            "ring_bytes": self.ring_bytes,
        }

    # -- output ------------------------------------------------------------------

    def broadcast(self, kind: int, data: bytes) -> None:
        """One read of the app's output, for the replay ring and every attacher."""
        self._remember(kind, data)
        if not self.attachers:
            return
        head = proto.header(kind, len(data))
        start = end = 0
        if self.ring_attachers and self.output_ring is not None:
            start = self.output_ring.write_end
            end = self.output_ring.append((head, data))
        for attacher in list(self.attachers.values()):
            if attacher.closing:
                continue
            if attacher.ring:
                # A paused attacher's ACKs wait behind its stdin: it cannot be judged
                # now (if it falls a whole ring behind it sees that itself).
                if start - attacher.acked > self._ring_limit() and not attacher.paused:
                    self._overflow(attacher, self._ring_limit())
                elif attacher.notified <= attacher.acked:
                    self._notify(attacher, end)
            elif kind in attacher.wants:
                self._enqueue(attacher, head, data)

    def _notify(self, attacher: Attacher, end: int) -> None:
        """Tell a ring attacher its output is in the ring up to ``end``."""
        attacher.notified = end
        self._enqueue(attacher, proto.encode_offset(proto.RING, end), b"")

    def _ring_limit(self) -> int:
        """How far behind a ring attacher may fall: as far as a socket attacher can
        (its queue, and the socket buffer, which the kernel makes twice SO_SNDBUF)."""
        return self.queue_size + 2 * SEND_BUFFER

    def _ring_capacity(self) -> int:
        # Room for the limit plus the frame that crosses it and the next one:
        # an attacher still served is never overwritten (see broadcast).
        frame = proto.HEADER_SIZE + proto.MAX_PAYLOAD
        return -(-(self._ring_limit() + 2 * frame) // 4096) * 4096

    def _join_ring(self, attacher: Attacher) -> int:
        """Make ``attacher`` a ring reader; a read-only descriptor of the ring for it."""
        if self.output_ring is None:
            self.output_ring = OutputRing(self._ring_capacity())
        fd = self.output_ring.reader_fd()
        attacher.ring = True
        attacher.notified = attacher.acked = self.output_ring.write_end
        self.ring_attachers += 1
        self._ring_holders += 1
        self.ring_sessions += 1
        return fd

    def _remember(self, kind: int, data: bytes) -> None:
        if self.ring_size <= 0:
            return
        if len(data) >= self.ring_size:
            self.ring.clear()
            self.ring.append((kind, data[-self.ring_size :]))
            self.ring_bytes = self.ring_size
            return
        self.ring.append((kind, data))
        self.ring_bytes += len(data)
        while self.ring_bytes > self.ring_size:
            old_kind, old = self.ring[0]
            excess = self.ring_bytes - self.ring_size
            if len(old) <= excess:
                self.ring.popleft()
                self.ring_bytes -= len(old)
            else:
                self.ring[0] = (old_kind, old[excess:])
                self.ring_bytes -= excess

    def _enqueue(self, attacher: Attacher, head: bytes, payload: bytes) -> None:
        attacher.queue.append((head, payload))
        attacher.queued += len(head) + len(payload)
        if len(attacher.queue) == 1:
            self._flush(attacher)
            if attacher.closed:
                return
        if not attacher.closing and self._backlog(attacher) > self.queue_size:
            self._overflow(attacher)

    @staticmethod
    def _backlog(attacher: Attacher) -> int:
        """Bytes waiting behind the frame being written: how far the client lags.

        The frame at the head is the one the socket takes next; counting it would
        drop a client that is merely one read behind when reads are as large as
        the queue.
        """
        if not attacher.queue:
            return 0
        head, payload = attacher.queue[0]
        return attacher.queued - (len(head) + len(payload) - attacher.head_sent)

    def _overflow(self, attacher: Attacher, limit: int = 0) -> None:
        self.overflow_disconnects += 1
        reason = (
            f"overflow: attacher fell more than {limit or self.queue_size} bytes behind the "
            "app's output; disconnected so that the app and its log are not slowed"
        )
        self._log(f"{self.app_name}: {reason}")
        # Keep the frame being written, if any, so the stream stays well formed.
        keep = attacher.queue[0] if attacher.head_sent else None
        attacher.queue.clear()
        attacher.queued = 0
        if keep is not None:
            attacher.queue.append(keep)
            attacher.queued = len(keep[0]) + len(keep[1]) - attacher.head_sent
        self._finish(attacher, proto.encode(proto.ERROR, reason.encode()))

    def _finish(self, attacher: Attacher, last_frame: bytes) -> None:
        """Send a last frame, then close; a client that never reads gets a grace."""
        if attacher.ring and not attacher.closing:
            # It takes no new output; what it was told of it may still read.
            self.ring_attachers -= 1
        attacher.closing = True
        if attacher.fd in self.attachers:
            self._stop_reading(attacher)
        attacher.queue.append((last_frame, b""))
        attacher.queued += len(last_frame)
        attacher.grace = self.loop.call_later(CLOSE_GRACE, lambda: self._drop(attacher))
        self._flush(attacher)

    def _flush(self, attacher: Attacher) -> None:
        queue = attacher.queue
        while queue:
            buffers: list[bytes | memoryview] = []
            skip = attacher.head_sent
            for i in range(min(len(queue), SEND_BATCH)):
                for piece in queue[i]:
                    if skip >= len(piece):
                        skip -= len(piece)
                        continue
                    buffers.append(memoryview(piece)[skip:] if skip else piece)
                    skip = 0
            offered = sum(map(len, buffers))
            try:
                sent = attacher.sock.sendmsg(buffers) if buffers else 0
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(attacher)
                return
            attacher.queued -= sent
            done = sent + attacher.head_sent
            while queue:
                size = len(queue[0][0]) + len(queue[0][1])
                if done < size:
                    break
                done -= size
                queue.popleft()
            attacher.head_sent = done
            if sent < offered:
                break  # the socket is full; wait until it is writable
        if queue:
            self.loop.add_writer(attacher.fd, lambda: self._flush(attacher))
        else:
            self.loop.remove_writer(attacher.fd)
            if attacher.closing:
                self._drop(attacher)

    # -- connections ---------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log(f"{self.app_name}: attach accept failed: {exc}")
                return
            sock.setblocking(False)
            # A deep socket buffer lets a client that keeps up on average ride
            # out a burst without its queue filling (the kernel caps the size).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            attacher = Attacher(sock)
            self.attachers[attacher.fd] = attacher
            self.sessions += 1
            self.loop.add_reader(attacher.fd, functools.partial(self._receive, attacher))

    def _stop_reading(self, attacher: Attacher) -> None:
        self.loop.remove_reader(attacher.fd)

    def _receive(self, attacher: Attacher) -> None:
        try:
            data = attacher.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._client_gone(attacher)
            return
        try:
            frames = attacher.decoder.receive_data(data)
        except proto.AttachProtocolError as exc:
            self._finish(attacher, proto.encode(proto.ERROR, f"protocol error: {exc}".encode()))
            return
        for kind, payload in frames:
            if attacher.closing:
                return
            try:
                self._handle(attacher, kind, payload)
            except proto.AttachProtocolError as exc:
                self._finish(attacher, proto.encode(proto.ERROR, f"protocol error: {exc}".encode()))
                return

    def _handle(self, attacher: Attacher, kind: int, payload: bytes) -> None:
        if not attacher.greeted:
            if kind != proto.HELLO:
                raise proto.AttachProtocolError("the first frame must be HELLO")
            self._hello(attacher, proto.decode_json(payload))
            return
        if kind == proto.STDIN:
            if attacher.took_stdin and not self.stdin_closing:
                self._queue_stdin(attacher, payload)
        elif kind == proto.RESIZE:
            rows, cols = proto.decode_resize(payload)
            self._resize(rows, cols)
        elif kind == proto.STDIN_CLOSE:
            self._stdin_ended(attacher)
        elif kind == proto.DETACH:
            attacher.detached = True
        elif kind == proto.ACK:
            self._acked(attacher, proto.decode_offset(payload))
        elif kind == proto.HELLO:
            raise proto.AttachProtocolError("HELLO sent twice")

    def _hello(self, attacher: Attacher, options: dict[str, Any]) -> None:
        attacher.greeted = True
        wants = set()
        if options.get("stdout", True):
            wants.add(proto.STDOUT)
        if options.get("stderr", True):
            wants.add(proto.STDERR)
        attacher.wants = frozenset(wants)
        attacher.took_stdin = bool(options.get("stdin", True)) and self.stdin_fd >= 0
        ready: dict[str, Any] = {
            "tty": self.tty,
            "stdin": attacher.took_stdin and not self.stdin_closing,
            "state": self.state,
        }
        ring_fd = -1
        if options.get("ring") and self.exit_body is None:
            try:
                ring_fd = self._join_ring(attacher)
            except OSError as exc:
                self._log(f"{self.app_name}: no attach ring, output goes by socket: {exc}")
        if ring_fd < 0:
            self._enqueue(attacher, proto.encode_json(proto.READY, ready), b"")
        else:
            assert self.output_ring is not None
            ready["ring"] = {"size": self.output_ring.capacity, "offset": attacher.acked}
            try:
                self._send_with_fd(attacher, proto.encode_json(proto.READY, ready), ring_fd)
            finally:
                os.close(ring_fd)
        if attacher.closed:
            return
        if options.get("replay"):
            for kind, data in list(self.ring):
                if kind in attacher.wants:
                    self._enqueue(attacher, proto.header(kind, len(data)), data)
                    if attacher.closing:
                        return
        if self.exit_body is not None:
            self._finish(attacher, proto.encode_json(proto.EXIT, self.exit_body))

    def _send_with_fd(self, attacher: Attacher, frame: bytes, fd: int) -> None:
        """The first frame an attacher gets, with a descriptor riding on its first byte."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
        try:
            sent = attacher.sock.sendmsg([frame], rights)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(attacher)
            return
        if sent == 0:
            # An empty socket takes a small frame whole; without the descriptor
            # the attacher could not read the ring, so it has to go.
            self._drop(attacher)
            return
        if sent < len(frame):
            self._enqueue(attacher, frame[sent:], b"")

    def _acked(self, attacher: Attacher, offset: int) -> None:
        if not attacher.ring:
            raise proto.AttachProtocolError("ACK from an attacher that reads no ring")
        ring = self.output_ring
        end = ring.write_end if ring is not None else 0
        if not attacher.acked <= offset <= end:
            raise proto.AttachProtocolError(
                f"ACK of offset {offset} is outside [{attacher.acked}, {end}]"
            )
        attacher.acked = offset
        if attacher.notified <= offset < end:
            self._notify(attacher, end)

    def _client_gone(self, attacher: Attacher) -> None:
        if not attacher.detached:
            self._stdin_ended(attacher)
        self._drop(attacher)

    def _drop(self, attacher: Attacher) -> None:
        if attacher.closed:
            return
        attacher.closed = True
        if attacher.ring:
            if not attacher.closing:
                self.ring_attachers -= 1
            attacher.ring = False
            self._ring_holders -= 1
            if self._ring_holders == 0 and self.output_ring is not None:
                self.output_ring.idle()
        if attacher.grace is not None:
            attacher.grace.cancel()
        self.attachers.pop(attacher.fd, None)
        self.loop.forget(attacher.fd)
        attacher.sock.close()
        attacher.queue.clear()
        attacher.queued = 0

    # -- stdin -------------------------------------------------------------------------

    def _queue_stdin(self, attacher: Attacher, data: bytes) -> None:
        if not data or self.stdin_fd < 0:
            return
        self.stdin_bytes += len(data)
        self.stdin_queue.append(data)
        self.stdin_queued += len(data)
        self._write_stdin()
        if self.stdin_queued > STDIN_QUEUE_LIMIT and attacher.fd in self.attachers:
            # The app is not reading: stop taking input rather than drop it.
            attacher.paused = True
            self.loop.remove_reader(attacher.fd)

    def _write_stdin(self) -> None:
        queue = self.stdin_queue
        while queue and self.stdin_fd >= 0:
            piece = queue[0]
            try:
                written = os.write(self.stdin_fd, memoryview(piece)[self.stdin_head_sent :])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EPIPE / EIO: the app closed its stdin or is gone.
                if exc.errno not in (errno.EPIPE, errno.EIO):
                    self._log(f"{self.app_name}: stdin write failed: {exc}")
                queue.clear()
                self.stdin_queued = 0
                self.stdin_head_sent = 0
                break
            self.stdin_head_sent += written
            self.stdin_queued -= written
            if self.stdin_head_sent == len(piece):
                queue.popleft()
                self.stdin_head_sent = 0
        if self.stdin_fd < 0:
            return
        if queue:
            self.loop.add_writer(self.stdin_fd, self._write_stdin)
        else:
            self.loop.remove_writer(self.stdin_fd)
            if self.stdin_closing:
                self._close_app_stdin()
        if self.stdin_queued <= STDIN_QUEUE_LIMIT // 2:
            for attacher in self.attachers.values():
                if attacher.paused and not attacher.closing:
                    attacher.paused = False
                    self.loop.add_reader(attacher.fd, functools.partial(self._receive, attacher))

    def _stdin_ended(self, attacher: Attacher) -> None:
        if not (attacher.took_stdin and self.stdin_once) or self.stdin_closing:
            return
        self.stdin_closing = True
        if not self.stdin_queue:
            self._close_app_stdin()

    def _close_app_stdin(self) -> None:
        if self.stdin_fd < 0:
            return
        if self.tty:
            # The pty master is the app's terminal: closing it would hang the
            # app up.  End-of-file on a terminal is the EOF character.
            try:
                os.write(self.stdin_fd, TTY_EOF)
            except OSError:
                pass
            self.loop.remove_writer(self.stdin_fd)
            self.stdin_fd = -1
            return
        fd, self.stdin_fd = self.stdin_fd, -1
        self.loop.remove_writer(fd)
        # The owner holds the pipe too; it closes it and forgets it.
        self._on_stdin_closed(fd)

    # -- resize --------------------------------------------------------------------------

    def _resize(self, rows: int, cols: int) -> None:
        if not self.tty or self.resize_fd < 0:
            return
        try:
            fcntl.ioctl(self.resize_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as exc:
            self._log(f"{self.app_name}: resize failed: {exc}")
