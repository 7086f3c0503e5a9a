"""Tokens, request validation and the HTTP side of the upgrade, over real sockets."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from streaming import (
    AttachRequest,
    ExecRequest,
    InvalidArgument,
    PortForwardRequest,
    ResourceExhausted,
    Server,
    StreamingConfig,
    TokenCache,
)
from streaming.client import spdy_exec

from .captures import load
from .conftest import run_server
from .hostruntime import HostRuntime

ECHO = ExecRequest("c1", ("echo", "-n", "hello"), stdout=True, stderr=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- tokens and validation ----------------------------------------------------------


def test_tokens_are_8_url_safe_chars_and_single_use() -> None:
    cache = TokenCache()
    token = cache.insert(ECHO)
    assert re.fullmatch(r"[A-Za-z0-9_-]{8}", token)
    assert cache.consume(token) == ECHO
    assert cache.consume(token) is None


def test_tokens_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = TokenCache(ttl=60, clock=clock)
    token = cache.insert(ECHO)
    clock.now += 59.9
    assert cache.consume(token) == ECHO
    token = cache.insert(ECHO)
    clock.now += 60
    assert cache.consume(token) is None


def test_cap_is_resource_exhausted_until_tokens_expire() -> None:
    clock = Clock()
    cache = TokenCache(ttl=60, max_in_flight=3, clock=clock)
    for _ in range(3):
        cache.insert(ECHO)
    with pytest.raises(ResourceExhausted) as info:
        cache.insert(ECHO)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert "maximum number of in-flight requests exceeded" in str(info.value)
    clock.now += 61
    cache.insert(ECHO)  # expired entries are collected on insert
    assert len(cache) == 1


@pytest.mark.parametrize(
    "request_",
    [
        ExecRequest("", ("ls",), stdout=True),
        ExecRequest("c", ("ls",), tty=True, stdout=True, stderr=True),
        ExecRequest("c", ("ls",)),
        ExecRequest("c", (), stdout=True),
        AttachRequest("", stdout=True),
        AttachRequest("c", tty=True, stderr=True, stdout=True),
        AttachRequest("c"),
        PortForwardRequest(""),
        PortForwardRequest("p", (0,)),
    ],
)
def test_invalid_requests_get_no_token(request_: ExecRequest) -> None:
    server = Server(HostRuntime())
    get = {
        ExecRequest: server.get_exec,
        AttachRequest: server.get_attach,
        PortForwardRequest: server.get_port_forward,
    }[type(request_)]
    with pytest.raises(InvalidArgument) as info:
        get(request_)  # type: ignore[operator]
    assert info.value.code == "INVALID_ARGUMENT"
    assert len(server.tokens) == 0


def test_urls_follow_the_base_url_layout() -> None:
    server = Server(HostRuntime(), port=10250)
    assert re.fullmatch(r"http://127\.0\.0\.1:10250/exec/[\w-]{8}", server.get_exec(ECHO))
    server = Server(HostRuntime(), base_url="http://10.0.0.1:1/cri/")
    assert re.fullmatch(
        r"http://10\.0\.0\.1:1/cri/attach/[\w-]{8}",
        server.get_attach(AttachRequest("c", stdout=True)),
    )
    assert server._prefix == "/cri"


def test_message_conversion_from_protobuf() -> None:
    from cri.api import api_pb2

    msg = api_pb2.ExecRequest(container_id="c", cmd=["ls", "-l"], tty=True, stdin=True, stdout=True)
    assert ExecRequest.from_message(msg) == ExecRequest("c", ("ls", "-l"), True, True, True, False)
    pf = api_pb2.PortForwardRequest(pod_sandbox_id="p", port=[80, 443])
    assert PortForwardRequest.from_message(pf) == PortForwardRequest("p", (80, 443))


# --- HTTP over a real socket --------------------------------------------------------


async def exchange(server: Server, data: bytes, *, timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header_values(response: bytes, name: str) -> list[str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    return [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0].lower() == name.lower()
    ]


def spdy_request(path: str, *protocols: str, method: str = "POST", upgrade: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Length: 0"]
    if upgrade:
        lines += ["Connection: Upgrade", "Upgrade: SPDY/3.1"]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def with_token(cap_name: str, path: str) -> bytes:
    """A captured request, its path swapped for one of ours (same length)."""
    head = load(cap_name).request_head()
    old = head.split(b" ", 2)[1]
    assert len(old) == len(path)
    return head.replace(old, path.encode(), 1)


def test_captured_request_without_protocol_header_gets_400() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        response = await exchange(
            server, with_token("http_spdy_no_protocol", path_of(server.get_exec(ECHO)))
        )
        assert status_of(response) == 400

    run_server(main)


def test_captured_request_without_upgrade_headers_gets_400_with_the_echo() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        response = await exchange(
            server, with_token("http_spdy_no_upgrade", path_of(server.get_exec(ECHO)))
        )
        assert status_of(response) == 400
        assert header_values(response, "X-Stream-Protocol-Version") == ["v4.channel.k8s.io"]

    run_server(main)


def test_captured_reused_token_gets_404() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(ECHO)
        assert (await spdy_exec(url)).stdout == b"hello"
        response = await exchange(server, with_token("http_spdy_token_reused", path_of(url)))
        assert status_of(response) == 404
        assert response.endswith(b"404 page not found\n")

    run_server(main)


def test_captured_v5_only_offer_is_served_not_refused() -> None:
    """containerd answers this capture with 403; rktlet serves v5 (as v4 over SPDY)."""

    async def main(server: Server, runtime: HostRuntime) -> None:
        request = with_token("http_spdy_v5_only", path_of(server.get_exec(ECHO)))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 101 ")
        assert header_values(head, "X-Stream-Protocol-Version") == ["v5.channel.k8s.io"]

    run_server(main)


def test_unsupported_protocol_gets_403_with_the_accepted_list() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        response = await exchange(
            server, spdy_request(path_of(server.get_exec(ECHO)), "v9.channel.k8s.io")
        )
        assert status_of(response) == 403
        assert header_values(response, "X-Accepted-Stream-Protocol-Versions") == [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ]
        pf = server.get_port_forward(PortForwardRequest("pod"))
        response = await exchange(server, spdy_request(path_of(pf), "v4.channel.k8s.io"))
        assert status_of(response) == 403
        assert header_values(response, "X-Accepted-Stream-Protocol-Versions") == [
            "portforward.k8s.io"
        ]

    run_server(main)


def test_unknown_expired_and_wrong_kind_tokens_get_404() -> None:
    clock = Clock()

    async def main(server: Server, runtime: HostRuntime) -> None:
        assert (
            status_of(await exchange(server, spdy_request("/exec/AAAAAAAA", "v4.channel.k8s.io")))
            == 404
        )
        assert (
            status_of(await exchange(server, spdy_request("/nothing/here", "v4.channel.k8s.io")))
            == 404
        )
        attach = path_of(server.get_attach(AttachRequest("c", stdout=True)))
        wrong = attach.replace("/attach/", "/exec/")
        assert status_of(await exchange(server, spdy_request(wrong, "v4.channel.k8s.io"))) == 404
        # The failed attempt burnt the token.
        assert status_of(await exchange(server, spdy_request(attach, "v4.channel.k8s.io"))) == 404
        expired = path_of(server.get_exec(ECHO))
        clock.now += 60
        assert status_of(await exchange(server, spdy_request(expired, "v4.channel.k8s.io"))) == 404

    run_server(main, clock=clock)


def test_other_methods_get_405_and_keep_the_token() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        path = path_of(server.get_exec(ECHO))
        response = await exchange(server, spdy_request(path, "v4.channel.k8s.io", method="PUT"))
        assert status_of(response) == 405
        assert len(server.tokens) == 1

    run_server(main)


def test_websocket_refusals() -> None:
    def ws(
        path: str, method: str = "GET", protocol: str = "v4.channel.k8s.io", version: str = "13"
    ) -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
            f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        ).encode()

    async def main(server: Server, runtime: HostRuntime) -> None:
        assert status_of(await exchange(server, ws(path_of(server.get_exec(ECHO)), "POST"))) == 405
        assert (
            status_of(await exchange(server, ws(path_of(server.get_exec(ECHO)), protocol="v9")))
            == 403
        )
        assert (
            status_of(await exchange(server, ws(path_of(server.get_exec(ECHO)), version="8")))
            == 400
        )
        pf = path_of(server.get_port_forward(PortForwardRequest("pod", (80,))))
        assert status_of(await exchange(server, ws(pf, protocol="v5.channel.k8s.io"))) == 403

    run_server(main)


def test_random_bytes_close_only_that_connection() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        # A session in progress while garbage arrives on other connections.
        url = server.get_exec(
            ExecRequest("c1", ("sh", "-c", "read x; echo got $x"), stdin=True, stdout=True)
        )
        from streaming.client import SpdyExec

        session = await SpdyExec.connect(url, stdin=True, stderr=False)
        for seed in range(5):
            garbage = os.urandom(4096) if seed else b"\x80\x03\x00\x01" + os.urandom(300)
            response = await exchange(server, garbage)
            assert response == b"" or status_of(response) == 400
        # Garbage after a valid upgrade (a frame of SPDY version 0x7fff): refused at once.
        # (Random bytes that happen to announce a long frame wait for its payload.)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = spdy_request(path_of(server.get_exec(ECHO)), "v4.channel.k8s.io")
        writer.write(request + b"\xff\xff" + os.urandom(64))
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 101")
        writer.close()
        await writer.wait_closed()
        await session.write_stdin(b"still here\n")
        await session.close_stdin()
        result = await session.wait(10)
        assert result.stdout == b"got still here\n" and result.status.success
        assert (await spdy_exec(server.get_exec(ECHO))).stdout == b"hello"

    run_server(main)


def test_slow_request_head_times_out() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        response = await exchange(server, b"POST /exec/x HTTP/1.1\r\nHost:", timeout=10)
        assert status_of(response) == 408

    run_server(main, config=StreamingConfig(request_timeout=0.3))
