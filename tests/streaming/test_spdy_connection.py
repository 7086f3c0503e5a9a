"""The SPDY session state machine, with a client and a server back to back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming import spdy
from streaming.spdy import (
    NEED_DATA,
    ConnectionClosed,
    DataReceived,
    GoAwayReceived,
    HeaderBlockDecoder,
    PingAcknowledged,
    PingReceived,
    ReplyReceived,
    Role,
    RstStatus,
    SessionState,
    SpdyConnection,
    SpdyLocalProtocolError,
    SpdyRemoteProtocolError,
    StreamOpened,
    StreamReset,
    StreamState,
    maybe_read_frame,
)

from .captures import SPDY_CAPTURES, load


class Pair:
    """h11's ConnectionPair: a client and a server wired back to back."""

    def __init__(self) -> None:
        self.client = SpdyConnection(Role.CLIENT)
        self.server = SpdyConnection(Role.SERVER)

    def to_server(self) -> list[Any]:
        return events(self.server, self.client.data_to_send())

    def to_client(self) -> list[Any]:
        return events(self.client, self.server.data_to_send())


def events(conn: SpdyConnection, data: bytes) -> list[Any]:
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def frames(data: bytes) -> list[Any]:
    buf = bytearray(data)
    decoder = HeaderBlockDecoder()
    out = []
    while (frame := maybe_read_frame(buf, decoder)) is not None:
        out.append(frame)
    assert not buf
    return out


def test_open_reply_data_and_half_closes() -> None:
    p = Pair()
    sid = p.client.send_syn_stream([("streamtype", "stdin")])
    assert sid == 1
    assert p.to_server() == [StreamOpened(1, (("streamtype", "stdin"),))]
    p.server.send_syn_reply(1)
    assert p.to_client() == [ReplyReceived(1, ())]
    p.client.send_data(1, b"abc", fin=True)
    assert p.to_server() == [DataReceived(1, b"abc", fin=True)]
    assert p.server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE
    p.server.end_stream(1)
    assert p.to_client() == [DataReceived(1, b"", fin=True)]
    # Closed both ways: both sides forget the stream.
    assert p.server.open_streams() == [] and p.client.open_streams() == []


def test_large_data_is_cut_into_32k_frames() -> None:
    p = Pair()
    p.client.send_syn_stream([("streamtype", "stdin")])
    p.to_server()
    p.server.send_syn_reply(1)
    p.to_client()
    p.server.send_data(1, b"x" * 100_000, fin=True)
    sent = frames(p.server.data_to_send())
    assert [len(f.data) for f in sent] == [32768, 32768, 32768, 1696]
    assert [f.fin for f in sent] == [False, False, False, True]


def test_ping_from_peer_is_echoed_verbatim() -> None:
    server = SpdyConnection(Role.SERVER)
    assert events(server, bytes.fromhex("800300060000000400000001")) == [PingReceived(1)]
    assert server.data_to_send() == bytes.fromhex("800300060000000400000001")


def test_own_ping_is_acknowledged() -> None:
    p = Pair()
    ping_id = p.server.ping()
    assert ping_id == 2
    assert p.to_client() == [PingReceived(2)]
    assert p.to_server() == [PingAcknowledged(2)]


def test_lower_stream_id_is_reset_and_session_lives() -> None:
    p = Pair()
    p.client.send_syn_stream([("a", "1")])
    p.client.send_syn_stream([("a", "2")])
    p.to_server()
    # A third client built to re-use id 1 against the same server.
    rogue = SpdyConnection(Role.CLIENT)
    rogue._encoder = p.client._encoder
    rogue.send_syn_stream([("a", "3")])
    evs = events(p.server, rogue.data_to_send())
    assert evs == [StreamReset(1, RstStatus.PROTOCOL_ERROR, remote_reset=False)]
    assert frames(p.server.data_to_send())[-1] == spdy.RstStreamFrame(1, RstStatus.PROTOCOL_ERROR)
    assert p.server.session_state is SessionState.OPEN


def test_data_after_peer_fin_resets_the_stream() -> None:
    server = SpdyConnection(Role.SERVER)
    client = SpdyConnection(Role.CLIENT)
    client.send_syn_stream([("x", "y")], fin=True)
    events(server, client.data_to_send())
    server.send_syn_reply(1)
    evs = events(server, bytes.fromhex("00000001 00000001 41".replace(" ", "")))
    assert evs == [StreamReset(1, RstStatus.STREAM_ALREADY_CLOSED, remote_reset=False)]


def test_frames_after_our_reset_are_ignored() -> None:
    p = Pair()
    p.client.send_syn_stream([("streamtype", "stdin")])
    p.to_server()
    p.server.send_syn_reply(1)
    p.server.reset_stream(1)
    p.client.send_data(1, b"in flight")
    assert p.to_server() == []
    assert p.to_client() == [ReplyReceived(1, ()), StreamReset(1, RstStatus.CANCEL)]


def test_data_on_never_opened_stream_is_invalid_stream() -> None:
    server = SpdyConnection(Role.SERVER)
    evs = events(server, bytes.fromhex("0000000900000001" + "41"))
    assert evs == [StreamReset(9, RstStatus.INVALID_STREAM, remote_reset=False)]


def test_goaway_and_eof() -> None:
    p = Pair()
    p.client.send_goaway()
    assert p.to_server() == [GoAwayReceived(0, spdy.GoAwayStatus.OK)]
    assert p.server.session_state is SessionState.GOAWAY_RECEIVED
    p.server.receive_data(b"")
    assert p.server.next_event() == ConnectionClosed()
    assert p.server.next_event() is NEED_DATA
    with pytest.raises(RuntimeError):
        p.server.receive_data(b"more")


def test_streams_after_our_goaway_are_ignored() -> None:
    p = Pair()
    p.server.send_goaway()
    p.client.send_syn_stream([("a", "b")])
    assert p.to_server() == []


def test_session_error_queues_goaway_and_raises_remote_error_forever() -> None:
    server = SpdyConnection(Role.SERVER)
    server.receive_data(bytes.fromhex("800200060000000400000001"))
    with pytest.raises(SpdyRemoteProtocolError):
        server.next_event()
    assert frames(server.data_to_send()) == [spdy.GoAwayFrame(0, spdy.GoAwayStatus.PROTOCOL_ERROR)]
    with pytest.raises(SpdyRemoteProtocolError):
        server.next_event()


def test_local_misuse_raises_local_error() -> None:
    server = SpdyConnection(Role.SERVER)
    with pytest.raises(SpdyLocalProtocolError):
        server.send_data(1, b"x")
    client = SpdyConnection(Role.CLIENT)
    sid = client.send_syn_stream([("a", "b")], fin=True)
    with pytest.raises(SpdyLocalProtocolError) as info:
        client.send_data(sid, b"x")
    assert not info.value.is_stream_error
    with pytest.raises(TypeError):
        spdy.SpdyProtocolError("abstract")


def test_unknown_control_frames_are_reported_not_fatal() -> None:
    server = SpdyConnection(Role.SERVER)
    evs = events(server, bytes.fromhex("8003000a00000002abcd"))
    assert evs == [spdy.UnknownFrameReceived(10, 0)]


@pytest.mark.parametrize("name", SPDY_CAPTURES)
def test_server_session_replays_captured_client(name: str) -> None:
    """Our server-side session accepts every crictl byte stream, in TCP packet pieces."""
    cap = load(name)
    server = SpdyConnection(Role.SERVER)
    head = len(cap.request_head())
    stream = b"".join(cap.packets("c2s"))[head:]
    seen = []
    for i in range(0, len(stream), 5):
        server.receive_data(stream[i : i + 5])
        while (event := server.next_event()) is not NEED_DATA:
            seen.append(event)
            if isinstance(event, StreamOpened):
                server.send_syn_reply(event.stream_id)
    opened = [e.stream_id for e in seen if isinstance(e, StreamOpened)]
    assert opened == [f["stream_id"] for f in cap.frames("c2s") if f["type"] == "SYN_STREAM"]
    assert not [e for e in seen if isinstance(e, StreamReset) and not e.remote_reset]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from([Role.SERVER, Role.CLIENT]))
def test_fuzz_random_bytes_parse_or_raise_remote_error(data: bytes, role: Role) -> None:
    conn = SpdyConnection(role, max_inbound_frame=1 << 16)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        while conn.next_event() is not NEED_DATA:
            pass
    except SpdyRemoteProtocolError:
        pass


def _frame_strategy() -> st.SearchStrategy[bytes]:
    """Well-formed frame headers around random payloads: reaches deeper than pure noise."""
    control = st.builds(
        lambda t, f, p: bytes([0x80, 3, 0, t, f]) + len(p).to_bytes(3, "big") + p,
        st.integers(1, 11),
        st.sampled_from([0, 1, 2, 3]),
        st.binary(max_size=40),
    )
    data = st.builds(
        lambda sid, f, p: sid.to_bytes(4, "big") + bytes([f]) + len(p).to_bytes(3, "big") + p,
        st.integers(0, 9),
        st.sampled_from([0, 1]),
        st.binary(max_size=20),
    )
    return st.lists(st.one_of(control, data), max_size=12).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(
            st.tuples(st.text("abcxyz", min_size=1, max_size=5), st.text(max_size=5)), max_size=3
        ),
        max_size=4,
    ),
    _frame_strategy(),
)
def test_fuzz_structured_frames(header_sets: list[list[tuple[str, str]]], tail: bytes) -> None:
    client = SpdyConnection(Role.CLIENT)
    for headers in header_sets:
        try:
            client.send_syn_stream(headers)
        except SpdyLocalProtocolError:
            pass
    server = SpdyConnection(Role.SERVER)
    server.receive_data(client.data_to_send() + tail)
    try:
        while (event := server.next_event()) is not NEED_DATA:
            if isinstance(event, StreamOpened):
                server.send_syn_reply(event.stream_id)
            writable = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
            if isinstance(event, DataReceived) and server.stream_state(event.stream_id) in writable:
                server.send_data(event.stream_id, event.data)
    except SpdyRemoteProtocolError:
        pass
    server.data_to_send()
