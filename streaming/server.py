"""The streaming server: one-time URLs for exec, attach and port-forward, and the
HTTP/1.1 listener that upgrades them to SPDY/3.1 or WebSocket.

The split is the kubelet's: the CRI handlers call :meth:`Server.get_exec` (and
friends), which validate the request, park it behind a random single-use token
and return a URL; the client then connects to that URL, and the session runs
against a :class:`~streaming.runtime.Runtime`.

Request handling order follows the upstream server, because clients depend on
the status codes: unknown route 404, method other than GET/POST 405, unknown,
used, expired or wrong-kind token 404 (the token is burnt before anything
else); then WebSocket requests go through the WebSocket handshake (405 unless
GET, 400 for a bad handshake, 403 when no subprotocol matches) and everything
else through the SPDY handshake (400 without ``X-Stream-Protocol-Version``, 403
with the accepted list when none matches, 400 without the upgrade headers).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import posixpath
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import h11

from . import remotecommand as rc
from ._backends import AsyncioStream, NetworkStream
from ._exec_session import serve_spdy_remotecommand, serve_ws_remotecommand
from ._portforward_session import (
    serve_spdy_port_forward,
    serve_ws_port_forward,
    serve_ws_tunnel_port_forward,
)
from .config import StreamingConfig
from .errors import ResourceExhausted
from .requests import AttachRequest, ExecRequest, PortForwardRequest, StreamRequest
from .runtime import Runtime
from .websocket import Accept, accept_handshake, is_websocket_request

log = logging.getLogger(__name__)

__all__ = ["Server", "StreamingConfig", "TokenCache"]

_NOT_REQUEST_LINE = re.compile(rb"[^\x20-\x7e\r]")

_KINDS: dict[str, type[StreamRequest]] = {
    "exec": ExecRequest,
    "attach": AttachRequest,
    "portforward": PortForwardRequest,
}


# --- tokens -------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    request: StreamRequest
    expires: float


class TokenCache:
    """Single-use tokens for cached requests: TTL, a cap, oldest first.

    Tokens are 6 random bytes as unpadded URL-safe base64 (8 characters).
    """

    def __init__(
        self,
        ttl: float = 60.0,
        max_in_flight: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _collect(self, now: float) -> None:
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[token]

    def insert(self, request: StreamRequest) -> str:
        now = self.clock()
        self._collect(now)
        if len(self._entries) >= self.max_in_flight:
            raise ResourceExhausted("maximum number of in-flight requests exceeded")
        for _ in range(10):
            token = base64.urlsafe_b64encode(secrets.token_bytes(6)).decode().rstrip("=")
            if token not in self._entries:
                self._entries[token] = _Entry(request, now + self.ttl)
                return token
        raise ResourceExhausted("failed to generate a unique token")

    def consume(self, token: str) -> StreamRequest | None:
        """The request behind ``token``, removing it; None if unknown or expired."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.expires <= self.clock():
            return None
        return entry.request


# --- the server ---------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


@dataclass(frozen=True, slots=True)
class _Head:
    method: str
    target: str
    headers: list[tuple[str, str]]
    #: h11 paused after the request because the client proposed a protocol switch.
    upgrade_proposed: bool = False

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


class Server:
    """The streaming server of one daemon.

    ``address``/``port`` is where to listen (port 0: any free port);
    ``base_url`` overrides the URL prefix handed to clients (its path becomes the
    route prefix); ``tls_cert_file``/``tls_key_file`` (or ``ssl_context``)
    turn on TLS.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        base_url: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        config: StreamingConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.config = config or StreamingConfig()
        self.address = address
        self.port = port
        if ssl_context is None and tls_cert_file:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(tls_cert_file, tls_key_file)
        self.ssl_context = ssl_context
        self._base_url = base_url
        self.tokens = TokenCache(self.config.token_ttl, self.config.max_in_flight, clock)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # --- URLs --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base_url is not None:
            return self._base_url
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{scheme}://{host}:{self.port}"

    @property
    def _prefix(self) -> str:
        path = urlsplit(self.base_url).path
        prefix = posixpath.dirname(path) if path else ""
        return "" if prefix == "/" else prefix

    def _url(self, kind: str, request: StreamRequest) -> str:
        request.validate()
        token = self.tokens.insert(request)
        base = self.base_url
        if not urlsplit(base).path:
            base += "/"
        return urljoin(base, f"{kind}/{token}")

    def get_exec(self, request: ExecRequest) -> str:
        """Validate ``request`` and return a one-time URL for it (CRI ``Exec``)."""
        return self._url("exec", request)

    def get_attach(self, request: AttachRequest) -> str:
        return self._url("attach", request)

    def get_port_forward(self, request: PortForwardRequest) -> str:
        return self._url("portforward", request)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.address, self.port, ssl=self.ssl_context
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # --- connections -------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        transport = AsyncioStream(reader, writer)
        try:
            await self._serve(transport)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            await transport.aclose()

    async def _serve(self, transport: NetworkStream) -> None:
        http = h11.Connection(h11.SERVER)
        try:
            head = await asyncio.wait_for(
                self._read_head(http, transport), self.config.request_timeout
            )
        except h11.RemoteProtocolError as exc:
            body = f"{exc}\n".encode()
            await self._respond(http, transport, _HttpError(exc.error_status_hint, body))
            return
        except TimeoutError:
            await self._respond(http, transport, _HttpError(408, b"request timeout\n"))
            return
        if head is None:
            return
        try:
            await self._dispatch(http, transport, head)
        except _HttpError as err:
            await self._respond(http, transport, err)

    async def _read_head(self, http: h11.Connection, transport: NetworkStream) -> _Head | None:
        head: _Head | None = None
        first_line = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await transport.read(65536)
                if head is None and b"\n" not in first_line:
                    # h11 judges a request line only once it is complete; garbage without
                    # a newline would otherwise hold the connection until the timeout.
                    first_line += data[:8192]
                    line = bytes(first_line).split(b"\n", 1)[0]
                    if _NOT_REQUEST_LINE.search(line):
                        raise h11.RemoteProtocolError("not an HTTP request", error_status_hint=400)
                http.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = _Head(
                    event.method.decode("ascii", "replace"),
                    event.target.decode("ascii", "replace"),
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                )
            elif isinstance(event, h11.Data):
                continue  # a body means nothing to us; h11 bounds it
            elif event is h11.PAUSED:
                if head is None:
                    return None
                return _Head(head.method, head.target, head.headers, upgrade_proposed=True)
            elif isinstance(event, h11.EndOfMessage):
                if http.their_state is not h11.DONE:
                    continue  # h11 reports PAUSED next when the client proposed an upgrade
                return head
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(
        self, http: h11.Connection, transport: NetworkStream, err: _HttpError
    ) -> None:
        headers = [
            *err.headers,
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Length", str(len(err.body))),
            ("Connection", "close"),
        ]
        try:
            data = http.send(h11.Response(status_code=err.status, headers=headers))
            data = (data or b"") + (http.send(h11.Data(data=err.body)) or b"")
            data += http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await transport.write(data)

    def _route(self, target: str) -> tuple[str, str]:
        path = urlsplit(target).path
        prefix = self._prefix
        if not path.startswith(prefix + "/"):
            raise _HttpError(404, b"404 page not found\n")
        parts = path[len(prefix) + 1 :].split("/")
        if len(parts) != 2 or parts[0] not in _KINDS or not parts[1]:
            raise _HttpError(404, b"404 page not found\n")
        return parts[0], parts[1]

    async def _dispatch(self, http: h11.Connection, transport: NetworkStream, head: _Head) -> None:
        kind, token = self._route(head.target)
        if head.method not in ("GET", "POST"):
            raise _HttpError(405, b"405 method not allowed\n", [("Allow", "GET, POST")])
        request = self.tokens.consume(token)
        if request is None or not isinstance(request, _KINDS[kind]):
            raise _HttpError(404, b"404 page not found\n")
        if is_websocket_request(head.headers):
            await self._websocket(http, transport, head, request)
        else:
            await self._spdy(http, transport, head, request)

    async def _switch(
        self,
        http: h11.Connection,
        transport: NetworkStream,
        head: _Head,
        headers: list[tuple[str, str]],
    ) -> bytes:
        """Send the 101 and return the bytes the client sent after its request."""
        if not head.upgrade_proposed:
            raise _HttpError(400, b"missing upgrade headers in request\n")
        data = http.send(
            h11.InformationalResponse(
                status_code=101, headers=headers, reason=b"Switching Protocols"
            )
        )
        await transport.write(data or b"")
        trailing, _closed = http.trailing_data
        return bytes(trailing)

    def _session_started(self, request: StreamRequest, protocol: str) -> None:
        hook = self.config.on_session
        if hook is None:
            return
        if isinstance(request, PortForwardRequest):
            kind = "portforward"
        elif isinstance(request, ExecRequest):
            kind = "exec"
        else:
            kind = "attach"
        try:
            hook(kind, protocol)
        except Exception:  # a metrics hook must never break a session
            log.exception("on_session hook failed")

    async def _spdy(
        self, http: h11.Connection, transport: NetworkStream, head: _Head, request: StreamRequest
    ) -> None:
        offered = rc.split_protocol_values(head.values("x-stream-protocol-version"))
        if not offered:
            raise _HttpError(400, b"unable to upgrade: no X-Stream-Protocol-Version\n")
        supported = (
            rc.SPDY_PORT_FORWARD_PROTOCOLS
            if isinstance(request, PortForwardRequest)
            else rc.SPDY_REMOTECOMMAND_PROTOCOLS
        )
        chosen = rc.negotiate(offered, supported)
        if chosen is None:
            body = (
                "unable to upgrade: unable to negotiate protocol: client supports "
                f"[{' '.join(offered)}], server accepts [{' '.join(supported)}]\n"
            ).encode()
            accepted = [("X-Accepted-Stream-Protocol-Versions", p) for p in supported]
            raise _HttpError(403, body, accepted)
        echo = [("X-Stream-Protocol-Version", chosen)]
        connection = ",".join(head.values("connection")).lower()
        upgrade = ",".join(head.values("upgrade")).lower()
        if "upgrade" not in connection or "spdy/3.1" not in upgrade:
            raise _HttpError(400, b"unable to upgrade: missing upgrade headers in request\n", echo)
        initial = await self._switch(
            http, transport, head, [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), *echo]
        )
        self._session_started(request, chosen)
        if isinstance(request, PortForwardRequest):
            await serve_spdy_port_forward(transport, initial, request, self.runtime, self.config)
        else:
            await serve_spdy_remotecommand(
                transport, initial, request, chosen, self.runtime, self.config
            )

    async def _websocket(
        self, http: h11.Connection, transport: NetworkStream, head: _Head, request: StreamRequest
    ) -> None:
        supported = (
            rc.WS_PORT_FORWARD_PROTOCOLS
            if isinstance(request, PortForwardRequest)
            else rc.WS_REMOTECOMMAND_PROTOCOLS
        )
        answer = accept_handshake(head.method, head.target, head.headers, supported)
        if not isinstance(answer, Accept):
            raise _HttpError(answer.status, answer.body, answer.headers)
        initial = await self._switch(http, transport, head, answer.headers)
        protocol = answer.subprotocol
        self._session_started(request, f"websocket/{protocol}")
        if isinstance(request, PortForwardRequest):
            if protocol == rc.PORT_FORWARD_TUNNEL:
                await serve_ws_tunnel_port_forward(
                    transport, initial, request, self.runtime, self.config
                )
            else:
                await serve_ws_port_forward(
                    transport, initial, request, protocol, self.runtime, self.config
                )
        else:
            await serve_ws_remotecommand(
                transport, initial, request, protocol, self.runtime, self.config
            )
