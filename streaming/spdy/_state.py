"""Stream and session state machines of a SPDY/3 connection.

Theory of operation
-------------------

Rule 1: everything that decides whether a frame is allowed on a stream, and what
state the stream moves to, lives in the tables of this file.
Rule 2: this file does not know which side opened the connection; the connection
tells it whether an input is ours (SEND_*) or the peer's (RECV_*).

A SPDY stream is opened by one side's SYN_STREAM and accepted by the other's
SYN_REPLY (or refused with RST_STREAM).  Either side half-closes its direction by
setting FIN on the last frame it sends, which in practice is an empty DATA frame.
When both directions are half-closed, or when either side sends RST_STREAM, the
stream is CLOSED.  Before the reply, the opener may already half-close (a
SYN_STREAM with FIN, or DATA+FIN sent ahead of the reply); the two ``*_FIN``
states remember that, so that the reply lands on the right half-closed state.

A frame sets FIN in the same frame that carries a SYN or DATA; the connection
feeds such a frame as two inputs (e.g. RECV_DATA then RECV_END_STREAM), which
keeps the table small.

::

      IDLE --SEND_SYN_STREAM--> SYN_SENT --RECV_SYN_REPLY--+
      IDLE --RECV_SYN_STREAM--> SYN_RECEIVED --SEND_SYN_REPLY--+--> OPEN
      OPEN --SEND_END_STREAM--> HALF_CLOSED_LOCAL --RECV_END_STREAM--> CLOSED
      OPEN --RECV_END_STREAM--> HALF_CLOSED_REMOTE --SEND_END_STREAM--> CLOSED
      any state --SEND_RST or RECV_RST--> CLOSED

Inputs that have no entry for the current state are protocol errors.  Whose
error depends on who produced the input: a SEND_* input is our caller's mistake
(:class:`SpdyLocalProtocolError` raised straight to it), a RECV_* input is the
peer's (the connection resets the stream, or, for frames on streams that never
existed, ends the session).

The session itself is simpler: it is OPEN until a GOAWAY goes one way or the
other, after which no new stream may be opened in that direction, and it is
CLOSED once the transport has ended or an error broke it.
"""

from __future__ import annotations

import enum

from ._errors import RstStatus, SpdyLocalProtocolError


class StreamState(enum.Enum):
    IDLE = "IDLE"
    SYN_SENT = "SYN_SENT"
    SYN_SENT_FIN = "SYN_SENT_FIN"
    SYN_RECEIVED = "SYN_RECEIVED"
    SYN_RECEIVED_FIN = "SYN_RECEIVED_FIN"
    OPEN = "OPEN"
    HALF_CLOSED_LOCAL = "HALF_CLOSED_LOCAL"
    HALF_CLOSED_REMOTE = "HALF_CLOSED_REMOTE"
    CLOSED = "CLOSED"


class StreamInput(enum.Enum):
    SEND_SYN_STREAM = "SEND_SYN_STREAM"
    RECV_SYN_STREAM = "RECV_SYN_STREAM"
    SEND_SYN_REPLY = "SEND_SYN_REPLY"
    RECV_SYN_REPLY = "RECV_SYN_REPLY"
    SEND_HEADERS = "SEND_HEADERS"
    RECV_HEADERS = "RECV_HEADERS"
    SEND_DATA = "SEND_DATA"
    RECV_DATA = "RECV_DATA"
    SEND_END_STREAM = "SEND_END_STREAM"
    RECV_END_STREAM = "RECV_END_STREAM"
    SEND_RST = "SEND_RST"
    RECV_RST = "RECV_RST"


S = StreamState
I = StreamInput  # noqa: E741

_RESETS = {I.SEND_RST: S.CLOSED, I.RECV_RST: S.CLOSED}

STREAM_TRANSITIONS: dict[StreamState, dict[StreamInput, StreamState]] = {
    S.IDLE: {I.SEND_SYN_STREAM: S.SYN_SENT, I.RECV_SYN_STREAM: S.SYN_RECEIVED},
    S.SYN_SENT: {
        I.RECV_SYN_REPLY: S.OPEN,
        I.SEND_DATA: S.SYN_SENT,
        I.SEND_HEADERS: S.SYN_SENT,
        I.SEND_END_STREAM: S.SYN_SENT_FIN,
        **_RESETS,
    },
    S.SYN_SENT_FIN: {I.RECV_SYN_REPLY: S.HALF_CLOSED_LOCAL, **_RESETS},
    S.SYN_RECEIVED: {
        I.SEND_SYN_REPLY: S.OPEN,
        I.RECV_DATA: S.SYN_RECEIVED,
        I.RECV_HEADERS: S.SYN_RECEIVED,
        I.RECV_END_STREAM: S.SYN_RECEIVED_FIN,
        **_RESETS,
    },
    S.SYN_RECEIVED_FIN: {I.SEND_SYN_REPLY: S.HALF_CLOSED_REMOTE, **_RESETS},
    S.OPEN: {
        I.SEND_DATA: S.OPEN,
        I.RECV_DATA: S.OPEN,
        I.SEND_HEADERS: S.OPEN,
        I.RECV_HEADERS: S.OPEN,
        I.SEND_END_STREAM: S.HALF_CLOSED_LOCAL,
        I.RECV_END_STREAM: S.HALF_CLOSED_REMOTE,
        **_RESETS,
    },
    S.HALF_CLOSED_LOCAL: {
        I.RECV_DATA: S.HALF_CLOSED_LOCAL,
        I.RECV_HEADERS: S.HALF_CLOSED_LOCAL,
        I.RECV_END_STREAM: S.CLOSED,
        **_RESETS,
    },
    S.HALF_CLOSED_REMOTE: {
        I.SEND_DATA: S.HALF_CLOSED_REMOTE,
        I.SEND_HEADERS: S.HALF_CLOSED_REMOTE,
        I.SEND_END_STREAM: S.CLOSED,
        **_RESETS,
    },
    # A RST may cross a FIN or another RST on the wire; both are harmless.
    S.CLOSED: {I.RECV_RST: S.CLOSED},
}


class StreamStateMachine:
    """The state of one stream, moved only through :data:`STREAM_TRANSITIONS`."""

    __slots__ = ("state", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.state = S.IDLE

    def process(self, event: StreamInput) -> StreamState:
        try:
            self.state = STREAM_TRANSITIONS[self.state][event]
        except KeyError:
            status = (
                RstStatus.STREAM_ALREADY_CLOSED
                if self.state is S.CLOSED
                or (self.state is S.HALF_CLOSED_REMOTE and event.name.startswith("RECV"))
                else RstStatus.PROTOCOL_ERROR
            )
            raise SpdyLocalProtocolError(
                f"{event.name} not allowed on stream {self.stream_id} in state {self.state.name}",
                stream_id=self.stream_id,
                status=status,
            ) from None
        return self.state

    @property
    def can_send(self) -> bool:
        return self.state in (S.SYN_SENT, S.OPEN, S.HALF_CLOSED_REMOTE)

    @property
    def can_receive(self) -> bool:
        return self.state in (S.SYN_RECEIVED, S.OPEN, S.HALF_CLOSED_LOCAL)


class SessionState(enum.Enum):
    OPEN = "OPEN"
    GOAWAY_SENT = "GOAWAY_SENT"
    GOAWAY_RECEIVED = "GOAWAY_RECEIVED"
    GOAWAY_BOTH = "GOAWAY_BOTH"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


class SessionInput(enum.Enum):
    SEND_GOAWAY = "SEND_GOAWAY"
    RECV_GOAWAY = "RECV_GOAWAY"
    RECV_EOF = "RECV_EOF"
    ERROR = "ERROR"


_SS = SessionState
_SI = SessionInput

SESSION_TRANSITIONS: dict[SessionState, dict[SessionInput, SessionState]] = {
    _SS.OPEN: {
        _SI.SEND_GOAWAY: _SS.GOAWAY_SENT,
        _SI.RECV_GOAWAY: _SS.GOAWAY_RECEIVED,
        _SI.RECV_EOF: _SS.CLOSED,
        _SI.ERROR: _SS.ERROR,
    },
    _SS.GOAWAY_SENT: {
        _SI.SEND_GOAWAY: _SS.GOAWAY_SENT,
        _SI.RECV_GOAWAY: _SS.GOAWAY_BOTH,
        _SI.RECV_EOF: _SS.CLOSED,
        _SI.ERROR: _SS.ERROR,
    },
    _SS.GOAWAY_RECEIVED: {
        _SI.SEND_GOAWAY: _SS.GOAWAY_BOTH,
        _SI.RECV_GOAWAY: _SS.GOAWAY_RECEIVED,
        _SI.RECV_EOF: _SS.CLOSED,
        _SI.ERROR: _SS.ERROR,
    },
    _SS.GOAWAY_BOTH: {
        _SI.SEND_GOAWAY: _SS.GOAWAY_BOTH,
        _SI.RECV_GOAWAY: _SS.GOAWAY_BOTH,
        _SI.RECV_EOF: _SS.CLOSED,
        _SI.ERROR: _SS.ERROR,
    },
    # After the end, a late GOAWAY of ours is still worth writing (the caller may
    # flush before closing); nothing more can be received.
    _SS.CLOSED: {_SI.SEND_GOAWAY: _SS.CLOSED, _SI.ERROR: _SS.ERROR},
    _SS.ERROR: {_SI.SEND_GOAWAY: _SS.ERROR, _SI.ERROR: _SS.ERROR},
}


class SessionStateMachine:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _SS.OPEN

    def process(self, event: SessionInput) -> SessionState:
        try:
            self.state = SESSION_TRANSITIONS[self.state][event]
        except KeyError:
            raise SpdyLocalProtocolError(
                f"{event.name} not allowed on a session in state {self.state.name}"
            ) from None
        return self.state

    @property
    def may_open_local(self) -> bool:
        return self.state is _SS.OPEN

    @property
    def accepts_remote_streams(self) -> bool:
        return self.state in (_SS.OPEN, _SS.GOAWAY_RECEIVED)
