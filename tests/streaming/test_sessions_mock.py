"""A session over the in-package MockStream: no sockets, a scripted runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streaming import ExecRequest, ResizeQueue, StreamingConfig, Streams, TerminalSize, spdy
from streaming._backends import MockStream
from streaming._exec_session import serve_spdy_remotecommand
from streaming.runtime import DuplexStream


class ScriptedRuntime:
    def __init__(self) -> None:
        self.sizes: list[TerminalSize] = []
        self.stdin = b""

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: Streams,
        tty: bool,
        resize_queue: ResizeQueue | None,
    ) -> int:
        assert streams.stdin is not None and streams.stdout is not None
        assert resize_queue is not None
        self.sizes.append(await resize_queue.get() or TerminalSize(0, 0))
        while data := await streams.stdin.read():
            self.stdin += data
        await streams.stdout.write(b"hi " + self.stdin)
        return 3

    async def attach(self, *args: object) -> None:
        raise NotImplementedError

    async def port_forward(self, pod: str, port: int, stream: DuplexStream) -> None:
        raise NotImplementedError


def test_spdy_exec_session_over_a_mock_stream() -> None:
    client = spdy.SpdyConnection(spdy.Role.CLIENT)
    for name in ("error", "stdin", "stdout", "resize"):
        client.send_syn_stream([("streamtype", name)])
    client.send_data(7, b'{"Width":120,"Height":50}\n')
    client.send_data(3, b"there", fin=True)
    client.ping()
    transport = MockStream([client.data_to_send()], eof=False)
    runtime = ScriptedRuntime()
    request = ExecRequest("c", ("sh",), tty=True, stdin=True, stdout=True)

    async def main() -> None:
        session = asyncio.create_task(
            serve_spdy_remotecommand(
                transport, b"", request, "v4.channel.k8s.io", runtime, StreamingConfig()
            )
        )
        # The server answers, then waits for the client to close: let it see EOF.
        while b'"ExitCode"' not in transport.written:
            transport.wrote.clear()
            await asyncio.wait_for(transport.wrote.wait(), 5)
        transport.feed(b"")
        await asyncio.wait_for(session, 5)

    asyncio.run(main())
    assert runtime.sizes == [TerminalSize(120, 50)] and runtime.stdin == b"there"
    client.receive_data(bytes(transport.written))
    events = []
    while (event := client.next_event()) is not spdy.NEED_DATA:
        events.append(event)
    replies = [e.stream_id for e in events if isinstance(e, spdy.ReplyReceived)]
    assert replies == [1, 3, 5, 7]
    assert spdy.PingAcknowledged(1) in events
    data = {e.stream_id: e for e in events if isinstance(e, spdy.DataReceived) and e.data}
    assert data[5].data == b"hi there"
    assert b'"message":"3"' in data[1].data
    # Outputs and the error stream end with FIN; stdin and resize were finished too.
    fins = {e.stream_id for e in events if isinstance(e, spdy.DataReceived) and e.fin}
    resets = {e.stream_id for e in events if isinstance(e, spdy.StreamReset)}
    assert {1, 5} <= fins and 7 in resets and 3 in fins
    assert transport.closed
