"""The sans-IO SPDY/3 session: bytes in, events out; calls in, bytes out.

Usage, in the style of h11 and h2::

    conn = SpdyConnection(Role.SERVER)
    conn.receive_data(data)            # b"" when the transport hit EOF
    while (event := conn.next_event()) is not NEED_DATA:
        ...                            # StreamOpened, DataReceived, PingReceived, ...
    conn.send_syn_reply(stream_id)
    conn.send_data(stream_id, b"out", fin=True)
    transport.write(conn.data_to_send())

Automatic replies: a PING whose id has the peer's parity is echoed verbatim, a
frame that breaks a stream's rules resets that stream, and a frame that breaks
the session queues a GOAWAY(PROTOCOL_ERROR) and raises
:class:`SpdyRemoteProtocolError` from ``next_event``.  Nothing is ever written
unprompted otherwise: a Go peer discards whatever follows the 101 until its
first frame, and blocks on HEADERS or flow-control frames it does not expect.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ._errors import (
    GoAwayStatus,
    RstStatus,
    SpdyLocalProtocolError,
    SpdyRemoteProtocolError,
)
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    DataReceived,
    Event,
    GoAwayReceived,
    HeadersReceived,
    PingAcknowledged,
    PingReceived,
    ReplyReceived,
    SettingsReceived,
    StreamOpened,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from ._frames import (
    MAX_FRAME_LENGTH,
    MAX_STREAM_ID,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeaderBlockDecoder,
    HeaderBlockEncoder,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    Setting,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    UnknownControlFrame,
    WindowUpdateFrame,
    maybe_read_frame,
    write_frame,
)
from ._state import (
    SessionInput,
    SessionState,
    SessionStateMachine,
    StreamInput,
    StreamState,
    StreamStateMachine,
)

# Go writers cut DATA at 32 KiB; matching that keeps one busy stream from holding
# the transport for long.
DEFAULT_MAX_OUTBOUND_DATA = 32 * 1024


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class SpdyConnection:
    """One SPDY/3 session, either side.

    ``max_inbound_frame`` caps the length of any frame the peer may send (the
    protocol maximum is 2**24-1); ``max_header_block`` caps an inflated header
    block.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_inbound_frame: int = MAX_FRAME_LENGTH,
        max_header_block: int | None = None,
        max_outbound_data: int = DEFAULT_MAX_OUTBOUND_DATA,
    ) -> None:
        self.role = role
        self._session = SessionStateMachine()
        self._streams: dict[int, StreamStateMachine] = {}
        self._in = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._eof_reported = False
        self._decoder = (
            HeaderBlockDecoder()
            if max_header_block is None
            else HeaderBlockDecoder(max_header_block)
        )
        self._encoder = HeaderBlockEncoder()
        self._max_inbound_frame = max_inbound_frame
        self._max_outbound_data = max_outbound_data
        self._next_local_id = 1 if role is Role.CLIENT else 2
        self._next_ping_id = 1 if role is Role.CLIENT else 2
        self.last_remote_stream_id = 0

    # --- state ---------------------------------------------------------------

    @property
    def session_state(self) -> SessionState:
        return self._session.state

    def stream_state(self, stream_id: int) -> StreamState:
        machine = self._streams.get(stream_id)
        return StreamState.IDLE if machine is None else machine.state

    def open_streams(self) -> list[int]:
        return [sid for sid, m in self._streams.items() if m.state is not StreamState.CLOSED]

    def _is_local_id(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == (self.role is Role.CLIENT)

    # --- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the transport; ``b""`` means the peer closed it."""
        if self._eof:
            if data:
                raise RuntimeError("received data after EOF")
            return
        if data:
            self._in += data
        else:
            self._eof = True

    def next_event(self) -> Event | type[NEED_DATA]:
        """The next event, or NEED_DATA.

        Raises :class:`SpdyRemoteProtocolError` if the peer broke the session; the
        GOAWAY that says so is then waiting in :meth:`data_to_send`, and every
        later call raises again.
        """
        if self._session.state is SessionState.ERROR:
            raise SpdyRemoteProtocolError("can't receive data when the peer is in error")
        while True:
            try:
                frame = maybe_read_frame(
                    self._in, self._decoder, max_frame_length=self._max_inbound_frame
                )
                if frame is None:
                    if self._eof and not self._eof_reported:
                        self._eof_reported = True
                        if self._session.state is not SessionState.CLOSED:
                            self._session.process(SessionInput.RECV_EOF)
                        return ConnectionClosed()
                    return NEED_DATA
                event = self._handle_frame(frame)
            except SpdyLocalProtocolError as exc:
                if exc.is_stream_error:
                    assert exc.stream_id is not None
                    self._local_reset(exc.stream_id, exc.status)
                    return StreamReset(exc.stream_id, exc.status, remote_reset=False)
                self._out.append(
                    write_frame(
                        GoAwayFrame(self.last_remote_stream_id, exc.goaway_status),
                        self._encoder,
                    )
                )
                self._session.process(SessionInput.ERROR)
                raise exc._reraise_as_remote_protocol_error() from exc
            if event is not None:
                return event

    def _local_reset(self, stream_id: int, status: RstStatus) -> None:
        machine = self._streams.get(stream_id)
        if machine is not None and machine.state is not StreamState.CLOSED:
            machine.process(StreamInput.SEND_RST)
            self._forget_if_closed(machine)
        self._out.append(write_frame(RstStreamFrame(stream_id, status), self._encoder))

    def _stream_for_frame(self, stream_id: int) -> StreamStateMachine | None:
        """The stream a non-SYN frame belongs to; None if it should be ignored."""
        machine = self._streams.get(stream_id)
        if machine is not None:
            return machine
        known = (
            stream_id < self._next_local_id
            if self._is_local_id(stream_id)
            else stream_id <= self.last_remote_stream_id
        )
        if known:
            # Closed and forgotten, or refused by us: late frames are expected.
            return None
        raise SpdyLocalProtocolError(
            f"frame for stream {stream_id}, which was never opened",
            stream_id=stream_id,
            status=RstStatus.INVALID_STREAM,
        )

    def _recv(self, machine: StreamStateMachine, *inputs: StreamInput) -> None:
        for stream_input in inputs:
            machine.process(stream_input)

    def _handle_frame(self, frame: Frame) -> Event | None:
        """The event for one frame; None when the frame is stale and ignored."""
        match frame:
            case DataFrame(stream_id, data, fin):
                data_machine = self._stream_for_frame(stream_id)
                if data_machine is None:
                    return None
                inputs = [StreamInput.RECV_DATA]
                if fin:
                    inputs.append(StreamInput.RECV_END_STREAM)
                self._recv(data_machine, *inputs)
                self._forget_if_closed(data_machine)
                return DataReceived(stream_id, data, fin)
            case SynStreamFrame():
                return self._handle_syn_stream(frame)
            case SynReplyFrame(stream_id, headers, fin):
                reply_machine = self._stream_for_frame(stream_id)
                if reply_machine is None:
                    return None
                if not self._is_local_id(stream_id):
                    raise SpdyLocalProtocolError(
                        f"SYN_REPLY for stream {stream_id}, which the peer opened",
                        stream_id=stream_id,
                    )
                inputs = [StreamInput.RECV_SYN_REPLY]
                if fin:
                    inputs.append(StreamInput.RECV_END_STREAM)
                self._recv(reply_machine, *inputs)
                self._forget_if_closed(reply_machine)
                return ReplyReceived(stream_id, headers, fin)
            case HeadersFrame(stream_id, headers, fin):
                headers_machine = self._stream_for_frame(stream_id)
                if headers_machine is None:
                    return None
                inputs = [StreamInput.RECV_HEADERS]
                if fin:
                    inputs.append(StreamInput.RECV_END_STREAM)
                self._recv(headers_machine, *inputs)
                self._forget_if_closed(headers_machine)
                return HeadersReceived(stream_id, headers, fin)
            case RstStreamFrame(stream_id, status):
                rst_machine = self._streams.get(stream_id)
                if rst_machine is None:
                    # A RST for a stream already gone is a crossing, not an error.
                    return None
                rst_machine.process(StreamInput.RECV_RST)
                self._forget_if_closed(rst_machine)
                return StreamReset(stream_id, status, remote_reset=True)
            case PingFrame(ping_id):
                if ping_id % 2 == self._next_ping_id % 2:
                    return PingAcknowledged(ping_id)
                self._out.append(write_frame(frame, self._encoder))
                return PingReceived(ping_id)
            case SettingsFrame(settings, clear):
                return SettingsReceived(settings, clear)
            case WindowUpdateFrame(stream_id, delta):
                return WindowUpdated(stream_id, delta)
            case GoAwayFrame(last, status):
                self._session.process(SessionInput.RECV_GOAWAY)
                return GoAwayReceived(last, status)
            case UnknownControlFrame(frame_type, flags, _payload):
                return UnknownFrameReceived(frame_type, flags)
        raise AssertionError(f"unhandled frame {frame!r}")  # pragma: no cover

    def _handle_syn_stream(self, frame: SynStreamFrame) -> Event | None:
        stream_id = frame.stream_id
        if self._is_local_id(stream_id) and stream_id in self._streams:
            raise SpdyLocalProtocolError(
                f"SYN_STREAM reuses stream {stream_id}",
                stream_id=stream_id,
                status=RstStatus.STREAM_IN_USE,
            )
        if stream_id <= self.last_remote_stream_id:
            # Go's rule: ids must grow; a lower one is refused, the session lives.
            raise SpdyLocalProtocolError(
                f"SYN_STREAM id {stream_id} not above {self.last_remote_stream_id}",
                stream_id=stream_id,
            )
        self.last_remote_stream_id = stream_id
        if not self._session.accepts_remote_streams:
            # After our GOAWAY the peer's new streams are ignored (SPDY/3 2.6.6).
            return None
        machine = StreamStateMachine(stream_id)
        self._streams[stream_id] = machine
        machine.process(StreamInput.RECV_SYN_STREAM)
        if frame.fin:
            machine.process(StreamInput.RECV_END_STREAM)
        return StreamOpened(
            stream_id,
            frame.headers,
            associated_stream_id=frame.associated_stream_id,
            priority=frame.priority,
            fin=frame.fin,
            unidirectional=frame.unidirectional,
        )

    def _forget_if_closed(self, machine: StreamStateMachine) -> None:
        # Closed streams are forgotten: late frames for them are recognised by id
        # (below our counters) and ignored, which is what a RST crossing needs.
        if machine.state is StreamState.CLOSED:
            self._streams.pop(machine.stream_id, None)

    # --- sending ---------------------------------------------------------------

    @property
    def data_pending(self) -> bool:
        """Whether :meth:`data_to_send` would return anything."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the transport since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send_frame(self, frame: Frame) -> None:
        self._out.append(write_frame(frame, self._encoder))

    def _local(self, stream_id: int) -> StreamStateMachine:
        machine = self._streams.get(stream_id)
        if machine is None:
            raise SpdyLocalProtocolError(f"stream {stream_id} is not open")
        return machine

    def _send_inputs(self, stream_id: int, *inputs: StreamInput) -> StreamStateMachine:
        machine = self._local(stream_id)
        for stream_input in inputs:
            try:
                machine.process(stream_input)
            except SpdyLocalProtocolError as exc:
                # Our own mistake is never a stream error to be answered with RST.
                raise SpdyLocalProtocolError(exc.msg) from None
        return machine

    def send_syn_stream(
        self,
        headers: Sequence[tuple[str, str]],
        *,
        fin: bool = False,
        priority: int = 0,
        unidirectional: bool = False,
        associated_stream_id: int = 0,
    ) -> int:
        """Open a stream; returns its id."""
        if not self._session.may_open_local:
            raise SpdyLocalProtocolError(f"can't open a stream in {self._session.state.name}")
        stream_id = self._next_local_id
        if stream_id > MAX_STREAM_ID:
            raise SpdyLocalProtocolError("stream ids exhausted")
        self._next_local_id += 2
        machine = StreamStateMachine(stream_id)
        self._streams[stream_id] = machine
        machine.process(StreamInput.SEND_SYN_STREAM)
        if fin:
            machine.process(StreamInput.SEND_END_STREAM)
        self._send_frame(
            SynStreamFrame(
                stream_id,
                tuple(headers),
                associated_stream_id=associated_stream_id,
                priority=priority,
                fin=fin,
                unidirectional=unidirectional,
            )
        )
        return stream_id

    def send_syn_reply(
        self, stream_id: int, headers: Sequence[tuple[str, str]] = (), *, fin: bool = False
    ) -> None:
        inputs = [StreamInput.SEND_SYN_REPLY]
        if fin:
            inputs.append(StreamInput.SEND_END_STREAM)
        machine = self._send_inputs(stream_id, *inputs)
        self._send_frame(SynReplyFrame(stream_id, tuple(headers), fin))
        self._forget_if_closed(machine)

    def send_headers(
        self, stream_id: int, headers: Sequence[tuple[str, str]], *, fin: bool = False
    ) -> None:
        """Send HEADERS.  Never to a Go peer: it blocks on them."""
        inputs = [StreamInput.SEND_HEADERS]
        if fin:
            inputs.append(StreamInput.SEND_END_STREAM)
        machine = self._send_inputs(stream_id, *inputs)
        self._send_frame(HeadersFrame(stream_id, tuple(headers), fin))
        self._forget_if_closed(machine)

    def send_data(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        """Queue ``data`` (cut into frames) and, with ``fin``, half-close our side."""
        machine = self._local(stream_id)
        if not machine.can_send:
            raise SpdyLocalProtocolError(
                f"can't send on stream {stream_id} in state {machine.state.name}"
            )
        step = self._max_outbound_data
        view = memoryview(data)
        for start in range(0, len(view), step):
            chunk = bytes(view[start : start + step])
            last = start + step >= len(view)
            self._send_inputs(stream_id, StreamInput.SEND_DATA)
            self._send_frame(DataFrame(stream_id, chunk, fin and last))
            if fin and last:
                self._send_inputs(stream_id, StreamInput.SEND_END_STREAM)
        if fin and not view:
            self._send_inputs(stream_id, StreamInput.SEND_DATA, StreamInput.SEND_END_STREAM)
            self._send_frame(DataFrame(stream_id, b"", True))
        self._forget_if_closed(machine)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side with an empty DATA frame carrying FIN."""
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, status: RstStatus = RstStatus.CANCEL) -> None:
        """Send RST_STREAM; a stream already closed is left alone."""
        machine = self._streams.get(stream_id)
        if machine is None or machine.state is StreamState.CLOSED:
            return
        machine.process(StreamInput.SEND_RST)
        self._forget_if_closed(machine)
        self._send_frame(RstStreamFrame(stream_id, status))

    def ping(self) -> int:
        """Send a PING with our next id; the echo arrives as PingAcknowledged."""
        ping_id = self._next_ping_id
        self._next_ping_id = (self._next_ping_id + 2) & 0xFFFFFFFF
        self._send_frame(PingFrame(ping_id))
        return ping_id

    def send_goaway(self, status: GoAwayStatus = GoAwayStatus.OK) -> None:
        self._session.process(SessionInput.SEND_GOAWAY)
        self._send_frame(GoAwayFrame(self.last_remote_stream_id, status))

    def send_settings(self, settings: Sequence[Setting], *, clear: bool = False) -> None:
        self._send_frame(SettingsFrame(tuple(settings), clear))

    def send_window_update(self, stream_id: int, delta: int) -> None:
        self._send_frame(WindowUpdateFrame(stream_id, delta))
