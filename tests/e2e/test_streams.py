"""exec, attach and port-forward through the kubelet's API, over SPDY and WebSocket."""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractContextManager
from functools import partial

from streaming import remotecommand as rc
from streaming._spdyio import SpdyStream
from streaming.client import SpdyExec, SpdyPortForward, spdy_exec
from tests.e2e.cluster import Node, insecure_tls
from tests.e2e.pods import StaticPod, container, shell, static_pod
from tests.e2e.streams import (
    WsSession,
    port_forward_url,
    run,
    stream_url,
    ws_connection,
    ws_exec,
    ws_port_forward,
    ws_send,
)

SLEEPER = ["sleep", "3600"]
#: Waits until the terminal is 40x100 (the resize reached it), then answers one line.
#: Until the first resize the terminal is 0x0, which busybox's stty reports as an error.
WAIT_SIZE = 'until [ "$(stty size 2>/dev/null)" = "40 100" ]; do sleep 0.05; done; echo resized;'
RESIZED = WAIT_SIZE + ' read line; echo "got:$line"; exit 3'
ECHO_LINES = 'while read line; do echo "echo:$line"; done'
HTTP_GET = b"GET /index.html HTTP/1.0\r\n\r\n"
PAGE = b"hello from rktlet httpd\n"


def sleeper(node: Node, prefix: str) -> AbstractContextManager[StaticPod]:
    return static_pod(node, prefix, [container("c", node.image("busybox"), SLEEPER)])


async def read_until(stream: SpdyStream, needle: bytes, got: bytearray) -> bytes:
    while needle not in got:
        chunk = await stream.read()
        if not chunk:
            raise AssertionError(f"stream ended before {needle!r}: {bytes(got)!r}")
        got += chunk
    return bytes(got)


# -- exec -----------------------------------------------------------------------------------


def test_exec_spdy_output_and_exit_codes(node: Node) -> None:
    with sleeper(node, "exec-spdy") as pod:
        for code in (0, 3):
            url = stream_url(pod, "exec", "c", ["sh", "-c", f"echo out; echo err >&2; exit {code}"])
            result = run(node, partial(spdy_exec, url, ssl_context=insecure_tls()))
            assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
            assert result.exit_code == code
        url = stream_url(pod, "exec", "c", ["/no/such/binary"])
        result = run(node, lambda: spdy_exec(url, ssl_context=insecure_tls()))
        assert not result.status.success


def test_exec_spdy_stdin_and_its_end(node: Node) -> None:
    with sleeper(node, "exec-stdin") as pod:
        url = stream_url(pod, "exec", "c", ["sh", "-c", "cat; echo done"], stdin=True)
        result = run(node, lambda: spdy_exec(url, stdin=b"abc\ndef", ssl_context=insecure_tls()))
        assert result.stdout == b"abc\ndefdone\n"
        assert result.status.success


def test_exec_spdy_tty_with_resize(node: Node) -> None:
    with sleeper(node, "exec-tty") as pod:
        url = stream_url(pod, "exec", "c", ["sh", "-c", RESIZED], stdin=True, tty=True)

        async def main() -> tuple[bytes, int | None]:
            session = await SpdyExec.connect(url, stdin=True, tty=True, ssl_context=insecure_tls())
            assert session.stderr is None and session.stdout is not None
            await session.resize(100, 40)
            got = bytearray()
            await read_until(session.stdout, b"resized\r\n", got)
            await session.write_stdin(b"hello\r")
            await read_until(session.stdout, b"got:hello\r\n", got)
            result = await session.wait(30)
            return bytes(got) + result.stdout, result.exit_code

        out, code = run(node, main)
        assert out == b"resized\r\nhello\r\ngot:hello\r\n"
        assert code == 3


def test_exec_websocket_output_and_exit_codes(node: Node) -> None:
    with sleeper(node, "exec-ws") as pod:
        for code in (0, 5):
            url = stream_url(pod, "exec", "c", ["sh", "-c", f"echo out; echo err >&2; exit {code}"])
            channels, status = run(node, partial(ws_exec, url))
            assert (channels.get(1), channels.get(2)) == (b"out\n", b"err\n")
            assert status.exit_code == code and status.success == (code == 0)


def test_exec_websocket_stdin(node: Node) -> None:
    with sleeper(node, "exec-ws-in") as pod:
        url = stream_url(pod, "exec", "c", ["sh", "-c", 'read line; echo "got:$line"'], stdin=True)
        channels, status = run(node, lambda: ws_exec(url, b"abc\n"))
        assert channels.get(1) == b"got:abc\n"
        assert status.success


def test_exec_websocket_tty_with_resize(node: Node) -> None:
    with sleeper(node, "exec-ws-tty") as pod:
        url = stream_url(pod, "exec", "c", ["sh", "-c", RESIZED], stdin=True, tty=True)

        async def main() -> tuple[bytes, rc.Status]:
            async with ws_connection(url) as ws:
                await ws_send(
                    ws, rc.Channel.RESIZE, json.dumps({"Width": 100, "Height": 40}).encode()
                )
                session = WsSession(ws)
                await session.read_until(lambda s: b"resized\r\n" in s.stdout())
                await ws_send(ws, rc.Channel.STDIN, b"hello\r")
                await session.read_to_end()
                return session.stdout(), session.status()

        out, status = run(node, main)
        assert out == b"resized\r\nhello\r\ngot:hello\r\n"
        assert status.exit_code == 3


# -- attach -----------------------------------------------------------------------------------


def _attachable(
    node: Node, prefix: str, script: str, *, tty: bool = False
) -> AbstractContextManager[StaticPod]:
    return static_pod(
        node, prefix, [shell("c", node.image("busybox"), script, stdin=True, tty=tty)]
    )


def _still_running(pod: StaticPod) -> None:
    status = pod.container_status("c")
    assert "running" in status["state"] and status.get("restartCount", 0) == 0, status


def test_attach_spdy_stdin_and_half_close(node: Node) -> None:
    with _attachable(node, "attach", ECHO_LINES) as pod:
        url = stream_url(pod, "attach", "c", stdin=True)

        async def main(word: bytes) -> bytes:
            session = await SpdyExec.connect(url, stdin=True, ssl_context=insecure_tls())
            assert session.stdout is not None
            got = bytearray()
            await session.write_stdin(word + b"\n")
            await read_until(session.stdout, b"echo:" + word + b"\n", got)
            # Our input ends: the session ends, the container (not stdinOnce) runs on.
            await session.close_stdin()
            result = await session.wait(30)
            assert result.status.success
            return bytes(got)

        assert run(node, lambda: main(b"first")) == b"echo:first\n"
        assert run(node, lambda: main(b"second")) == b"echo:second\n"
        _still_running(pod)


def test_attach_spdy_tty_with_resize(node: Node) -> None:
    script = WAIT_SIZE + ECHO_LINES
    with _attachable(node, "attach-tty", script, tty=True) as pod:
        url = stream_url(pod, "attach", "c", stdin=True, tty=True)

        async def main() -> bytes:
            session = await SpdyExec.connect(url, stdin=True, tty=True, ssl_context=insecure_tls())
            assert session.stdout is not None and session.stderr is None
            try:
                await session.resize(100, 40)
                got = bytearray()
                await read_until(session.stdout, b"resized\r\n", got)
                await session.write_stdin(b"abc\r")
                return await read_until(session.stdout, b"echo:abc\r\n", got)
            finally:
                await session.close()

        assert run(node, main) == b"resized\r\nabc\r\necho:abc\r\n"
        _still_running(pod)


def test_attach_websocket_stdin(node: Node) -> None:
    with _attachable(node, "attach-ws", ECHO_LINES) as pod:
        url = stream_url(pod, "attach", "c", stdin=True)

        async def main() -> bytes:
            async with ws_connection(url) as ws:
                session = WsSession(ws)
                await ws_send(ws, rc.Channel.STDIN, b"abc\n")
                await session.read_until(lambda s: b"echo:abc\n" in s.stdout())
                return session.stdout()

        assert run(node, main) == b"echo:abc\n"
        _still_running(pod)


# -- port-forward -------------------------------------------------------------------------------


def _httpd(node: Node) -> AbstractContextManager[StaticPod]:
    return static_pod(
        node,
        "httpd",
        [container("web", node.image("httpd"), ["httpd", "-f", "-p", "80", "-h", "/www"])],
    )


def test_port_forward_spdy_two_connections(node: Node) -> None:
    with _httpd(node) as pod:
        url = port_forward_url(pod)

        async def main() -> list[bytes]:
            forward = await SpdyPortForward.connect(url, ssl_context=insecure_tls())
            try:
                # Both connections are open before either is used.
                pairs = [await forward.open(80), await forward.open(80)]

                async def use(data: SpdyStream) -> bytes:
                    await data.write(HTTP_GET)
                    got = bytearray()
                    while chunk := await data.read():
                        got += chunk
                    return bytes(got)

                return list(await asyncio.gather(*(use(data) for data, _ in pairs)))
            finally:
                await forward.close()

        for response in run(node, main):
            assert response.startswith(b"HTTP/1.") and response.endswith(PAGE)


def test_port_forward_websocket_two_connections(node: Node) -> None:
    with _httpd(node) as pod:
        url = port_forward_url(pod, [80])

        async def main() -> list[tuple[bytes, bytes]]:
            return list(
                await asyncio.gather(
                    ws_port_forward(url, 80, HTTP_GET), ws_port_forward(url, 80, HTTP_GET)
                )
            )

        for data, error in run(node, main):
            assert data.startswith(b"HTTP/1.") and data.endswith(PAGE)
            assert error == b""
