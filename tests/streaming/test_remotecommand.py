"""The Kubernetes sub-protocols as pure functions, with byte vectors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming import remotecommand as rc
from streaming.remotecommand import TerminalSize, Version

from .captures import load

SUCCESS = b'{"metadata":{},"status":"Success"}'
EXIT7 = (
    b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: '
    b'error executing command [sh -c exit 7], exit code 7","reason":"NonZeroExitCode",'
    b'"details":{"causes":[{"reason":"ExitCode","message":"7"}]}}'
)


def test_negotiation_prefers_the_client_order() -> None:
    offered = rc.split_protocol_values(
        ["v5.channel.k8s.io", "v4.channel.k8s.io, v3.channel.k8s.io", " channel.k8s.io "]
    )
    assert offered == [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "channel.k8s.io",
    ]
    assert rc.negotiate(offered, rc.SPDY_REMOTECOMMAND_PROTOCOLS) == rc.V5
    assert rc.negotiate(["v3.channel.k8s.io", "v4.channel.k8s.io"], (rc.V4, rc.V3)) == rc.V3
    assert rc.negotiate(["v9.channel.k8s.io"], rc.SPDY_REMOTECOMMAND_PROTOCOLS) is None
    assert rc.split_protocol_values([" , ,"]) == []


def test_versions() -> None:
    assert rc.version_of("channel.k8s.io") is Version.V1
    assert rc.version_of("") is Version.V1
    assert not Version.V2.has_resize and Version.V3.has_resize
    assert not Version.V3.json_status and Version.V4.json_status
    assert Version.V5.has_close_channel and not Version.V4.has_close_channel
    assert rc.is_base64("v4.base64.channel.k8s.io") and not rc.is_base64(rc.V4)


def test_status_json_matches_containerd_captures() -> None:
    assert rc.error_stream_payload(Version.V4, 0) == SUCCESS
    assert rc.error_stream_payload(Version.V4, 7, cmd=["sh", "-c", "exit 7"]) == EXIT7
    cap = load("exec_spdy_exit7")
    sent = [f for f in cap.frames("s2c") if f["type"] == "DATA" and f.get("data_hex")]
    assert bytes.fromhex(sent[-1]["data_hex"]) == EXIT7


def test_status_before_v4_is_text_on_failure_only() -> None:
    assert rc.error_stream_payload(Version.V2, 0) == b""
    assert rc.error_stream_payload(Version.V3, 3, cmd=["false"]).startswith(
        b"command terminated with non-zero exit code: "
    )


def test_internal_error_status() -> None:
    doc = json.loads(rc.error_stream_payload(Version.V4, None, error="boom"))
    assert doc["status"] == "Failure" and doc["reason"] == "InternalError" and doc["code"] == 500
    assert doc["message"] == "Internal error occurred: boom"


@pytest.mark.parametrize("code", [1, 3, 127, 255])
def test_exit_status_round_trip(code: int) -> None:
    status = rc.parse_status(rc.error_stream_payload(Version.V4, code, cmd=["x"]))
    assert status.exit_code == code and not status.success


def test_exit_code_out_of_range_refused() -> None:
    with pytest.raises(ValueError):
        rc.status_exit_code(256, "")
    with pytest.raises(ValueError):
        rc.parse_status(b'{"status":"Failure","reason":"NonZeroExitCode"}')
    assert rc.parse_status(b"") == rc.Status(True, 0)
    assert rc.parse_status(b'{"status":"Success"}').success


def test_channel_messages_binary_and_base64() -> None:
    assert rc.encode_channel_message(1, b"\n", base64_mode=True) == b"1Cg=="
    assert rc.encode_channel_message(1, b"hello", base64_mode=False) == b"\x01hello"
    assert rc.decode_channel_message(b"1aGVsbG8=", base64_mode=True) == (1, b"hello")
    assert rc.decode_channel_message(b"\x00abc", base64_mode=False) == (0, b"abc")
    assert rc.decode_channel_message(b"", base64_mode=False) is None
    with pytest.raises(rc.ChannelProtocolError):
        rc.decode_channel_message(b"x!!", base64_mode=True)
    with pytest.raises(rc.ChannelProtocolError):
        rc.decode_channel_message(b"1@@@", base64_mode=True)


def test_v5_close_signal() -> None:
    assert rc.encode_close_signal(0) == b"\xff\x00"
    assert rc.decode_close_signal(b"\x00") == 0
    with pytest.raises(rc.ChannelProtocolError):
        rc.decode_close_signal(b"\x00\x01")


def test_resize_json_as_go_writes_it() -> None:
    assert rc.encode_resize(TerminalSize(80, 24)) == b'{"Width":80,"Height":24}\n'
    decoder = rc.ResizeDecoder()
    data = b'{"Width":80,"Height":24}\n{"Width":100,"Height":40}\n'
    assert decoder.feed(data) == [TerminalSize(80, 24), TerminalSize(100, 40)]


def test_resize_split_anywhere_and_case_insensitive() -> None:
    data = b'{"width":80,"HEIGHT":24}\n{"Width":100,"Height":40}'
    for cut in range(len(data) + 1):
        decoder = rc.ResizeDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert got == [TerminalSize(80, 24), TerminalSize(100, 40)], cut
        assert not decoder.failed


def test_resize_zero_size_skipped_garbage_stops_for_good() -> None:
    decoder = rc.ResizeDecoder()
    assert decoder.feed(b'{"Width":0,"Height":24}') == []
    assert decoder.feed(b'{"Width":}') == []
    assert decoder.failed
    assert decoder.feed(b'{"Width":1,"Height":1}') == []
    for bad in (b"[1]", b'{"Width":70000,"Height":1}', b'{"Width":"8","Height":1}', b"\xff\xfe"):
        d = rc.ResizeDecoder()
        assert d.feed(bad) == [] and d.failed, bad


@given(st.binary(max_size=200))
def test_resize_decoder_never_raises(data: bytes) -> None:
    rc.ResizeDecoder().feed(data)


def test_port_forward_headers() -> None:
    parsed = rc.parse_port_forward_headers(
        [("port", "80"), ("requestid", "0"), ("streamtype", "error")]
    )
    assert parsed == rc.PortForwardStreamHeaders(rc.StreamType.ERROR, 80, "0")
    assert rc.port_forward_pair_key(parsed, 1) == "0"
    old = rc.parse_port_forward_headers([("streamtype", "data"), ("port", "8080")])
    assert rc.port_forward_pair_key(old, 3) == "1"
    for bad in (
        [("streamtype", "data")],
        [("streamtype", "data"), ("port", "0")],
        [("streamtype", "data"), ("port", "65536")],
        [("streamtype", "data"), ("port", "-1")],
        [("streamtype", "stdin"), ("port", "80")],
    ):
        with pytest.raises(rc.PortForwardHeaderError):
            rc.parse_port_forward_headers(bad)


def test_port_prefix_is_uint16_little_endian() -> None:
    assert rc.encode_port_prefix(80) == b"\x50\x00"
    assert rc.decode_port_prefix(b"\x90\x1f") == 8080
    cap = load("portforward_wsv4")
    first = [bytes.fromhex(f["payload_hex"]) for f in cap.frames("s2c")[:2]]
    assert first == [b"\x00" + rc.encode_port_prefix(80), b"\x01" + rc.encode_port_prefix(80)]
