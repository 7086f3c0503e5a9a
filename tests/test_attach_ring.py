"""The attach output ring: the ring itself (a real memfd), its frames, and attachers of it.

The end-to-end half runs a real monitor and real apps; ring attachers are real
``AttachClient``s or raw sockets that receive the ring descriptor themselves.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from iottymux import attachproto as proto
from iottymux.attachclient import AttachClient, endpoint_path
from iottymux.outring import DATA_START, OutputRing, RingLapped, RingReader
from tests.conftest import MonitorHandle

PY = sys.executable


def frame(kind: int, payload: bytes) -> tuple[bytes, bytes]:
    return proto.header(kind, len(payload)), payload


# -- the ring -----------------------------------------------------------------------------


def test_frames_written_across_the_end_of_the_ring_read_back_whole() -> None:
    ring = OutputRing(64)
    reader = RingReader(ring.reader_fd())
    try:
        sent = b""
        for i in range(20):  # 20 frames of 14 bytes: the ring wraps four times
            parts = frame(proto.STDOUT, b"line %04d\n" % i)
            start = ring.write_end
            end = ring.append(parts)
            assert end == start + 5 + 10
            assert reader.read(start, end) == b"".join(parts)
            sent += b"".join(parts)
        # The last 64 bytes are still there; everything older is not.
        assert reader.read(ring.write_end - 60, ring.write_end) == sent[-60:]
        with pytest.raises(RingLapped):
            reader.read(0, 15)
    finally:
        reader.close()
        ring.close()


def test_a_reader_lapped_while_it_reads_finds_out() -> None:
    ring = OutputRing(32)
    reader = RingReader(ring.reader_fd())
    try:
        ring.append((b"a" * 20,))
        buffer = bytearray(32)
        assert reader.read_into(buffer, 0, 20) == 20 and buffer[:20] == b"a" * 20
        ring.append((b"b" * 20,))  # overwrites [0, 8) of the first write
        with pytest.raises(RingLapped):
            reader.read_into(buffer, 0, 20)
        assert reader.read(20, 40) == b"b" * 20
        assert reader.valid_from() == 8
    finally:
        reader.close()
        ring.close()


def test_the_reader_gets_a_read_only_descriptor() -> None:
    ring = OutputRing(4096)
    fd = ring.reader_fd()
    try:
        with pytest.raises(OSError):
            os.pwrite(fd, b"tamper", DATA_START)
    finally:
        os.close(fd)
        ring.close()


def test_an_idle_ring_gives_its_pages_back_and_keeps_its_offsets() -> None:
    ring = OutputRing(1 << 20)
    reader = RingReader(ring.reader_fd())
    try:
        for _ in range(8):
            ring.append((b"x" * (128 << 10),))
        assert os.fstat(ring.fd).st_blocks * 512 >= 1 << 20
        ring.idle()
        assert os.fstat(ring.fd).st_blocks * 512 <= 2 * DATA_START
        with pytest.raises(RingLapped):
            reader.read(ring.write_end - 10, ring.write_end)
        end = ring.append((b"after",))
        assert end == 8 * (128 << 10) + 5
        assert reader.read(end - 5, end) == b"after"
    finally:
        reader.close()
        ring.close()


def test_something_else_is_not_taken_for_a_ring(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"\0" * 8192)
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(ValueError, match="not an iottymux attach ring"):
        RingReader(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the failed constructor


# -- frames --------------------------------------------------------------------------------


def test_ring_and_ack_frames_carry_a_big_endian_offset() -> None:
    assert proto.encode_offset(proto.RING, 258) == bytes([21, 0, 0, 0, 8]) + bytes(
        [0, 0, 0, 0, 0, 0, 1, 2]
    )
    assert proto.encode_offset(proto.ACK, 1) == bytes([6, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1])
    assert proto.decode_offset(bytes([0, 0, 0, 1, 0, 0, 0, 0])) == 1 << 32
    with pytest.raises(proto.AttachProtocolError, match="8 bytes"):
        proto.decode_offset(b"\0" * 7)
    decoder = proto.FrameDecoder(proto.CLIENT_KINDS)
    ack = proto.encode_offset(proto.ACK, 7)
    assert [decoder.receive_data(ack[i : i + 1]) for i in range(len(ack))][-1] == [
        (proto.ACK, bytes(7 * [0]) + b"\x07")
    ]


def test_hello_asks_for_the_ring_only_when_told() -> None:
    assert b'"ring"' not in proto.encode_hello()
    kind, payload = proto.FrameDecoder(proto.CLIENT_KINDS).receive_data(
        proto.encode_hello(ring=True)
    )[0]
    assert kind == proto.HELLO and proto.decode_json(payload)["ring"] is True


# -- attachers of the ring ------------------------------------------------------------------


def add_app(monitor: MonitorHandle, tmp_path: Path, app: str, code: str, **fields: object) -> Path:
    log = tmp_path / f"{app}.log"
    monitor.request(
        "add",
        app=app,
        command=[PY, "-c", textwrap.dedent(code)],
        stdout="stream",
        stderr="stream",
        log_path=str(log),
        **fields,
    )
    return log


def test_ring_and_socket_attachers_get_the_same_bytes_through_a_wrapping_ring(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    # 16 MB in 64 paced writes: the ring (about 11 MiB) wraps; the readers keep up.
    code = """
        import os, time
        block = b"".join(b"%07d\\n" % i for i in range(31250))
        for _ in range(64):
            view = memoryview(block)
            while view:
                view = view[os.write(1, view):]
            time.sleep(0.01)
        os.write(2, b"done\\n")
    """
    add_app(monitor, tmp_path, "wrap", code)
    path = endpoint_path(str(monitor.run_dir), "wrap")
    clients = [AttachClient(path, stdin=False, ring=True) for _ in range(3)]
    clients.append(AttachClient(path, stdin=False))
    assert [c.ring is not None for c in clients] == [True, True, True, False]
    assert clients[0].ring is not None and clients[0].ring.capacity < 16_000_000
    results: list[tuple[bytes, bytes, dict[str, Any] | None, str | None]]
    results = [(b"", b"", None, None)] * 4

    def collect(i: int) -> None:
        results[i] = clients[i].collect()

    threads = [threading.Thread(target=collect, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    status = monitor.request("status", app="wrap")["apps"][0]["attach"]
    assert status["ring_attachers"] == 3 and status["ring_sessions"] == 3
    monitor.request("start", app="wrap")
    for t in threads:
        t.join(60)
    expected = b"".join(b"%07d\n" % i for i in range(31250)) * 64
    for out, err, exit_body, error in results:
        assert error is None
        assert out == expected and err == b"done\n"
        assert exit_body is not None and exit_body["exit_code"] == 0
    for c in clients:
        c.close()
    final = monitor.request("status", app="wrap")["apps"][0]["attach"]
    assert final["ring_attachers"] == 0 and final["overflow_disconnects"] == 0


def test_a_frozen_ring_attacher_costs_the_app_and_the_log_nothing(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    total = 100 * 1000 * 1000
    code = f"""
        import os
        block = (b"z" * 99 + b"\\n") * 10000
        for _ in range({total} // len(block)):
            view = memoryview(block)
            while view:
                view = view[os.write(1, view):]
    """
    log = add_app(monitor, tmp_path, "flood", code)
    # Greets, takes the ring, then never reads the socket or the ring.
    frozen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    frozen.connect(endpoint_path(str(monitor.run_dir), "flood"))
    frozen.sendall(proto.encode_hello(ring=True))
    try:
        data, fds, _flags, _addr = socket.recv_fds(frozen, 4096, 1)
        assert len(fds) == 1
        ring = RingReader(fds[0])
        decoder = proto.FrameDecoder(proto.SERVER_KINDS)
        frames = decoder.receive_data(data)
        assert frames[0][0] == proto.READY
        assert proto.decode_json(frames[0][1])["ring"]["size"] == ring.capacity
        monitor.request("start", app="flood")
        status = monitor.request("wait", app="flood")
        assert status["exit_code"] == 0
        assert status["log"]["bytes"] == total and status["log"]["dropped_lines"] == 0
        assert status["attach"]["overflow_disconnects"] == 1
        assert status["attach"]["ring_attachers"] == 0
        assert log.stat().st_size == (total // 100) * (
            100 + len(b"2026-11-28T14:21:30.000000001Z stdout F ")
        )
        # Reading at last: one RING (never a second unanswered one), then the reason.
        frozen.settimeout(20)
        while chunk := frozen.recv(1 << 16):
            frames += decoder.receive_data(chunk)
        kinds = [k for k, _ in frames]
        assert kinds == [proto.READY, proto.RING, proto.ERROR]
        assert frames[-1][1].startswith(b"overflow:")
        # Its ring pages went back when it was let go.
        assert os.fstat(ring.fd).st_blocks * 512 <= 2 * DATA_START
        ring.close()
    finally:
        frozen.close()


@pytest.mark.parametrize(
    ("ring", "ack", "reason"),
    [
        (True, 1 << 40, b"protocol error: ACK of offset 1099511627776 is outside [0, 0]"),
        (False, 0, b"protocol error: ACK from an attacher that reads no ring"),
    ],
)
def test_a_bad_ack_is_a_protocol_error(
    monitor: MonitorHandle, tmp_path: Path, ring: bool, ack: int, reason: bytes
) -> None:
    add_app(monitor, tmp_path, "idle", "import time; time.sleep(600)")
    with AttachClient(endpoint_path(str(monitor.run_dir), "idle"), ring=ring) as client:
        client.sock.sendall(proto.encode_offset(proto.ACK, ack))
        _, _, exit_body, error = client.collect()
    assert exit_body is None
    assert error is not None and error.encode() == reason


def test_an_app_that_already_exited_offers_no_ring(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = add_app(monitor, tmp_path, "gone", "print('bye')")
    monitor.request("start", app="gone")
    monitor.request("wait", app="gone")
    with AttachClient(endpoint_path(str(monitor.run_dir), "gone"), ring=True) as client:
        assert client.ring is None and "ring" not in client.ready
        _, _, exit_body, _ = client.collect()
    assert exit_body is not None and exit_body["exit_code"] == 0
    assert log.read_bytes().endswith(b" stdout F bye\n")


def test_a_reader_behind_reads_on_to_the_write_end_and_may_ack_it(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    code = """
        import os, sys
        for i in range(3):
            os.write(1, b"chunk %d\\n" % i)
            sys.stdin.readline()
    """
    monitor.request(
        "add",
        app="steps",
        command=[PY, "-c", textwrap.dedent(code)],
        stdin="stream",
        stdout="stream",
        stderr="null",
        log_path=str(tmp_path / "steps.log"),
    )
    with AttachClient(endpoint_path(str(monitor.run_dir), "steps"), ring=True) as client:
        assert client.ring is not None
        monitor.request("start", app="steps")
        decoder = proto.FrameDecoder(proto.SERVER_KINDS)
        data = client.sock.recv(4096)
        (kind, payload), *_ = decoder.receive_data(data)
        assert kind == proto.RING
        told = proto.decode_offset(payload)
        # Without answering that RING, let the app write twice more.
        for _ in range(2):
            client.send_stdin(b"\n")
            while client.ring.write_end() <= told:
                threading.Event().wait(0.01)
            told = client.ring.write_end()
        end = client.ring.available(0, 1)
        assert end == told == 3 * (proto.HEADER_SIZE + len(b"chunk 0\n"))
        assert client.ring.read(0, end).count(b"chunk ") == 3
        client.sock.sendall(proto.encode_offset(proto.ACK, end))
        client.send_stdin(b"\n")
        status = monitor.request("wait", app="steps")
        # The ACK past the last RING was taken: no protocol error, just the end.
        frames = []
        while chunk := client.sock.recv(4096):
            frames += decoder.receive_data(chunk)
    assert status["exit_code"] == 0
    assert status["attach"]["overflow_disconnects"] == 0
    kinds = [k for k, _ in frames]
    assert proto.ERROR not in kinds and kinds[-1] == proto.EXIT
    assert set(kinds[:-1]) <= {proto.RING}
