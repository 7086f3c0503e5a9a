"""Port-forward end to end: a real HTTP server inside a network namespace the test
created, reached through rktlet's server over SPDY, WebSocket channels, and SPDY
tunnelled in WebSocket."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
import websockets.client
from websockets.asyncio.client import connect as ws_connect

from streaming import PortForwardRequest, Server, StreamingConfig, spdy
from streaming import remotecommand as rc
from streaming.client import SpdyPortForward
from streaming.portforward import dial

from .captures import load
from .conftest import BIG_FILE_SIZE, INDEX, HttpTarget, run_server
from .hostruntime import HostRuntime


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n".encode()


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head[:100]
    return body


def _listening_on_host(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        return any(
            line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
            for line in f.readlines()[1:]
        )


def test_dial_reaches_a_port_only_inside_the_namespace(pod_http: HttpTarget) -> None:
    async def main() -> None:
        sock = await dial(pod_http.netns_path, pod_http.port)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(get("/index.html"))
        assert body_of(await reader.read()) == INDEX
        writer.close()
        await writer.wait_closed()
        # Only the namespace's loopback has the server: the thread's setns took effect.
        assert not await asyncio.to_thread(_listening_on_host, pod_http.port)

    asyncio.run(main())


def test_spdy_port_forward_two_connections_at_once(pod_http: HttpTarget) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_port_forward(PortForwardRequest("pod1"))
        pf = await SpdyPortForward.connect(url)
        (a, err_a), (b, err_b) = await asyncio.gather(
            pf.request(pod_http.port, get("/index.html")),
            pf.request(pod_http.port, get("/big.bin")),
        )
        assert body_of(a) == INDEX and err_a == b""
        big = body_of(b)
        assert len(big) == BIG_FILE_SIZE
        assert (
            hashlib.sha256(big).digest()
            == hashlib.sha256((pod_http.root / "big.bin").read_bytes()).digest()
        )
        assert err_b == b""
        # The session carries on: a third connection, after the two ended.
        third, _ = await pf.request(pod_http.port, get("/index.html"))
        assert body_of(third) == INDEX
        await pf.close()

    run_server(main, pods={"pod1": pod_http.netns_path})


def test_spdy_port_forward_host_network_pod(host_http: HttpTarget) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        pf = await SpdyPortForward.connect(server.get_port_forward(PortForwardRequest("hostpod")))
        response, error = await pf.request(host_http.port, get("/index.html"))
        assert body_of(response) == INDEX and error == b""
        await pf.close()

    run_server(main, pods={"hostpod": None})


def test_spdy_port_forward_refused_port_reports_on_the_error_stream(pod_http: HttpTarget) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        pf = await SpdyPortForward.connect(server.get_port_forward(PortForwardRequest("pod1")))
        response, error = await pf.request(1, b"")
        assert response == b""
        assert error.startswith(b"error forwarding port 1 to pod pod1")
        await pf.close()

    run_server(main, pods={"pod1": pod_http.netns_path})


def test_spdy_port_forward_bad_headers_are_reset(pod_http: HttpTarget) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        pf = await SpdyPortForward.connect(server.get_port_forward(PortForwardRequest("pod1")))
        for headers in (
            [("streamtype", "data"), ("port", "0")],
            [("streamtype", "bogus"), ("port", "80")],
        ):
            with pytest.raises(ConnectionResetError):
                await pf.session.open_stream(headers)
        response, _ = await pf.request(pod_http.port, get("/index.html"))
        assert body_of(response) == INDEX
        await pf.close()

    run_server(main, pods={"pod1": pod_http.netns_path})


def test_spdy_port_forward_unpaired_stream_times_out(pod_http: HttpTarget) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        pf = await SpdyPortForward.connect(server.get_port_forward(PortForwardRequest("pod1")))
        error = await pf.session.open_stream(rc.port_forward_headers(rc.StreamType.ERROR, 80, 7))
        message = b""
        while chunk := await error.read():
            message += chunk
        assert message == b"timed out waiting for streams"
        await pf.close()

    run_server(
        main,
        pods={"pod1": pod_http.netns_path},
        config=StreamingConfig(port_forward_pair_timeout=0.2),
    )


def test_captured_crictl_port_forward_replayed(pod_http: HttpTarget) -> None:
    """crictl's recorded session (two curls for port 80); the test pod maps 80 to our server."""
    cap = load("portforward_spdy")

    async def main(server: Server, runtime: HostRuntime) -> None:
        original = runtime.port_forward

        async def mapped(pod: str, port: int, stream: Any) -> None:
            assert port == 80
            await original(pod, pod_http.port, stream)

        runtime.port_forward = mapped  # type: ignore[method-assign,assignment]
        url = server.get_port_forward(PortForwardRequest("pod1"))
        head = cap.request_head()
        head = head.replace(head.split(b" ", 2)[1], ("/" + url.split("/", 3)[3]).encode(), 1)
        frames = bytearray(cap.after_head("c2s"))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        inflate, outflate = spdy.HeaderBlockDecoder(), spdy.HeaderBlockDecoder()
        inbound = bytearray()
        fins: set[int] = set()
        data: dict[int, bytes] = {}
        # Replay frame by frame; after each request's FIN, wait for the server's answer.
        while (frame_start := bytes(frames)) and (frame := spdy.maybe_read_frame(frames, inflate)):
            raw = frame_start[: len(frame_start) - len(frames)]
            if isinstance(frame, spdy.GoAwayFrame):
                break
            writer.write(raw)
            await writer.drain()
            if isinstance(frame, spdy.DataFrame) and frame.fin and frame.stream_id in (3, 7):
                while frame.stream_id not in fins:
                    inbound += await asyncio.wait_for(reader.read(65536), 10)
                    while (got := spdy.maybe_read_frame(inbound, outflate)) is not None:
                        if isinstance(got, spdy.DataFrame):
                            data[got.stream_id] = data.get(got.stream_id, b"") + got.data
                            if got.fin:
                                fins.add(got.stream_id)
        writer.close()
        await writer.wait_closed()
        assert body_of(data[3]) == INDEX
        assert body_of(data[7]) == INDEX

    run_server(main, pods={"pod1": pod_http.netns_path})


# --- WebSocket ----------------------------------------------------------------------


def test_websocket_port_forward_channels(pod_http: HttpTarget) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_port_forward(PortForwardRequest("pod1", (pod_http.port,)))
        async with ws_connect("ws" + url[4:], subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
            prefix = rc.encode_port_prefix(pod_http.port)
            assert [await ws.recv(), await ws.recv()] == [b"\x00" + prefix, b"\x01" + prefix]
            await ws.send(b"\x00" + get("/index.html"))
            response = b""
            async for message in ws:
                assert isinstance(message, bytes) and message[0] == 0
                response += message[1:]
            assert ws.close_code == 1000
        assert body_of(response) == INDEX

    run_server(main, pods={"pod1": pod_http.netns_path})


def test_kubernetes_python_client_port_forward(pod_http: HttpTarget) -> None:
    from kubernetes.client import Configuration
    from kubernetes.stream import ws_client

    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_port_forward(PortForwardRequest("pod1", (pod_http.port,)))

        def client_side() -> bytes:
            config = Configuration()
            config.host = server.base_url
            pf = ws_client.portforward_call(  # type: ignore[no-untyped-call]
                config, "GET", url, query_params=[("ports", str(pod_http.port))]
            )
            sock = pf.socket(pod_http.port)
            sock.setblocking(True)
            sock.sendall(get("/big.bin"))
            chunks = []
            while chunk := sock.recv(1 << 20):
                chunks.append(chunk)
            sock.close()
            pf.websocket.shutdown()  # the library's proxy thread may leave it open
            assert pf.error(pod_http.port) is None
            return b"".join(chunks)

        response = await asyncio.to_thread(client_side)
        assert len(body_of(response)) == BIG_FILE_SIZE

    run_server(main, pods={"pod1": pod_http.netns_path})


class _WsTransport:
    """A NetworkStream over a websockets client connection (for the SPDY tunnel)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def read(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self.ws.recv())
        except Exception:
            return b""

    async def write(self, data: bytes) -> None:
        await self.ws.send(data)

    async def write_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.ws.close()

    def get_extra_info(self, name: str) -> Any:
        return None


def test_spdy_tunnelled_in_websocket(pod_http: HttpTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SPDY/3.1+portforward.k8s.io``: what crictl --transport websocket offers."""
    # The websockets client refuses "/" in a subprotocol; offer it as a raw header.
    monkeypatch.setattr(
        websockets.client.ClientProtocol,
        "process_subprotocol",
        lambda self, headers: headers.get("Sec-WebSocket-Protocol"),
    )

    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_port_forward(PortForwardRequest("pod1"))
        offer = {"Sec-WebSocket-Protocol": rc.PORT_FORWARD_TUNNEL}
        async with ws_connect("ws" + url[4:], additional_headers=offer) as ws:
            assert ws.subprotocol == "SPDY/3.1+portforward.k8s.io"
            pf = await SpdyPortForward.connect(url, transport=_WsTransport(ws))
            (a, _), (b, _) = await asyncio.gather(
                pf.request(pod_http.port, get("/index.html")),
                pf.request(pod_http.port, get("/big.bin")),
            )
            assert body_of(a) == INDEX and len(body_of(b)) == BIG_FILE_SIZE
            await pf.close()

    run_server(main, pods={"pod1": pod_http.netns_path})
