"""exec and attach sessions, over SPDY and over WebSocket.

Both transports share :func:`run_remotecommand`, which calls the runtime and
turns its outcome into what goes on the error stream.  Sessions end the way the
newest upstream server does: the outputs are finished, the status is written,
and then we wait (bounded) for the client to close, because closing at once
loses output still in flight to a slow reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import remotecommand as rc
from . import spdy
from ._backends import NetworkStream
from ._spdyio import SpdySession, SpdyStream
from ._wsio import WsInput, WsOutput, WsSession
from .config import StreamingConfig
from .requests import AttachRequest, ExecRequest
from .runtime import ResizeQueue, Runtime, Streams
from .websocket import ChannelConnection

log = logging.getLogger(__name__)


async def run_remotecommand(
    runtime: Runtime,
    request: ExecRequest | AttachRequest,
    streams: Streams,
    resize: ResizeQueue | None,
    version: rc.Version,
    transport_closed: asyncio.Event,
) -> bytes:
    """Run the exec or attach and return the error-stream payload.

    If the client goes away first, the runtime call is cancelled: an exec's
    process is killed and an attach detaches, so nothing outlives its session.
    """
    cmd: tuple[str, ...] = ()
    work: asyncio.Future[int | None]
    if isinstance(request, ExecRequest):
        cmd = request.cmd
        work = asyncio.ensure_future(
            runtime.exec(request.container_id, request.cmd, streams, request.tty, resize)
        )
    else:
        work = asyncio.ensure_future(_attach(runtime, request, streams, resize))
    gone = asyncio.ensure_future(transport_closed.wait())
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            # The client left, or the server is stopping: the runtime call ends too.
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
    if work.cancelled():
        return b""
    try:
        result = work.result()
    except Exception as exc:
        log.info("%s in %s failed: %s", type(request).__name__, request.container_id, exc)
        what = "executing command" if cmd else "attaching to container"
        return rc.error_stream_payload(version, None, error=f"error {what} in container: {exc}")
    if isinstance(request, AttachRequest):
        return rc.error_stream_payload(version, 0)
    code = int(result) if result is not None else 0
    if not 0 <= code <= 255:
        return rc.error_stream_payload(
            version, None, error=f"command {list(cmd)} ended without an exit code ({code})"
        )
    return rc.error_stream_payload(version, code, cmd=cmd)


async def _attach(
    runtime: Runtime, request: AttachRequest, streams: Streams, resize: ResizeQueue | None
) -> None:
    await runtime.attach(request.container_id, streams, request.tty, resize)


# --- SPDY ---------------------------------------------------------------------------


async def serve_spdy_remotecommand(
    transport: NetworkStream,
    initial: bytes,
    request: ExecRequest | AttachRequest,
    protocol: str,
    runtime: Runtime,
    config: StreamingConfig,
) -> None:
    version = rc.version_of(protocol)
    expected = {rc.StreamType.ERROR.value}
    if request.stdin:
        expected.add(rc.StreamType.STDIN.value)
    if request.stdout:
        expected.add(rc.StreamType.STDOUT.value)
    if request.stderr:
        expected.add(rc.StreamType.STDERR.value)
    if request.tty and version.has_resize:
        expected.add(rc.StreamType.RESIZE.value)
    by_type: dict[str, SpdyStream] = {}
    extra: list[SpdyStream] = []
    ready = asyncio.Event()

    def on_stream(stream: SpdyStream) -> None:
        stream_type = stream.header(rc.STREAM_TYPE_HEADER) or ""
        session.accept(stream)
        if stream_type in expected and stream_type not in by_type:
            by_type[stream_type] = stream
            if stream_type not in (rc.StreamType.STDIN.value, rc.StreamType.RESIZE.value):
                # The client never writes these; nothing may ever hold the reader.
                stream.discard()
            if len(by_type) == len(expected):
                ready.set()
        else:
            log.info("ignoring extra SPDY stream of type %r", stream_type)
            stream.discard()
            extra.append(stream)

    session = SpdySession(
        transport,
        spdy.Role.SERVER,
        on_stream=on_stream,
        initial_data=initial,
        idle_timeout=config.idle_timeout,
    )
    reader = asyncio.create_task(session.run())
    try:
        if not await _first(ready, session.closed, config.stream_creation_timeout):
            # Upstream abandons the session silently; there is no stream to report on.
            log.info("SPDY client did not create streams %s in time", sorted(expected))
            return
        if version is rc.Version.V1:
            # v1 servers closed stdin and reset the error stream at once (k8s #13394).
            await by_type[rc.StreamType.ERROR.value].reset()
        resize: ResizeQueue | None = None
        resize_task: asyncio.Task[None] | None = None
        if (resize_stream := by_type.get(rc.StreamType.RESIZE.value)) is not None:
            resize = ResizeQueue()
            resize_task = asyncio.create_task(_pump_resize(resize_stream, resize))
        streams = Streams(
            stdin=by_type.get(rc.StreamType.STDIN.value),
            stdout=by_type.get(rc.StreamType.STDOUT.value),
            stderr=by_type.get(rc.StreamType.STDERR.value),
            tty=request.tty,
        )
        payload = await run_remotecommand(
            runtime, request, streams, resize, version, session.closed
        )
        if resize_task is not None:
            resize_task.cancel()
        if session.broken:
            return
        for stream in extra:
            # A client that made streams we did not expect must not wait on them forever.
            await stream.close()
        await _finish_spdy(session, by_type, payload, config)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await session.aclose()


async def _finish_spdy(
    session: SpdySession, by_type: dict[str, SpdyStream], payload: bytes, config: StreamingConfig
) -> None:
    for name in (rc.StreamType.STDOUT.value, rc.StreamType.STDERR.value):
        if (out := by_type.get(name)) is not None:
            await out.close()
    for name in (rc.StreamType.STDIN.value, rc.StreamType.RESIZE.value):
        if (inp := by_type.get(name)) is not None:
            # Tell the client to stop sending; a stream it already ended just gets our FIN.
            if inp.remote_closed:
                await inp.close()
            else:
                await inp.reset()
    error = by_type[rc.StreamType.ERROR.value]
    if payload and not error.local_closed:
        with contextlib.suppress(ConnectionError):
            await error.write(payload)
    await error.close()
    await _first(session.closed, session.goaway_received, config.finish_timeout)
    await session.goaway()


async def _pump_resize(stream: SpdyStream, queue: ResizeQueue) -> None:
    decoder = rc.ResizeDecoder()
    try:
        while data := await stream.read():
            for size in decoder.feed(data):
                queue.put(size)
            if decoder.failed:
                # Keep the stream drained so the client's writer never stalls.
                stream.discard()
                break
    finally:
        queue.close()


async def _first(a: asyncio.Event, b: asyncio.Event, timeout: float) -> bool:
    """Wait for ``a`` (True), or ``b`` or the timeout (False)."""
    ta = asyncio.ensure_future(a.wait())
    tb = asyncio.ensure_future(b.wait())
    try:
        await asyncio.wait({ta, tb}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ta.cancel()
        tb.cancel()
    return a.is_set()


# --- WebSocket ----------------------------------------------------------------------


async def serve_ws_remotecommand(
    transport: NetworkStream,
    initial: bytes,
    request: ExecRequest | AttachRequest,
    protocol: str,
    runtime: Runtime,
    config: StreamingConfig,
) -> None:
    version = rc.version_of(protocol)
    session = WsSession(
        transport,
        ChannelConnection(protocol),
        initial_data=initial,
        idle_timeout=config.idle_timeout,
    )
    stdin: WsInput | None = None
    if request.stdin:
        stdin = session.inputs[rc.Channel.STDIN] = WsInput()
    resize: ResizeQueue | None = None
    if request.tty and version.has_resize:
        resize = ResizeQueue()
        resize_input = session.inputs[rc.Channel.RESIZE] = _ResizeInput(resize)
    reader = asyncio.create_task(session.run())
    try:
        first = (
            rc.Channel.STDOUT
            if request.stdout
            else rc.Channel.STDERR
            if request.stderr
            else rc.Channel.ERROR
        )
        # Clients wait for this empty message to know the streams are live.
        await session.send(first, b"")
        streams = Streams(
            stdin=stdin,
            stdout=WsOutput(session, rc.Channel.STDOUT) if request.stdout else None,
            stderr=WsOutput(session, rc.Channel.STDERR) if request.stderr else None,
            tty=request.tty,
        )
        payload = await run_remotecommand(
            runtime, request, streams, resize, version, session.closed
        )
        if resize is not None:
            resize_input.end()
        if session.broken or session.closed.is_set():
            return
        if payload:
            with contextlib.suppress(ConnectionError):
                await session.send(rc.Channel.ERROR, payload)
        await session.close(1000, config.finish_timeout)
    except ConnectionError:
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await transport.aclose()


class _ResizeInput(WsInput):
    """The resize channel: each message is decoded at once into the queue."""

    def __init__(self, queue: ResizeQueue) -> None:
        super().__init__()
        self._queue = queue
        self._decoder = rc.ResizeDecoder()

    def feed(self, data: bytes) -> None:
        for size in self._decoder.feed(data):
            self._queue.put(size)

    def end(self) -> None:
        super().end()
        self._queue.close()
