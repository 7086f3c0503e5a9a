"""The asyncio shell around :class:`ChannelConnection`.

One reader task feeds the codec and routes channel messages to per-channel
inputs; writers queue messages and flush under a lock, as in ``_spdyio``.  An
input buffers up to a mark and then holds the reader, so a client that sends
faster than the container reads is pushed back through TCP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ._backends import NetworkStream
from .websocket import (
    BinaryMessage,
    ChannelClosed,
    ChannelConnection,
    ChannelData,
    CloseReceived,
    ProtocolFailed,
)

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
INPUT_MARK = 256 * 1024


class WsInput:
    """Bytes arriving on one channel (or, in tunnel mode, every binary message)."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.eof = False

    def feed(self, data: bytes) -> None:
        if self.eof or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= INPUT_MARK:
            self.drained.clear()
        self._readable.set()

    def end(self) -> None:
        self.eof = True
        self._readable.set()
        self.drained.set()

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._chunks:
            if self.eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._buffered < INPUT_MARK:
            self.drained.set()
        return chunk


class WsOutput:
    """An output channel; WebSocket has no per-channel EOF, so close does nothing."""

    def __init__(self, session: WsSession, channel: int) -> None:
        self.session = session
        self.channel = channel

    async def write(self, data: bytes) -> None:
        if data:
            await self.session.send(self.channel, data)

    async def close(self) -> None:
        return None


class WsSession:
    """A ChannelConnection running over a NetworkStream."""

    def __init__(
        self,
        transport: NetworkStream,
        conn: ChannelConnection,
        *,
        initial_data: bytes = b"",
        idle_timeout: float | None = None,
    ) -> None:
        self.transport = transport
        self.conn = conn
        self._initial = initial_data
        self.inputs: dict[int, WsInput] = {}
        self.on_close_signal: Callable[[int], None] | None = None
        self.tunnel_input: WsInput | None = WsInput() if conn.tunnel else None
        self._write_lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.close_received = asyncio.Event()
        self.broken = False
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()

    async def send(self, channel: int, data: bytes) -> None:
        if self.broken or self.conn.closed:
            raise ConnectionResetError("websocket closed")
        self.conn.send(channel, data)
        await self.flush()

    async def send_binary(self, data: bytes) -> None:
        if self.broken or self.conn.closed:
            raise ConnectionResetError("websocket closed")
        self.conn.send_binary(data)
        await self.flush()

    async def flush(self) -> None:
        async with self._write_lock:
            while chunks := self.conn.data_to_send():
                for chunk in chunks:
                    if not chunk:
                        await self.transport.write_eof()
                        continue
                    self.last_activity = time.monotonic()
                    try:
                        await self.transport.write(chunk)
                    except (ConnectionError, OSError) as exc:
                        self.broken = True
                        raise ConnectionResetError(str(exc)) from exc

    async def flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.flush()

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Send Close and wait, bounded, for the client's Close or EOF; then close TCP."""
        if not self.broken:
            self.conn.close(code)
            await self.flush_quietly()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout)
        await self.transport.aclose()

    async def run(self) -> None:
        try:
            if self._initial:
                self._receive(self._initial)
                self._initial = b""
                await self._after_receive()
            while not self.closed.is_set():
                data = await self._read()
                if data is None:
                    break
                self._receive(data)
                await self._after_receive()
                if not data:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.broken = self.broken or not self.conn.closed
            self._end_inputs()
            self.closed.set()

    async def _read(self) -> bytes | None:
        while True:
            if self.idle_timeout is None:
                return await self.transport.read(READ_SIZE)
            left = self.last_activity + self.idle_timeout - time.monotonic()
            if left <= 0:
                log.info("websocket session idle for %ss, closing", self.idle_timeout)
                self.conn.close(1000)
                await self.flush_quietly()
                return None
            try:
                data = await asyncio.wait_for(self.transport.read(READ_SIZE), left)
            except TimeoutError:
                continue
            self.last_activity = time.monotonic()
            return data

    def _receive(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events():
            match event:
                case ChannelData(channel, payload):
                    target = self.inputs.get(channel)
                    if target is not None:
                        target.feed(payload)
                case BinaryMessage(payload):
                    if self.tunnel_input is not None:
                        self.tunnel_input.feed(payload)
                case ChannelClosed(channel):
                    if (target := self.inputs.get(channel)) is not None:
                        target.end()
                    if self.on_close_signal is not None:
                        self.on_close_signal(channel)
                case CloseReceived():
                    self.close_received.set()
                    self._end_inputs()
                case ProtocolFailed(reason):
                    log.info("websocket peer broke the protocol: %s", reason)
                    self._end_inputs()

    async def _after_receive(self) -> None:
        await self.flush_quietly()
        if self.conn.closed:
            self.closed.set()
            return
        for target in self._all_inputs():
            if not target.drained.is_set():
                await target.drained.wait()

    def _all_inputs(self) -> list[WsInput]:
        inputs = list(self.inputs.values())
        if self.tunnel_input is not None:
            inputs.append(self.tunnel_input)
        return inputs

    def _end_inputs(self) -> None:
        for target in self._all_inputs():
            target.end()


class WsTunnelStream:
    """A NetworkStream made of a WebSocket's binary messages (SPDY tunnelling)."""

    def __init__(self, session: WsSession) -> None:
        assert session.tunnel_input is not None
        self.session = session
        self._input = session.tunnel_input

    async def read(self, max_bytes: int) -> bytes:
        return await self._input.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self.session.send_binary(data)

    async def write_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.session.close()

    def get_extra_info(self, name: str) -> Any:
        return self.session.transport.get_extra_info(name)
