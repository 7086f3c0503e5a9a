"""exec, attach and port-forward through the kubelet's own API (port 10250).

The kubelet asks the runtime for a streaming URL and proxies the client's upgraded
connection to it, so these requests go client → kubelet → runtime.  SPDY sessions
use the project's client (:mod:`streaming.client`, which behaves like client-go's);
WebSocket ones use the ``websockets`` package with the ``v4.channel.k8s.io`` protocol,
the newest one containerd 1.6 accepts (it answers an offer of only ``v5`` with 403).
Everything runs on an event loop in a thread inside the node's namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from streaming import remotecommand as rc
from tests.e2e.cluster import Node, insecure_tls
from tests.e2e.pods import NAMESPACE, StaticPod

T = TypeVar("T")
WS_PROTOCOL = "v4.channel.k8s.io"


def run(node: Node, main: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
    """``main()`` on a new event loop in a thread inside ``node``'s namespace."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return node.call(lambda: asyncio.run(bounded()))


def stream_url(
    pod: StaticPod,
    verb: str,
    container: str,
    command: Sequence[str] = (),
    *,
    stdin: bool = False,
    tty: bool = False,
    stdout: bool = True,
    stderr: bool = True,
) -> str:
    """The kubelet's ``/exec`` or ``/attach`` URL (its query names: input, output, error)."""
    query: list[tuple[str, str]] = [("command", c) for c in command]
    for name, on in (("input", stdin), ("output", stdout), ("error", stderr and not tty)):
        if on:
            query.append((name, "1"))
    if tty:
        query.append(("tty", "1"))
    return f"{pod.node.kubelet_url}/{verb}/{NAMESPACE}/{pod.full_name}/{container}?" + urlencode(
        query
    )


def port_forward_url(pod: StaticPod, ports: Sequence[int] = ()) -> str:
    url = f"{pod.node.kubelet_url}/portForward/{NAMESPACE}/{pod.full_name}"
    return url + ("?" + urlencode([("port", str(p)) for p in ports]) if ports else "")


def ws_url(url: str) -> str:
    return "wss" + url[len("https") :]


def ws_connection(url: str, protocol: str = WS_PROTOCOL) -> Any:
    return ws_connect(
        ws_url(url),
        ssl=insecure_tls(),
        subprotocols=[protocol],  # type: ignore[list-item]
        max_size=None,
    )


async def ws_send(ws: ClientConnection, channel: int, data: bytes) -> None:
    await ws.send(rc.encode_channel_message(channel, data, base64_mode=False))


def _bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else bytes(message)


class WsSession:
    """The output of a WebSocket remotecommand session, by channel, as it arrives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.channels: dict[int, bytes] = {}
        self.closed = False

    async def read_until(self, check: Callable[[WsSession], bool]) -> None:
        while not check(self):
            try:
                message = await self.ws.recv()
            except Exception:
                self.closed = True
                raise AssertionError(f"session ended before expected: {self.channels}") from None
            decoded = rc.decode_channel_message(_bytes(message), base64_mode=False)
            assert decoded is not None
            channel, data = decoded
            self.channels[channel] = self.channels.get(channel, b"") + data

    async def read_to_end(self) -> dict[int, bytes]:
        async for message in self.ws:
            decoded = rc.decode_channel_message(_bytes(message), base64_mode=False)
            assert decoded is not None
            channel, data = decoded
            self.channels[channel] = self.channels.get(channel, b"") + data
        self.closed = True
        return self.channels

    def stdout(self) -> bytes:
        return self.channels.get(rc.Channel.STDOUT, b"")

    def status(self) -> rc.Status:
        return rc.parse_status(self.channels.get(rc.Channel.ERROR, b""), rc.Version.V4)


async def ws_exec(url: str, stdin: bytes = b"") -> tuple[dict[int, bytes], rc.Status]:
    """A whole WebSocket exec: ``stdin`` sent (the command must not wait for its EOF:
    v4 cannot send one), then every channel read to the end."""
    async with ws_connection(url) as ws:
        assert ws.subprotocol == WS_PROTOCOL
        if stdin:
            await ws_send(ws, rc.Channel.STDIN, stdin)
        session = WsSession(ws)
        channels = await session.read_to_end()
    return channels, session.status()


async def ws_port_forward(url: str, port: int, payload: bytes) -> tuple[bytes, bytes]:
    """One connection to ``port`` over WebSocket: ``payload`` sent; (data, error) read to
    the end (the pod's server closes after answering)."""
    async with ws_connection(url) as ws:
        data, error = b"", b""
        prefixes: set[int] = set()
        sent = False
        async for message in ws:
            raw = _bytes(message)
            channel, body = raw[0], raw[1:]
            if channel not in prefixes:
                # The first message of each channel is the port, little-endian.
                assert rc.decode_port_prefix(body[:2]) == port
                prefixes.add(channel)
                body = body[2:]
            if channel == 0:
                data += body
            else:
                error += body
            if not sent and prefixes == {0, 1}:
                await ws.send(bytes([0]) + payload)
                sent = True
    return data, error
