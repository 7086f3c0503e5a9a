"""Attach endpoints end to end: real monitor, real apps, real sockets and ptys."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from iottymux import attachproto as proto
from iottymux.attachclient import AttachClient, endpoint_path, read_endpoints
from iottymux.logformat import parse_record
from tests.conftest import MonitorHandle

PY = sys.executable


#: How attachers of the test being run get their output (see the ``transport`` fixture).
_RING = {"on": False}


@pytest.fixture(autouse=True, params=["socket", "ring"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test here runs twice: output by socket, and through the output ring."""
    _RING["on"] = request.param == "ring"
    return str(request.param)


def attach(monitor: MonitorHandle, app: str, **options: Any) -> AttachClient:
    options.setdefault("ring", _RING["on"])
    client = AttachClient(endpoint_path(str(monitor.run_dir), app), **options)
    # A ring is offered to a ring attacher of a live app (an exited one has no output to come).
    if options["ring"] and client.ready["state"] != "exited":
        assert client.ring is not None
    return client


def add_started(
    monitor: MonitorHandle, tmp_path: Path, app: str, command: list[str], **fields: Any
) -> None:
    fields.setdefault("stdin", "stream")
    fields.setdefault("stdout", "stream")
    fields.setdefault("stderr", "stream")
    fields.setdefault("log_path", str(tmp_path / f"{app}.log"))
    monitor.request("add", app=app, command=command, **fields)
    monitor.request("start", app=app)


def read_until(client: AttachClient, needle: bytes, kind: int = proto.STDOUT) -> bytes:
    """Output of ``kind`` until it contains ``needle`` (the socket timeout bounds it)."""
    seen = b""
    while needle not in seen:
        got, payload = client.next_frame()
        if got == kind:
            seen += payload
        elif got in (proto.EXIT, proto.ERROR):
            raise AssertionError(f"frame {got} {payload!r} before {needle!r}; saw {seen!r}")
    return seen


def test_endpoint_files_are_private_and_listed(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"])
    app_dir = monitor.run_dir / "apps" / "cat"
    assert stat.S_IMODE(os.stat(app_dir / "attach.sock").st_mode) == 0o600
    endpoints = read_endpoints(str(app_dir))
    assert endpoints == {
        "version": 1,
        "app": "cat",
        "attach": str(app_dir / "attach.sock"),
        "tty": False,
        "stdin": True,
    }


def test_three_attachers_see_the_same_output(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"])
    clients = [attach(monitor, "cat") for _ in range(3)]
    try:
        for c in clients:
            c.ready.pop("ring", None)
            assert c.ready == {"tty": False, "stdin": True, "state": "running"}
        clients[1].send_stdin(b"hello from the second\n")
        for c in clients:
            assert read_until(c, b"\n") == b"hello from the second\n"
        clients[2].send_stdin(b"and from the third\n")
        for c in clients:
            assert read_until(c, b"\n") == b"and from the third\n"
    finally:
        for c in clients:
            c.close()
    log = (tmp_path / "cat.log").read_bytes().split(b"\n")[:-1]
    assert [parse_record(line).content for line in log] == [
        b"hello from the second",
        b"and from the third",
    ]


def test_stdin_messages_from_many_attachers_never_interleave(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    # The reader shares the GIL with three senders: give it room to lag.
    add_started(
        monitor,
        tmp_path,
        "cat",
        ["cat"],
        stdout="stream",
        stderr="null",
        attach_queue_size=64 << 20,
    )
    reader = attach(monitor, "cat", stdin=False)
    writers = [attach(monitor, "cat", stdout=False, stderr=False) for _ in range(3)]
    # Messages far above PIPE_BUF, so a careless writer would interleave them.
    messages = {i: bytes([65 + i]) * 200_000 + b"\n" for i in range(3)}

    def send(i: int) -> None:
        for _ in range(5):
            writers[i].send_stdin(messages[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    received = b""
    try:
        while received.count(b"\n") < 15:
            kind, payload = reader.next_frame()
            assert kind == proto.STDOUT, payload
            received += payload
    finally:
        for t in threads:
            t.join()
        for c in [reader, *writers]:
            c.close()
    lines = received.split(b"\n")[:-1]
    assert sorted(lines) == sorted(m[:-1] for m in messages.values() for _ in range(5))


def test_stdin_once_closes_stdin_so_cat_exits(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"], stdin_once=True)
    with attach(monitor, "cat") as client:
        client.send_stdin(b"only once\n")
        client.close_stdin()
        out, err, exit_body, error = client.collect()
    assert out == b"only once\n" and err == b"" and error is None
    assert exit_body == {"exit_code": 0, "signal": None, "reason": "Completed"}
    assert monitor.request("wait", app="cat")["exit_code"] == 0


def test_stdin_once_also_ends_when_the_attacher_disconnects(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"], stdin_once=True)
    watcher = attach(monitor, "cat", stdin=False)
    with attach(monitor, "cat") as client:
        client.send_stdin(b"bye\n")
    out, _, exit_body, _ = watcher.collect()
    watcher.close()
    assert out == b"bye\n" and exit_body is not None and exit_body["exit_code"] == 0


def test_without_stdin_once_a_second_attacher_can_still_type(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"])
    with attach(monitor, "cat") as first:
        first.send_stdin(b"first\n")
        assert read_until(first, b"\n") == b"first\n"
        first.close_stdin()
    with attach(monitor, "cat") as second:
        assert second.ready["stdin"] is True
        second.send_stdin(b"second\n")
        assert read_until(second, b"\n") == b"second\n"
    assert monitor.request("status", app="cat")["apps"][0]["state"] == "running"
    monitor.request("signal", app="cat", signal="TERM")
    monitor.request("wait", app="cat")


def test_resize_reaches_a_tty_app(monitor: MonitorHandle, tmp_path: Path) -> None:
    app = textwrap.dedent("""
        import os, signal, sys
        def show(*_):
            cols, rows = os.get_terminal_size(0)
            sys.stdout.write(f"size {rows} {cols}\\n"); sys.stdout.flush()
        signal.signal(signal.SIGWINCH, show)
        show()
        sys.stdin.readline()
    """)
    add_started(monitor, tmp_path, "tty", [PY, "-c", app], stdin="tty", stdout="tty", stderr="tty")
    with attach(monitor, "tty", replay=True) as client:
        assert client.ready["tty"] is True
        read_until(client, b"size 0 0")
        client.resize(33, 101)
        read_until(client, b"size 33 101")
        client.resize(20, 60)
        read_until(client, b"size 20 60")
        client.send_stdin(b"\r")
        _, _, exit_body, _ = client.collect()
    assert exit_body is not None and exit_body["exit_code"] == 0


def test_stty_size_on_a_tty_shell(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(
        monitor,
        tmp_path,
        "sh",
        ["sh", "-i"],
        stdin="tty",
        stdout="tty",
        stderr="tty",
        env=["PS1=prompt$ ", "PATH=/usr/bin:/bin"],
    )
    with attach(monitor, "sh", replay=True) as client:
        read_until(client, b"prompt$ ")
        client.resize(45, 132)
        client.send_stdin(b"stty size\r")
        read_until(client, b"45 132")
        client.send_stdin(b"exit 4\r")
        _, _, exit_body, _ = client.collect()
    assert exit_body is not None and exit_body["exit_code"] == 4


def test_frozen_attacher_is_disconnected_and_nothing_else_slows(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    total = 200 * 1000 * 1000
    writer = textwrap.dedent(f"""
        import os
        block = (b"z" * 99 + b"\\n") * 10000
        for _ in range({total} // len(block)):
            view = memoryview(block)
            while view:
                view = view[os.write(1, view):]
    """)
    log = tmp_path / "flood.log"
    monitor.request(
        "add",
        app="flood",
        command=[PY, "-c", writer],
        stdout="stream",
        stderr="stream",
        log_path=str(log),
    )
    # Connected and greeted, then never reads.
    frozen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    frozen.connect(endpoint_path(str(monitor.run_dir), "flood"))
    frozen.sendall(proto.encode_hello())
    monitor.request("start", app="flood")
    status = monitor.request("wait", app="flood")
    assert status["exit_code"] == 0
    assert status["log"]["bytes"] == total and status["log"]["dropped_lines"] == 0
    assert status["attach"]["overflow_disconnects"] == 1
    assert log.stat().st_size == (total // 100) * (
        100 + len(b"2026-11-28T14:21:30.000000001Z stdout F ")
    )
    # The frozen client, reading at last, finds output, then the reason, then EOF.
    frozen.settimeout(20)
    decoder = proto.FrameDecoder(proto.SERVER_KINDS)
    frames = []
    while data := frozen.recv(1 << 20):
        frames += decoder.receive_data(data)
    frozen.close()
    kinds = [k for k, _ in frames]
    assert kinds[0] == proto.READY
    assert kinds[-1] == proto.ERROR
    assert frames[-1][1].startswith(b"overflow:")
    assert set(kinds[1:-1]) <= {proto.STDOUT}
    assert decoder.buffered == 0


def test_replay_shows_output_from_before_the_attach(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "early", ["sh", "-c", "echo printed early; cat"], ring_size=4096)
    # Whatever cat echoes arrives after the early line, so it is a marker.
    with attach(monitor, "early", replay=True) as replayed:
        assert read_until(replayed, b"printed early\n").startswith(b"printed early\n")
    with attach(monitor, "early") as plain:
        plain.send_stdin(b"marker\n")
        assert read_until(plain, b"marker\n") == b"marker\n"


def test_ring_keeps_only_the_most_recent_bytes(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "ring", ["sh", "-c", "seq 1 2000; cat"], ring_size=100)
    with attach(monitor, "ring") as first:
        first.send_stdin(b"sync\n")
        read_until(first, b"sync\n")
    with attach(monitor, "ring", replay=True) as client:
        client.send_stdin(b"end\n")
        seen = read_until(client, b"end\n")
    # 100 bytes of the tail of seq's output, then the sync/end echoes.
    assert seen.endswith(b"1999\n2000\nsync\nend\n")
    assert len(seen) == 100 + len(b"end\n")


def test_attach_after_exit_answers_the_exit_code(monitor: MonitorHandle, tmp_path: Path) -> None:
    monitor.run_app(
        "done",
        ["sh", "-c", "echo last words; exit 3"],
        stdout="stream",
        log_path=str(tmp_path / "done.log"),
    )
    with attach(monitor, "done", replay=True) as client:
        assert client.ready["state"] == "exited"
        out, _, exit_body, error = client.collect()
    assert out == b"last words\n" and error is None
    assert exit_body == {"exit_code": 3, "signal": None, "reason": "Error"}
    with attach(monitor, "done") as plain:
        out, _, exit_body, _ = plain.collect()
    assert out == b"" and exit_body is not None and exit_body["exit_code"] == 3


def test_log_only_streams_are_not_attachable(monitor: MonitorHandle, tmp_path: Path) -> None:
    monitor.run_app(
        "quiet",
        ["sh", "-c", "echo to the log; echo to attach >&2"],
        stdout="log",
        stderr="stream",
        log_path=str(tmp_path / "q.log"),
    )
    with attach(monitor, "quiet", replay=True) as client:
        out, err, _, _ = client.collect()
    assert (out, err) == (b"", b"to attach\n")


@pytest.mark.parametrize(
    "garbage",
    [
        proto.encode(proto.STDIN, b"before hello"),
        proto.encode(proto.READY, b"{}"),
        b"\x63\x00\x00\x00\x00",
        proto.header(proto.HELLO, proto.MAX_PAYLOAD + 1),
    ],
)
def test_protocol_errors_get_a_reason_and_a_close(
    monitor: MonitorHandle, tmp_path: Path, garbage: bytes
) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(endpoint_path(str(monitor.run_dir), "cat"))
        sock.sendall(garbage)
        decoder = proto.FrameDecoder(proto.SERVER_KINDS)
        frames = []
        while data := sock.recv(65536):
            frames += decoder.receive_data(data)
    assert [k for k, _ in frames] == [proto.ERROR]
    assert frames[0][1].startswith(b"protocol error:")
    with attach(monitor, "cat") as client:  # the endpoint is unharmed
        client.send_stdin(b"ok\n")
        assert read_until(client, b"\n") == b"ok\n"


def test_stdin_back_pressure_instead_of_loss(monitor: MonitorHandle, tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # The app reads nothing until released, then counts every byte of stdin.
    app = f"read x < {fifo}; wc -c"
    add_started(monitor, tmp_path, "slow", ["sh", "-c", app], stdin_once=True)
    payload = b"s" * (5 << 20)
    with attach(monitor, "slow") as client:

        def send_all() -> None:
            client.send_stdin(payload)
            client.close_stdin()

        sender = threading.Thread(target=send_all)
        sender.start()
        with open(fifo, "w") as release:
            release.write("go\n")
        out = read_until(client, b"\n")
        sender.join()
    assert out.strip() == str(len(payload)).encode()


def test_status_counts_attach_sessions(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"])
    with attach(monitor, "cat"), attach(monitor, "cat") as second:
        second.send_stdin(b"x\n")
        read_until(second, b"\n")
        counters = monitor.request("status", app="cat")["apps"][0]["attach"]
        assert counters["attachers"] == 2 and counters["sessions"] == 2
        assert counters["stdin_bytes"] == 2
    assert json.dumps(counters)


def test_detach_keeps_a_stdin_once_app_reading(monitor: MonitorHandle, tmp_path: Path) -> None:
    add_started(monitor, tmp_path, "cat", ["cat"], stdin_once=True)
    with attach(monitor, "cat") as first:
        first.send_stdin(b"before detach\n")
        assert read_until(first, b"\n") == b"before detach\n"
        first.sock.sendall(proto.encode(proto.DETACH))
    with attach(monitor, "cat") as second:
        assert second.ready["stdin"] is True
        second.send_stdin(b"after detach\n")
        assert read_until(second, b"\n") == b"after detach\n"
        second.close_stdin()
        _, _, exit_body, _ = second.collect()
    assert exit_body is not None and exit_body["exit_code"] == 0
