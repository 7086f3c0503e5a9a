"""Errors of the SPDY codec and the status codes they carry.

As in h11, there are two sides: a :class:`SpdyLocalProtocolError` means *we* did
something the protocol forbids (a bug in the caller, or in our own parser before
the boundary), a :class:`SpdyRemoteProtocolError` means the peer did.  Inside the
package only the Local form is raised; :meth:`SpdyConnection.next_event` turns it
into the Remote form at the one place where the peer's bytes enter.
"""

from __future__ import annotations

import enum


class RstStatus(enum.IntEnum):
    """RST_STREAM status codes (SPDY/3 section 2.6.3)."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    """GOAWAY status codes (SPDY/3 section 2.6.6)."""

    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SpdyProtocolError(Exception):
    """Base class; raise :class:`SpdyLocalProtocolError` or :class:`SpdyRemoteProtocolError`.

    ``stream_id`` is set when the error concerns one stream only (the session goes
    on and the stream is reset with ``status``); when it is ``None`` the whole
    session is broken and is ended with a GOAWAY carrying ``goaway_status``.
    """

    def __init__(
        self,
        msg: str,
        *,
        stream_id: int | None = None,
        status: RstStatus = RstStatus.PROTOCOL_ERROR,
        goaway_status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR,
    ) -> None:
        if type(self) is SpdyProtocolError:
            raise TypeError("raise SpdyLocalProtocolError or SpdyRemoteProtocolError")
        super().__init__(msg)
        self.msg = msg
        self.stream_id = stream_id
        self.status = status
        self.goaway_status = goaway_status

    @property
    def is_stream_error(self) -> bool:
        return self.stream_id is not None


class SpdyLocalProtocolError(SpdyProtocolError):
    """We tried to do something the protocol (or our own state) forbids."""

    def _reraise_as_remote_protocol_error(self) -> SpdyRemoteProtocolError:
        return SpdyRemoteProtocolError(
            self.msg,
            stream_id=self.stream_id,
            status=self.status,
            goaway_status=self.goaway_status,
        )


class SpdyRemoteProtocolError(SpdyProtocolError):
    """The peer sent bytes that break the protocol; the session cannot go on."""
