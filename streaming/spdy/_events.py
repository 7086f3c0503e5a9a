"""Events that :meth:`SpdyConnection.next_event` reports about the peer.

Each is a frozen, slotted dataclass.  Header lists are tuples of ``(name, value)``
strings with lowercase names; a name that carried several NUL-separated values
on the wire appears once per value.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import GoAwayStatus, RstStatus
from ._frames import Headers, Setting


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """Returned by ``next_event`` when no complete frame is buffered."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer sent SYN_STREAM; answer with ``send_syn_reply`` or ``reset_stream``."""

    stream_id: int
    headers: Headers
    associated_stream_id: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False

    def header(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        return _first(self.headers, name)


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The peer answered one of our SYN_STREAMs with SYN_REPLY."""

    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes on a stream; ``fin`` means the peer will send nothing more on it."""

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class StreamReset:
    """A stream ended abnormally.

    ``remote_reset`` is True when the peer sent RST_STREAM, False when we reset
    the stream ourselves because the peer broke the protocol on it (the RST is
    already queued in ``data_to_send``).
    """

    stream_id: int
    status: RstStatus
    remote_reset: bool = True


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A PING from the peer; the echo is already queued in ``data_to_send``."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer echoed one of our PINGs."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    settings: tuple[Setting, ...]
    clear: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """WINDOW_UPDATE, reported only: Kubernetes peers do no SPDY flow control."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_good_stream_id: int
    status: GoAwayStatus


@dataclass(frozen=True, slots=True)
class UnknownFrameReceived:
    frame_type: int
    flags: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the transport (``receive_data(b"")``)."""


Event = (
    StreamOpened
    | ReplyReceived
    | HeadersReceived
    | DataReceived
    | StreamReset
    | PingReceived
    | PingAcknowledged
    | SettingsReceived
    | WindowUpdated
    | GoAwayReceived
    | UnknownFrameReceived
    | ConnectionClosed
)


def _first(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None
