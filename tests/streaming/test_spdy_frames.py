"""SPDY/3 frame codec: byte vectors from the notes and the captured crictl bytes."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from streaming import spdy
from streaming.spdy import (
    DataFrame,
    GoAwayFrame,
    GoAwayStatus,
    HeaderBlockDecoder,
    HeaderBlockEncoder,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    Setting,
    SettingsFrame,
    SpdyLocalProtocolError,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    maybe_read_frame,
    write_frame,
)

from .captures import SPDY_CAPTURES, load


def tr(data: bytes, expected: Any, decoder_factory: Any = HeaderBlockDecoder) -> None:
    """h11's tr(): whole input, byte by byte, then with trailing garbage."""
    buf = bytearray(data)
    assert maybe_read_frame(buf, decoder_factory()) == expected
    assert not buf

    buf = bytearray()
    decoder = decoder_factory()
    for i in range(len(data)):
        assert maybe_read_frame(buf, decoder) is None
        buf += data[i : i + 1]
    assert maybe_read_frame(buf, decoder) == expected
    assert not buf

    buf = bytearray(data + b"trailing garbage")
    assert maybe_read_frame(buf, decoder_factory()) == expected
    assert buf == b"trailing garbage"


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- byte vectors from the notes ------------------------------------------------------


def test_dictionary_is_the_spdy3_constant() -> None:
    assert len(spdy.HEADER_DICTIONARY) == 1423
    assert zlib.adler32(spdy.HEADER_DICTIONARY) == 0xE3C6A7C2
    assert spdy.HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.HEADER_DICTIONARY.endswith(b"enq=0.")


def test_data_hello_on_stream_5() -> None:
    raw = h("00000005 00000005 68656c6c6f")
    tr(raw, DataFrame(5, b"hello"))
    assert write_frame(DataFrame(5, b"hello"), HeaderBlockEncoder()) == raw


def test_half_close_is_empty_data_with_fin() -> None:
    raw = h("00000005 01000000")
    tr(raw, DataFrame(5, b"", fin=True))
    assert write_frame(DataFrame(5, b"", True), HeaderBlockEncoder()) == raw


def test_rst_cancel_on_stream_3() -> None:
    raw = h("80030003 00000008 00000003 00000005")
    tr(raw, RstStreamFrame(3, RstStatus.CANCEL))
    assert write_frame(RstStreamFrame(3, RstStatus.CANCEL), HeaderBlockEncoder()) == raw


def test_ping_id_1() -> None:
    raw = h("80030006 00000004 00000001")
    tr(raw, PingFrame(1))
    assert write_frame(PingFrame(1), HeaderBlockEncoder()) == raw


def test_goaway_last_7_ok() -> None:
    raw = h("80030007 00000008 00000007 00000000")
    tr(raw, GoAwayFrame(7, GoAwayStatus.OK))
    assert write_frame(GoAwayFrame(7), HeaderBlockEncoder()) == raw


def test_python_empty_syn_reply_matches_the_verified_vector() -> None:
    raw = h("80030002 00000014 00000001 78f9e3c6a7c202a6230600000000ffff")
    assert write_frame(SynReplyFrame(1, ()), HeaderBlockEncoder()) == raw
    tr(raw, SynReplyFrame(1, ()))


def test_go_empty_syn_reply_decodes_the_same() -> None:
    tr(h("80030002 00000014 00000001 78f9e3c6a7c26260606000000000ffff"), SynReplyFrame(1, ()))


def test_error_stream_nv_block() -> None:
    block = h("00000001 0000000a") + b"streamtype" + h("00000005") + b"error"
    assert spdy.encode_nv_block([("streamtype", "error")]) == block
    assert spdy.decode_nv_block(block, stream_id=1) == (("streamtype", "error"),)


def test_settings_and_window_update_round_trip() -> None:
    enc = HeaderBlockEncoder()
    settings = SettingsFrame((Setting(7, 65536), Setting(4, 100, flags=1)))
    tr(write_frame(settings, enc), settings)
    tr(write_frame(WindowUpdateFrame(3, 1000), enc), WindowUpdateFrame(3, 1000))


def test_syn_stream_round_trip_with_flags_and_priority() -> None:
    frame = SynStreamFrame(
        9, (("port", "80"), ("streamtype", "data")), priority=3, fin=True, unidirectional=True
    )
    raw = write_frame(frame, HeaderBlockEncoder())
    tr(raw, frame)


def test_repeated_names_merge_with_nul_and_split_back() -> None:
    block = spdy.encode_nv_block([("x", "a"), ("x", "b")])
    assert block == h("00000001 00000001") + b"x" + h("00000003") + b"a\x00b"
    assert spdy.decode_nv_block(block, stream_id=1) == (("x", "a"), ("x", "b"))


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stream_error"),
    [
        (h("00000000 00000001 00"), False),  # DATA on stream 0
        (h("00000001 02000000"), False),  # DATA with an unknown flag
        (h("80020006 00000004 00000001"), False),  # SPDY/2 control frame
        (h("80030006 00000005 0000000100"), False),  # PING of length 5
        (h("80030006 01000004 00000001"), False),  # PING with flags
        (h("80030007 00000004 00000001"), False),  # short GOAWAY
        (h("80030003 00000008 00000001 00000000"), False),  # RST status 0
        (h("80030009 00000004 00000001"), False),  # short WINDOW_UPDATE
        (h("80030004 0000000c 00000002 01000007 00000000"), False),  # SETTINGS count > length
        (h("80030001 00000004 00000001"), False),  # SYN_STREAM under 10 bytes
        (h("80030001 0000000c 00000001 00000000 0000 ffff"), False),  # block is not zlib
    ],
)
def test_malformed_frames_are_refused(raw: bytes, stream_error: bool) -> None:
    with pytest.raises(SpdyLocalProtocolError) as info:
        maybe_read_frame(bytearray(raw), HeaderBlockDecoder())
    assert info.value.is_stream_error is stream_error


def test_oversized_frame_is_refused_before_it_arrives() -> None:
    with pytest.raises(SpdyLocalProtocolError):
        maybe_read_frame(
            bytearray(h("00000001 00100000")), HeaderBlockDecoder(), max_frame_length=1000
        )


def _syn_with_block(block: bytes) -> bytes:
    z = zlib.compressobj(zdict=spdy.HEADER_DICTIONARY)
    comp = z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)
    payload = h("00000001 00000000 0000") + comp
    return h("80030001") + len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize(
    "block",
    [
        h("00000001 0000000a") + b"StreamType" + h("00000001") + b"x",  # uppercase name
        h("00000002 00000001") + b"a" + h("00000000") + h("00000001") + b"a" + h("00000000"),
        h("00000001 00000004") + b"host" + h("00000001") + b"x",  # hop-by-hop header
        h("00000001 00000000 00000000"),  # empty name
        h("00000002 00000001") + b"a",  # truncated
        h("00000000 ff"),  # trailing byte
    ],
)
def test_bad_header_blocks_are_stream_errors(block: bytes) -> None:
    with pytest.raises(SpdyLocalProtocolError) as info:
        maybe_read_frame(bytearray(_syn_with_block(block)), HeaderBlockDecoder())
    assert info.value.stream_id == 1
    assert info.value.status is RstStatus.PROTOCOL_ERROR


def test_header_bomb_is_refused() -> None:
    block = h("00000001 00000001") + b"a" + (1 << 20).to_bytes(4, "big") + b"\0" * (1 << 20)
    with pytest.raises(SpdyLocalProtocolError):
        maybe_read_frame(bytearray(_syn_with_block(block)), HeaderBlockDecoder(64 * 1024))


# --- the captured crictl (client-go) bytes ------------------------------------------


def _decoded(frame: Any) -> dict[str, Any]:
    """A capture's frame description in the shape of our frames."""
    return {"type": frame["type"], "stream_id": frame.get("stream_id")}


@pytest.mark.parametrize("name", SPDY_CAPTURES)
def test_captured_client_bytes_parse_whole_and_byte_by_byte(name: str) -> None:
    cap = load(name)
    data = cap.after_head("c2s")
    expected = cap.frames("c2s")

    def parse(chunks: list[bytes]) -> tuple[list[Any], bytes]:
        buf = bytearray()
        decoder = HeaderBlockDecoder()
        frames = []
        for chunk in chunks:
            buf += chunk
            while (frame := maybe_read_frame(buf, decoder)) is not None:
                frames.append(frame)
        return frames, bytes(buf)

    whole, rest = parse([data])
    assert parse([data[i : i + 1] for i in range(len(data))]) == (whole, rest)
    # Some captures end mid-frame: the client was cut off 2 bytes into its last frame.
    assert rest in (b"", b"\x80\x03")
    complete = [f for f in expected if f.get("raw_hex")]
    assert len(whole) == len(complete)
    for ours, theirs in zip(whole, complete, strict=True):
        assert type(ours).__name__.upper().replace("FRAME", "") == theirs["type"].replace("_", "")
        if "headers" in theirs:
            got = {k: [v for kk, v in ours.headers if kk == k] for k, _ in ours.headers}
            assert got == {k: v for k, v in theirs["headers"]}
        if "data_hex" in theirs:
            assert ours.data.hex() == theirs["data_hex"]
        assert write_frame(ours, HeaderBlockEncoder())  # and each serialises again


@pytest.mark.parametrize("name", SPDY_CAPTURES)
def test_captured_server_frames_decode_like_the_capture_says(name: str) -> None:
    cap = load(name)
    data = bytearray(cap.after_head("s2c"))
    decoder = HeaderBlockDecoder()
    frames = []
    while (frame := maybe_read_frame(data, decoder)) is not None:
        frames.append(frame)
    assert not data
    assert [type(f).__name__ for f in frames] == [
        {
            "SYN_REPLY": "SynReplyFrame",
            "DATA": "DataFrame",
            "RST_STREAM": "RstStreamFrame",
            "GOAWAY": "GoAwayFrame",
            "PING": "PingFrame",
        }[f["type"]]
        for f in cap.frames("s2c")
    ]


def test_captured_spdystream_packets_reassemble() -> None:
    """spdystream writes a frame in several syscalls; feed exactly those pieces."""
    cap = load("portforward_spdy")
    head = len(cap.request_head())
    packets = cap.packets("c2s")
    stream = b"".join(packets)[head:]
    buf = bytearray()
    decoder = HeaderBlockDecoder()
    frames = []
    for i in range(0, len(stream), 7):
        buf += stream[i : i + 7]
        while (frame := maybe_read_frame(buf, decoder)) is not None:
            frames.append(frame)
    assert [f.stream_id for f in frames if isinstance(f, SynStreamFrame)] == [1, 3, 5, 7]
    assert isinstance(frames[-1], GoAwayFrame)
