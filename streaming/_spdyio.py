"""The asyncio shell around the sans-IO SPDY codec (both the server's and a client's).

One task reads the transport and feeds the codec; writers queue frames on the
codec and flush it.  Flushing is serialised by a lock, and whoever holds the lock
keeps flushing until the codec's buffer is empty, so the reader never waits for
a slow client just to queue a ping echo.

Inbound data is buffered per stream up to a mark; past it the reader stops
reading the transport until the consumer catches up, which is how a client
that sends faster than the container reads gets pushed back (SPDY peers in
Kubernetes do no flow control of their own).  A stream nobody will read is put
in discard mode so that it can never hold the reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from . import spdy
from ._backends import NetworkStream

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
STREAM_BUFFER_MARK = 256 * 1024


class SpdyStream:
    """One SPDY stream, as a DuplexStream for the runtime and the sessions."""

    def __init__(self, session: SpdySession, stream_id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.remote_closed = False
        self.reset_by_peer = False
        self.local_closed = False
        self.discarding = False
        self.replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended = asyncio.Event()

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # fed by the session's reader

    def _feed(self, data: bytes, fin: bool) -> None:
        if data and not self.discarding:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered >= STREAM_BUFFER_MARK:
                self._drained.clear()
        if fin:
            self.remote_closed = True
        self._readable.set()

    def _end(self, *, reset: bool) -> None:
        self.remote_closed = True
        if reset:
            self.reset_by_peer = True
            self.local_closed = True
        self._readable.set()
        self._drained.set()
        self.ended.set()
        if not self.replied.done():
            self.replied.set_exception(ConnectionResetError(f"stream {self.stream_id} reset"))
            # Peer-opened streams have nobody awaiting this; don't log it as lost.
            self.replied.exception()

    # the consumer's side

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._chunks:
            if self.remote_closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._buffered < STREAM_BUFFER_MARK:
            self._drained.set()
        return chunk

    def discard(self) -> None:
        """Drop whatever arrives from now on (for streams nobody reads)."""
        self.discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._drained.set()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self.local_closed or self.session.broken:
            raise ConnectionResetError(f"stream {self.stream_id} is closed")
        try:
            self.session.conn.send_data(self.stream_id, data)
        except spdy.SpdyLocalProtocolError as exc:
            # The stream ended under us (a RST not yet seen by the reader): for the
            # runtime that is a vanished client, like any other.
            raise ConnectionResetError(str(exc)) from exc
        await self.session.flush()

    async def close(self) -> None:
        """Half-close our side (empty DATA with FIN)."""
        if self.local_closed or self.session.broken:
            return
        self.local_closed = True
        with contextlib.suppress(spdy.SpdyLocalProtocolError):
            self.session.conn.end_stream(self.stream_id)
        self.session.prune(self)
        await self.session.flush_quietly()

    async def reset(self, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None:
        if self.session.broken:
            return
        self.local_closed = True
        self.session.conn.reset_stream(self.stream_id, status)
        self._end(reset=False)
        self.discard()
        self.session.streams.pop(self.stream_id, None)
        await self.session.flush_quietly()


class SpdySession:
    """A SpdyConnection running over a NetworkStream.

    ``on_stream`` is called, synchronously in the reader, for each stream the peer
    opens; it must call :meth:`accept` or :meth:`reject` on it before returning.
    """

    def __init__(
        self,
        transport: NetworkStream,
        role: spdy.Role,
        *,
        on_stream: Callable[[SpdyStream], None] | None = None,
        initial_data: bytes = b"",
        idle_timeout: float | None = None,
    ) -> None:
        self.transport = transport
        self.conn = spdy.SpdyConnection(role)
        self.on_stream = on_stream
        self.streams: dict[int, SpdyStream] = {}
        self._initial = initial_data
        self._write_lock = asyncio.Lock()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self.closed = asyncio.Event()
        self.goaway_received = asyncio.Event()
        self.broken = False
        self.error: Exception | None = None

    # --- writing -------------------------------------------------------------

    async def flush(self) -> None:
        """Write out everything the codec queued; waits while the transport is full."""
        async with self._write_lock:
            while data := self.conn.data_to_send():
                self.last_activity = time.monotonic()
                try:
                    await self.transport.write(data)
                except (ConnectionError, OSError) as exc:
                    self.broken = True
                    raise ConnectionResetError(str(exc)) from exc

    async def flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.flush()

    def _flush_soon(self) -> None:
        """Flush from the reader without waiting on a writer that holds the lock."""
        if not self._write_lock.locked():
            asyncio.get_running_loop().create_task(self.flush_quietly())

    def accept(self, stream: SpdyStream) -> None:
        self.conn.send_syn_reply(stream.stream_id)

    def reject(self, stream: SpdyStream, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None:
        self.conn.reset_stream(stream.stream_id, status)
        stream.discard()
        stream._end(reset=False)

    async def open_stream(
        self, headers: Sequence[tuple[str, str]], *, timeout: float = 30.0
    ) -> SpdyStream:
        """Open a stream (client side) and wait for the peer's SYN_REPLY."""
        stream_id = self.conn.send_syn_stream(headers)
        stream = SpdyStream(self, stream_id, tuple(headers))
        self.streams[stream_id] = stream
        await self.flush()
        await asyncio.wait_for(asyncio.shield(stream.replied), timeout)
        return stream

    async def ping(self, timeout: float = 30.0) -> float:
        start = time.monotonic()
        ping_id = self.conn.ping()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[ping_id] = waiter
        await self.flush()
        await asyncio.wait_for(waiter, timeout)
        return time.monotonic() - start

    async def goaway(self, status: spdy.GoAwayStatus = spdy.GoAwayStatus.OK) -> None:
        if self.broken or self.conn.session_state in (
            spdy.SessionState.GOAWAY_SENT,
            spdy.SessionState.GOAWAY_BOTH,
            spdy.SessionState.ERROR,
        ):
            return
        self.conn.send_goaway(status)
        await self.flush_quietly()

    async def aclose(self) -> None:
        self.broken = True
        await self.transport.aclose()
        self._end_all()

    def _end_all(self) -> None:
        for stream in self.streams.values():
            stream._end(reset=True)
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("session closed"))
        self.closed.set()

    # --- reading -------------------------------------------------------------

    async def run(self) -> None:
        """Read until the peer closes the transport or breaks the protocol."""
        try:
            if self._initial:
                self.conn.receive_data(self._initial)
                self._initial = b""
                await self._dispatch()
            while not self.closed.is_set():
                data = await self._read()
                if data is None:
                    break
                self.conn.receive_data(data)
                await self._dispatch()
                if not data:
                    break
        except spdy.SpdyRemoteProtocolError as exc:
            log.info("SPDY peer broke the protocol: %s", exc)
            self.error = exc
            await self.flush_quietly()
        except (ConnectionError, OSError) as exc:
            self.error = exc
        finally:
            self.broken = True
            self._end_all()

    async def _read(self) -> bytes | None:
        """The next bytes, or None when the idle timeout expired."""
        while True:
            if self.idle_timeout is None:
                return await self.transport.read(READ_SIZE)
            left = self.last_activity + self.idle_timeout - time.monotonic()
            if left <= 0:
                await self._idle_expired()
                return None
            try:
                data = await asyncio.wait_for(self.transport.read(READ_SIZE), left)
            except TimeoutError:
                continue
            self.last_activity = time.monotonic()
            return data

    async def _idle_expired(self) -> None:
        log.info("SPDY session idle for %ss, closing", self.idle_timeout)
        for stream_id in self.conn.open_streams():
            self.conn.reset_stream(stream_id, spdy.RstStatus.CANCEL)
        await self.goaway()

    async def _dispatch(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is spdy.NEED_DATA:
                break
            self._handle(event)  # type: ignore[arg-type]
            # Back-pressure: a stream over its mark holds the reader here.
            for stream in list(self.streams.values()):
                if not stream._drained.is_set():
                    if self.conn.data_pending:
                        self._flush_soon()
                    await stream._drained.wait()
        if self.conn.data_pending:
            self._flush_soon()

    def _handle(self, event: spdy.Event) -> None:
        match event:
            case spdy.StreamOpened(stream_id, headers):
                stream = SpdyStream(self, stream_id, headers)
                self.streams[stream_id] = stream
                if event.fin:
                    stream.remote_closed = True
                if self.on_stream is None:
                    self.reject(stream)
                else:
                    self.on_stream(stream)
            case spdy.DataReceived(stream_id, data, fin):
                if (target := self.streams.get(stream_id)) is not None:
                    target._feed(data, fin)
                    self.prune(target)
            case spdy.ReplyReceived(stream_id, _headers, fin):
                if (target := self.streams.get(stream_id)) is not None:
                    if not target.replied.done():
                        target.replied.set_result(None)
                    if fin:
                        target._feed(b"", True)
            case spdy.StreamReset(stream_id):
                if (target := self.streams.pop(stream_id, None)) is not None:
                    target._end(reset=True)
            case spdy.PingAcknowledged(ping_id):
                waiter = self._pings.pop(ping_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            case spdy.GoAwayReceived():
                self.goaway_received.set()
            case spdy.ConnectionClosed():
                self._end_all()
            case _:
                pass

    def prune(self, stream: SpdyStream) -> None:
        """Drop a stream the codec has forgotten (closed both ways) from our table."""
        if self.conn.stream_state(stream.stream_id) is spdy.StreamState.IDLE:
            self.streams.pop(stream.stream_id, None)
            stream.ended.set()
