"""The WebSocket opening handshake, decided without I/O.

The ``websockets`` package validates the request (method, ``Upgrade``,
``Connection``, ``Sec-WebSocket-Key`` and ``-Version``) and computes the accept
key; we negotiate the subprotocol ourselves because Kubernetes servers answer an
offer they cannot serve with a bare 403, where ``websockets`` would say 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol

from .. import remotecommand as rc


@dataclass(frozen=True, slots=True)
class Accept:
    """Send 101 with ``headers``; the session speaks ``subprotocol``."""

    headers: list[tuple[str, str]]
    subprotocol: str


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def is_websocket_request(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether a request asks for WebSocket (otherwise it is a SPDY upgrade)."""
    connection = ",".join(v for k, v in headers if k.lower() == "connection").lower()
    upgrade = ",".join(v for k, v in headers if k.lower() == "upgrade").lower()
    return "upgrade" in connection and "websocket" in [u.strip() for u in upgrade.split(",")]


def accept_handshake(
    method: str, target: str, headers: Sequence[tuple[str, str]], supported: Sequence[str]
) -> Accept | Reject:
    """Decide the answer to a WebSocket upgrade request."""
    if method != "GET":
        return Reject(405, [("Allow", "GET")], b"websocket upgrade needs GET\n")
    offered = rc.split_protocol_values(
        v for k, v in headers if k.lower() == "sec-websocket-protocol"
    )
    chosen = rc.negotiate(offered, supported) if offered else ""
    if chosen is None or (chosen == "" and "" not in supported):
        return Reject(403, [], b"")

    # websockets would refuse "SPDY/3.1+portforward.k8s.io" (a "/" is not a token
    # character), so it never sees the offer: it only checks the rest of the request.
    others = [(k, v) for k, v in headers if k.lower() != "sec-websocket-protocol"]
    ws = ServerProtocol()
    response = ws.accept(Request(target, Headers(others)))
    if response.status_code != 101:
        return Reject(
            response.status_code,
            [(k, v) for k, v in response.headers.raw_items() if k.lower() != "date"],
            bytes(response.body or b""),
        )
    out = [(k, v) for k, v in response.headers.raw_items() if k.lower() != "date"]
    # Go's x/net server always sends the header, empty when nothing was offered.
    out.append(("Sec-WebSocket-Protocol", chosen))
    return Accept(out, chosen)
