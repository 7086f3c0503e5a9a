"""Clients for the streaming protocols, built on this package's codecs.

They behave like client-go's SPDY executor and port-forwarder (stream order,
one stream per role, FIN on stdin EOF, the error-stream JSON, closing with
GOAWAY), so they serve as the reference client in tests and in the benchmark,
against rktlet or any other CRI streaming server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from . import remotecommand as rc
from . import spdy
from ._backends import AsyncioStream, NetworkStream
from ._spdyio import SpdySession, SpdyStream


class UpgradeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"upgrade refused with {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body


@dataclass
class Upgraded:
    transport: NetworkStream
    headers: list[tuple[str, str]]
    leftover: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def upgrade(
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    method: str = "POST",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> Upgraded:
    """Connect to ``url`` and send an upgrade request; return the switched transport."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    if secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_context if secure else None), timeout
    )
    transport = AsyncioStream(reader, writer)
    http = h11.Connection(h11.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request_headers = [("Host", parts.netloc), *headers]
    if method == "POST":
        request_headers.append(("Content-Length", "0"))
    data = http.send(h11.Request(method=method, target=target, headers=request_headers))
    if method == "POST":
        data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
    try:
        await transport.write(data or b"")
        response: h11.Response | h11.InformationalResponse | None = None
        body = b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await asyncio.wait_for(transport.read(65536), timeout))
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                leftover, _ = http.trailing_data
                return Upgraded(transport, _decode_headers(event.headers), bytes(leftover))
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        status = response.status_code if response is not None else 0
        raise UpgradeRefused(
            status, _decode_headers(response.headers) if response is not None else [], body
        )
    except BaseException:
        await transport.aclose()
        raise


def _decode_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


async def spdy_connect(
    url: str,
    protocols: Sequence[str],
    *,
    ssl_context: ssl.SSLContext | None = None,
    method: str = "POST",
) -> tuple[SpdySession, str, asyncio.Task[None]]:
    """Upgrade to SPDY/3.1 offering ``protocols``; the session's reader is running."""
    headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", p) for p in protocols]
    upgraded = await upgrade(url, headers, method=method, ssl_context=ssl_context)
    chosen = upgraded.header("X-Stream-Protocol-Version")
    if chosen is None:
        await upgraded.transport.aclose()
        raise UpgradeRefused(101, upgraded.headers, b"server did not choose a protocol")
    session = SpdySession(upgraded.transport, spdy.Role.CLIENT, initial_data=upgraded.leftover)
    reader = asyncio.create_task(session.run())
    return session, chosen, reader


@dataclass
class ExecResult:
    status: rc.Status
    stdout: bytes
    stderr: bytes
    protocol: str

    @property
    def exit_code(self) -> int | None:
        return self.status.exit_code


class SpdyExec:
    """An exec or attach over SPDY, stream by stream (for interactive use and tests)."""

    def __init__(
        self,
        session: SpdySession,
        reader: asyncio.Task[None],
        protocol: str,
        streams: dict[str, SpdyStream],
    ) -> None:
        self.session = session
        self._reader = reader
        self.protocol = protocol
        self.version = rc.version_of(protocol)
        self.error = streams["error"]
        self.stdin = streams.get("stdin")
        self.stdout = streams.get("stdout")
        self.stderr = streams.get("stderr")
        self.resize_stream = streams.get("resize")

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        protocols: Sequence[str] = rc.SPDY_REMOTECOMMAND_PROTOCOLS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> SpdyExec:
        session, chosen, reader = await spdy_connect(url, protocols, ssl_context=ssl_context)
        version = rc.version_of(chosen)
        names = ["error"]
        if stdin:
            names.append("stdin")
        if stdout:
            names.append("stdout")
        if stderr and not tty:
            names.append("stderr")
        if tty and version.has_resize:
            names.append("resize")
        streams: dict[str, SpdyStream] = {}
        try:
            for name in names:
                # client-go creates them one by one, each after the previous reply.
                streams[name] = await session.open_stream([(rc.STREAM_TYPE_HEADER, name)])
        except BaseException:
            reader.cancel()
            await session.aclose()
            raise
        return cls(session, reader, chosen, streams)

    async def write_stdin(self, data: bytes) -> None:
        assert self.stdin is not None
        await self.stdin.write(data)

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            await self.stdin.close()

    async def resize(self, width: int, height: int) -> None:
        assert self.resize_stream is not None
        await self.resize_stream.write(rc.encode_resize(rc.TerminalSize(width, height)))

    async def wait(self, timeout: float | None = None) -> ExecResult:
        """Read stdout, stderr and the error stream to their ends; then close."""

        async def drain(stream: SpdyStream | None) -> bytes:
            if stream is None:
                return b""
            chunks = []
            while chunk := await stream.read():
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            out, err, status = await asyncio.wait_for(
                asyncio.gather(drain(self.stdout), drain(self.stderr), drain(self.error)),
                timeout,
            )
        finally:
            await self.close()
        return ExecResult(rc.parse_status(status, self.version), out, err, self.protocol)

    async def close(self) -> None:
        await self.session.goaway()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.session.aclose()


async def spdy_exec(
    url: str,
    *,
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    protocols: Sequence[str] = rc.SPDY_REMOTECOMMAND_PROTOCOLS,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = 60.0,
) -> ExecResult:
    """Run an exec (or attach) to completion: send ``stdin`` then EOF, collect output."""
    session = await SpdyExec.connect(
        url,
        stdin=stdin is not None,
        stdout=stdout,
        stderr=stderr,
        tty=tty,
        protocols=protocols,
        ssl_context=ssl_context,
    )
    if stdin is not None:

        async def feed() -> None:
            with contextlib.suppress(ConnectionError):
                if stdin:
                    await session.write_stdin(stdin)
                await session.close_stdin()

        feeder = asyncio.create_task(feed())
    result = await session.wait(timeout)
    if stdin is not None:
        feeder.cancel()
    return result


class SpdyPortForward:
    """One ``portforward.k8s.io`` session carrying any number of connections."""

    def __init__(self, session: SpdySession, reader: asyncio.Task[None]) -> None:
        self.session = session
        self._reader = reader
        self._next_request = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        transport: NetworkStream | None = None,
    ) -> SpdyPortForward:
        if transport is not None:
            session = SpdySession(transport, spdy.Role.CLIENT)
            return cls(session, asyncio.create_task(session.run()))
        session, _chosen, reader = await spdy_connect(
            url, [rc.PORT_FORWARD], ssl_context=ssl_context
        )
        return cls(session, reader)

    async def open(self, port: int) -> tuple[SpdyStream, SpdyStream]:
        """A new connection to ``port``: its (data, error) streams."""
        request_id = self._next_request
        self._next_request += 1
        error = await self.session.open_stream(
            rc.port_forward_headers(rc.StreamType.ERROR, port, request_id)
        )
        await error.close()
        data = await self.session.open_stream(
            rc.port_forward_headers(rc.StreamType.DATA, port, request_id)
        )
        return data, error

    async def request(self, port: int, payload: bytes) -> tuple[bytes, bytes]:
        """Send ``payload`` then FIN on a new connection; return (response, error text)."""
        data, error = await self.open(port)
        await data.write(payload)
        await data.close()
        chunks = []
        while chunk := await data.read():
            chunks.append(chunk)
        errors = []
        while chunk := await error.read():
            errors.append(chunk)
        return b"".join(chunks), b"".join(errors)

    async def close(self) -> None:
        await self.session.goaway()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.session.aclose()
