"""Tunables of the streaming server, with the upstream server's defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamingConfig:
    #: How long a URL returned by get_exec/get_attach/get_port_forward stays valid.
    token_ttl: float = 60.0
    #: Live tokens at most; past it get_* raise ResourceExhausted.
    max_in_flight: int = 1000
    #: Time for a SPDY client to create all the streams the request implies.
    stream_creation_timeout: float = 30.0
    #: Time for a port-forward data/error stream pair to complete.
    port_forward_pair_timeout: float = 30.0
    #: A session with no frame read or written for this long is closed.
    idle_timeout: float = 4 * 3600.0
    #: After the status is sent, how long to wait for the client to close.
    finish_timeout: float = 15 * 60.0
    #: Time to receive a whole HTTP request head.
    request_timeout: float = 30.0
    #: Time for a port-forward dial inside the pod's network namespace.
    dial_timeout: float = 10.0
    #: Called as (kind, protocol) when a session has been upgraded: kind is exec,
    #: attach or portforward; protocol the negotiated one.  For metrics.
    on_session: Callable[[str, str], None] | None = None
