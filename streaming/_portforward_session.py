"""Port-forward sessions: SPDY (also tunnelled in WebSocket) and WebSocket channels."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from . import remotecommand as rc
from . import spdy
from ._backends import NetworkStream
from ._spdyio import SpdySession, SpdyStream
from ._wsio import WsInput, WsSession, WsTunnelStream
from .config import StreamingConfig
from .requests import PortForwardRequest
from .runtime import Runtime
from .websocket import ChannelConnection

log = logging.getLogger(__name__)


@dataclass
class _Pair:
    key: str
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    port: int = 0
    timer: asyncio.TimerHandle | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class _SpdyPortForward:
    def __init__(
        self,
        request: PortForwardRequest,
        runtime: Runtime,
        config: StreamingConfig,
    ) -> None:
        self.request = request
        self.runtime = runtime
        self.config = config
        self.pairs: dict[str, _Pair] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: SpdySession | None = None

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_stream(self, stream: SpdyStream) -> None:
        session = self.session
        assert session is not None
        try:
            headers = rc.parse_port_forward_headers(stream.headers)
        except rc.PortForwardHeaderError as exc:
            log.info("refusing port-forward stream %d: %s", stream.stream_id, exc)
            session.reject(stream)
            return
        session.accept(stream)
        key = rc.port_forward_pair_key(headers, stream.stream_id)
        pair = self.pairs.get(key)
        if pair is None:
            pair = self.pairs[key] = _Pair(key)
            loop = asyncio.get_running_loop()
            pair.timer = loop.call_later(self.config.port_forward_pair_timeout, self._expire, pair)
        if headers.stream_type is rc.StreamType.ERROR:
            # The client only ever FINs its side of the error stream.
            stream.discard()
            if pair.error is not None:
                self._spawn(self._duplicate(pair.error, stream, key, "error"))
                return
            pair.error = stream
        else:
            if pair.data is not None:
                target = pair.error
                self._spawn(self._duplicate(target, stream, key, "data"))
                return
            pair.data = stream
            pair.port = headers.port
        if pair.error is not None and pair.data is not None:
            if pair.timer is not None:
                pair.timer.cancel()
            del self.pairs[key]
            self._spawn(self._forward(pair))

    async def _duplicate(
        self, error: SpdyStream | None, extra: SpdyStream, key: str, kind: str
    ) -> None:
        if error is not None:
            with contextlib.suppress(ConnectionError):
                await error.write(f"{kind} stream already exists for request id {key}".encode())
        await extra.reset()

    def _expire(self, pair: _Pair) -> None:
        if self.pairs.get(pair.key) is pair:
            del self.pairs[pair.key]
            self._spawn(self._timed_out(pair))

    async def _timed_out(self, pair: _Pair) -> None:
        if pair.error is not None:
            with contextlib.suppress(ConnectionError):
                await pair.error.write(b"timed out waiting for streams")
            await pair.error.reset()
        if pair.data is not None:
            await pair.data.reset()

    async def _forward(self, pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        try:
            await self.runtime.port_forward(self.request.pod_sandbox_id, pair.port, pair.data)
        except Exception as exc:
            log.info("port-forward to %d failed: %s", pair.port, exc)
            message = rc.port_forward_error(pair.port, self.request.pod_sandbox_id, str(exc))
            with contextlib.suppress(ConnectionError):
                await pair.error.write(message)
            await pair.error.reset()
            await pair.data.reset()
            return
        await pair.data.close()
        await pair.error.close()

    async def run(self, transport: NetworkStream, initial: bytes) -> None:
        self.session = session = SpdySession(
            transport,
            spdy.Role.SERVER,
            on_stream=self.on_stream,
            initial_data=initial,
            idle_timeout=self.config.idle_timeout,
        )
        try:
            await session.run()
        finally:
            for pair in self.pairs.values():
                if pair.timer is not None:
                    pair.timer.cancel()
            for task in list(self.tasks):
                task.cancel()
            for task in list(self.tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await session.goaway()
            await session.aclose()


async def serve_spdy_port_forward(
    transport: NetworkStream,
    initial: bytes,
    request: PortForwardRequest,
    runtime: Runtime,
    config: StreamingConfig,
) -> None:
    """SPDY ``portforward.k8s.io``: many connections, each an error/data stream pair."""
    await _SpdyPortForward(request, runtime, config).run(transport, initial)


async def serve_ws_tunnel_port_forward(
    transport: NetworkStream,
    initial: bytes,
    request: PortForwardRequest,
    runtime: Runtime,
    config: StreamingConfig,
) -> None:
    """``SPDY/3.1+portforward.k8s.io``: the SPDY protocol inside binary messages."""
    ws = WsSession(
        transport, ChannelConnection(rc.PORT_FORWARD_TUNNEL, tunnel=True), initial_data=initial
    )
    reader = asyncio.create_task(ws.run())
    try:
        await _SpdyPortForward(request, runtime, config).run(WsTunnelStream(ws), b"")
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await transport.aclose()


class _WsPortChannel:
    """A DuplexStream over a data channel of a WebSocket port-forward."""

    def __init__(self, session: WsSession, channel: int) -> None:
        self.session = session
        self.channel = channel
        self.input = session.inputs[channel] = WsInput()

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self.input.read(max_bytes)

    async def write(self, data: bytes) -> None:
        if data:
            await self.session.send(self.channel, data)

    async def close(self) -> None:
        return None


async def serve_ws_port_forward(
    transport: NetworkStream,
    initial: bytes,
    request: PortForwardRequest,
    protocol: str,
    runtime: Runtime,
    config: StreamingConfig,
) -> None:
    """WebSocket channels: data on 2i and errors on 2i+1 for the i-th requested port."""
    session = WsSession(
        transport,
        ChannelConnection(protocol),
        initial_data=initial,
        idle_timeout=config.idle_timeout,
    )
    channels = [_WsPortChannel(session, 2 * i) for i in range(len(request.port))]
    reader = asyncio.create_task(session.run())

    async def forward(index: int, port: int) -> None:
        try:
            await runtime.port_forward(request.pod_sandbox_id, port, channels[index])
        except Exception as exc:
            log.info("port-forward to %d failed: %s", port, exc)
            message = rc.port_forward_error(port, request.pod_sandbox_id, str(exc))
            with contextlib.suppress(ConnectionError):
                await session.send(2 * index + 1, message)

    work: asyncio.Future[list[None]] | None = None
    try:
        for index, port in enumerate(request.port):
            prefix = rc.encode_port_prefix(port)
            await session.send(2 * index, prefix)
            await session.send(2 * index + 1, prefix)
        work = asyncio.gather(*(forward(i, p) for i, p in enumerate(request.port)))
        gone: asyncio.Future[Any] = asyncio.ensure_future(session.closed.wait())
        waits: list[asyncio.Future[Any]] = [work, gone]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if work.done():
            await session.close(1000, config.finish_timeout)
    except ConnectionError:
        pass
    finally:
        if work is not None and not work.done():
            # The client left: the pod connections go with it.
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await transport.aclose()
