"""The WebSocket channel layer and handshake, fed the captured client bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming import remotecommand as rc
from streaming.websocket import (
    Accept,
    BinaryMessage,
    ChannelClosed,
    ChannelConnection,
    ChannelData,
    CloseReceived,
    ProtocolFailed,
    Reject,
    accept_handshake,
    is_websocket_request,
)

from .captures import WS_CAPTURES, load

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def ws_headers(*protocols: str) -> list[tuple[str, str]]:
    headers = [
        ("Host", "x"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    if protocols:
        headers.append(("Sec-WebSocket-Protocol", ",".join(protocols)))
    return headers


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + body


def test_handshake_accepts_with_rfc_accept_key() -> None:
    answer = accept_handshake(
        "GET", "/exec/x", ws_headers("v4.channel.k8s.io"), rc.WS_REMOTECOMMAND_PROTOCOLS
    )
    assert isinstance(answer, Accept)
    assert answer.subprotocol == "v4.channel.k8s.io"
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in answer.headers


def test_handshake_matches_captured_containerd_answer() -> None:
    cap = load("exec_wsv4_tty_resize")
    lines = cap.request_head().decode().split("\r\n")
    method, target, _ = lines[0].split()
    headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    answer = accept_handshake(method, target, headers, rc.WS_REMOTECOMMAND_PROTOCOLS)  # type: ignore[arg-type]
    assert isinstance(answer, Accept)
    expected = cap.doc["http_response_headers"].split("\r\n")[1:]
    assert [f"{k}: {v}" for k, v in answer.headers] == [line for line in expected if line]


def test_client_preference_wins_and_v5_is_served() -> None:
    answer = accept_handshake(
        "GET",
        "/",
        ws_headers("v5.channel.k8s.io", "v4.channel.k8s.io"),
        rc.WS_REMOTECOMMAND_PROTOCOLS,
    )
    assert isinstance(answer, Accept) and answer.subprotocol == "v5.channel.k8s.io"


def test_no_offer_gets_empty_subprotocol_header() -> None:
    answer = accept_handshake("GET", "/", ws_headers(), rc.WS_REMOTECOMMAND_PROTOCOLS)
    assert isinstance(answer, Accept) and answer.subprotocol == ""
    assert ("Sec-WebSocket-Protocol", "") in answer.headers


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("POST", ws_headers("v4.channel.k8s.io"), 405),
        ("GET", ws_headers("v9.channel.k8s.io"), 403),
        ("GET", [h for h in ws_headers() if h[0] != "Sec-WebSocket-Key"], 400),
        ("GET", [*ws_headers()[:-1], ("Sec-WebSocket-Version", "8")], 400),
    ],
)
def test_handshake_refusals(method: str, headers: list[tuple[str, str]], status: int) -> None:
    answer = accept_handshake(method, "/", headers, rc.WS_REMOTECOMMAND_PROTOCOLS)
    assert isinstance(answer, Reject) and answer.status == status


def test_websocket_detection() -> None:
    assert is_websocket_request(ws_headers())
    assert not is_websocket_request([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")])
    assert not is_websocket_request([("Upgrade", "websocket")])


@pytest.mark.parametrize("name", WS_CAPTURES)
def test_captured_client_frames_whole_and_byte_by_byte(name: str) -> None:
    cap = load(name)
    data = cap.after_head("c2s")
    expected: list[ChannelData | CloseReceived] = []
    for frame in cap.frames("c2s"):
        payload = bytes.fromhex(frame["payload_hex"])
        if frame["opcode"] == "CLOSE":
            expected.append(CloseReceived(int.from_bytes(payload[:2], "big"), ""))
        else:
            base64_mode = rc.is_base64(cap.doc["negotiated_protocol"])
            decoded = rc.decode_channel_message(payload, base64_mode=base64_mode)
            assert decoded is not None
            expected.append(ChannelData(*decoded))
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        conn = ChannelConnection(cap.doc["negotiated_protocol"])
        got = []
        for piece in pieces:
            conn.receive_data(piece)
            got += conn.events()
        assert got == expected
        # The client's Close is answered with our Close and then EOF.
        if expected and isinstance(expected[-1], CloseReceived):
            out = conn.data_to_send()
            assert out[0][:2] == b"\x88\x02" and out[-1] == b""


def test_send_is_one_unfragmented_message_per_write() -> None:
    conn = ChannelConnection("v4.channel.k8s.io")
    conn.send(1, b"out\n")
    assert conn.data_to_send() == [b"\x82\x05\x01out\n"]
    b64 = ChannelConnection("v4.base64.channel.k8s.io")
    b64.send(1, b"hello")
    assert b64.data_to_send() == [b"\x81\x091aGVsbG8="]


def test_v5_close_signal_and_bad_close_signal() -> None:
    conn = ChannelConnection("v5.channel.k8s.io")
    conn.receive_data(masked(2, b"\xff\x00"))
    assert conn.events() == [ChannelClosed(0)]
    conn.receive_data(masked(2, b"\xff\x00\x01"))
    assert isinstance(conn.events()[0], ProtocolFailed)
    assert conn.data_to_send()[0][2:4] == b"\x03\xea"  # Close 1002, with a reason


def test_close_signal_is_plain_data_before_v5() -> None:
    conn = ChannelConnection("v4.channel.k8s.io")
    conn.receive_data(masked(2, b"\xff\x00"))
    assert conn.events() == [ChannelData(255, b"\x00")]


def test_fragmented_message_is_reassembled_and_pings_answered() -> None:
    conn = ChannelConnection("v4.channel.k8s.io")
    conn.receive_data(masked(2, b"\x00ab", fin=False) + masked(9, b"p") + masked(0, b"cd"))
    assert conn.events() == [ChannelData(0, b"abcd")]
    assert conn.data_to_send() == [b"\x8a\x01p"]


def test_unmasked_client_frame_fails_the_connection() -> None:
    conn = ChannelConnection("v4.channel.k8s.io")
    conn.receive_data(b"\x82\x02\x00a")
    assert isinstance(conn.events()[-1], ProtocolFailed)


def test_tunnel_mode_passes_messages_through() -> None:
    conn = ChannelConnection(rc.PORT_FORWARD_TUNNEL, tunnel=True)
    conn.receive_data(masked(2, b"\x80\x03\x00\x06"))
    assert conn.events() == [BinaryMessage(b"\x80\x03\x00\x06")]


@given(
    st.binary(max_size=512),
    st.sampled_from(["v4.channel.k8s.io", "v5.channel.k8s.io", "base64.channel.k8s.io"]),
)
def test_fuzz_random_bytes_never_raise(data: bytes, protocol: str) -> None:
    conn = ChannelConnection(protocol)
    conn.receive_data(data)
    conn.events()
    conn.receive_data(b"")
    conn.events()
    conn.data_to_send()
