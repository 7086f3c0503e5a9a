"""The monitor's CRI log writer, end to end: real monitor, real apps, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iottymux.control import ControlError
from iottymux.logformat import TIMESTAMP_WIDTH, LogRecord, parse_record
from tests.conftest import MonitorHandle

PY = sys.executable


def records(path: Path) -> list[LogRecord]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the log ends in the middle of a record"
    return [parse_record(line) for line in data.split(b"\n")[:-1]]


def py_app(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def joined(recs: list[LogRecord], stream: bytes) -> list[bytes]:
    """Logical lines of one stream, P pieces glued to their F."""
    lines, piece = [], b""
    for r in recs:
        if r.stream != stream:
            continue
        piece += r.content
        if not r.partial:
            lines.append(piece)
            piece = b""
    assert piece == b""
    return lines


def test_log_file_exists_from_add_with_nested_dirs(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = tmp_path / "pods" / "ns_pod_uid" / "ctr" / "0.log"
    monitor.request("add", app="silent", command=["true"], log_path=str(log))
    assert log.exists()
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    status = monitor.request("start", app="silent")
    assert status["pid"] > 0
    final = monitor.request("wait", app="silent")
    assert final["exit_code"] == 0 and final["reason"] == "Completed"
    assert log.read_bytes() == b""


def test_exact_format_for_kubelet_sized_lines(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    sizes = [16383, 16384, 16385, 1 << 20]
    app = py_app(f"""
        import os
        for n, size in enumerate({sizes}):
            line = bytes([97 + n]) * size + b"\\n"
            view = memoryview(line)
            while view:
                view = view[os.write(1, view):]
    """)
    monitor.run_app("sizes", app, log_path=str(log))
    recs = records(log)
    raw = log.read_bytes().split(b"\n")[:-1]
    for line in raw:
        assert line[TIMESTAMP_WIDTH - 1 : TIMESTAMP_WIDTH + 8] == b"Z stdout "
        assert len(line) <= TIMESTAMP_WIDTH + len(b" stdout F ") + 16384
    tags = [(r.partial, len(r.content)) for r in recs]
    assert tags[:5] == [(False, 16383), (False, 16384), (True, 16384), (False, 1), (True, 16384)]
    # 1 MiB = 64 pieces of 16 KiB: 63 P and the final F.
    assert tags[4:] == [(True, 16384)] * 63 + [(False, 16384)]
    assert joined(recs, b"stdout") == [bytes([97 + n]) * s for n, s in enumerate(sizes)]


def test_line_written_in_many_small_writes_is_one_record(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "0.log"
    app = py_app("""
        import os
        for i in range(3000):
            os.write(1, b"%d" % (i % 10))
        os.write(1, b"\\n")
    """)
    monitor.run_app("dribble", app, log_path=str(log))
    recs = records(log)
    assert [(r.partial, r.content) for r in recs] == [
        (False, b"".join(b"%d" % (i % 10) for i in range(3000)))
    ]


def test_interleaved_stdout_and_stderr_keep_their_own_lines(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "0.log"
    app = py_app("""
        import os
        for i in range(200):
            os.write(1, b"out-%d-" % i)
            os.write(2, b"err-%d-" % i)
            os.write(1, b"end\\n")
            os.write(2, b"end\\n")
    """)
    monitor.run_app("mixed", app, log_path=str(log))
    recs = records(log)
    assert joined(recs, b"stdout") == [b"out-%d-end" % i for i in range(200)]
    assert joined(recs, b"stderr") == [b"err-%d-end" % i for i in range(200)]
    assert all(not r.partial for r in recs)


def test_invalid_utf8_nul_and_empty_lines_pass_through(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "0.log"
    payload = b"\xff\xfe\x00bin\x00ary\n\n\ncaf\xc3\xa9 \xe2\x82\n\t tab \r\n"
    app = py_app(f"import os; os.write(1, {payload!r})")
    monitor.run_app("bytes", app, log_path=str(log))
    assert [r.content for r in records(log)] == payload.split(b"\n")[:-1]
    assert b"stdout F \n" in log.read_bytes()


def test_unfinished_last_line_is_a_p_and_reads_back_exactly(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "0.log"
    monitor.run_app("nonl", ["printf", "first\\nno newline"], log_path=str(log))
    # P: the app wrote no newline after these bytes (as containerd and conmon write it).
    assert [(r.partial, r.content) for r in records(log)] == [
        (False, b"first"),
        (True, b"no newline"),
    ]
    # So `iottymux logs` (not following) gives back exactly what the app wrote.
    out = subprocess.run(
        [PY, "-m", "iottymux", "logs", str(log)],
        capture_output=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    assert out.stdout == b"first\nno newline"


def test_tty_output_is_stdout_with_crlf_normalised(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    status = monitor.run_app(
        "tty",
        ["sh", "-c", "echo one; echo two >&2; printf '\\n'; tty"],
        stdin="tty",
        stdout="tty",
        stderr="tty",
        log_path=str(log),
    )
    assert status["exit_code"] == 0
    recs = records(log)
    assert [r.stream for r in recs] == [b"stdout"] * 4
    assert [r.content for r in recs][:3] == [b"one", b"two", b""]
    assert recs[3].content.startswith(b"/dev/pts/")
    assert b"\r" not in log.read_bytes()


def test_exit_code_and_signal_are_recorded(monitor: MonitorHandle, tmp_path: Path) -> None:
    exited = monitor.run_app("seven", ["sh", "-c", "exit 7"], log_path=str(tmp_path / "a.log"))
    assert (exited["exit_code"], exited["signal"], exited["reason"]) == (7, None, "Error")
    assert exited["finished_at"] >= exited["started_at"] >= exited["created_at"] > 0
    killed = monitor.run_app(
        "term", ["sh", "-c", "kill -TERM $$"], log_path=str(tmp_path / "b.log")
    )
    assert (killed["exit_code"], killed["signal"], killed["reason"]) == (143, 15, "Signaled")
    from iottymux.state import read_state

    saved = read_state(str(monitor.run_dir / "state.json"))
    assert saved["apps"]["seven"]["exit_code"] == 7
    assert saved["apps"]["term"]["signal"] == 15
    assert saved["apps"]["term"]["finished_at"] == killed["finished_at"]


def test_signal_op_reaches_the_app(monitor: MonitorHandle, tmp_path: Path) -> None:
    monitor.request("add", app="sleeper", command=["sleep", "600"], log_path=str(tmp_path / "s"))
    monitor.request("start", app="sleeper")
    monitor.request("signal", app="sleeper", signal="KILL")
    assert monitor.request("wait", app="sleeper")["signal"] == 9


def test_reopen_100_times_while_app_writes_a_million_lines(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "ctr" / "0.log"
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # Each byte on the fifo releases 10^4 numbered lines, written in 4093-byte
    # pieces so that lines are cut across writes; a reopen then races them.
    app = py_app(f"""
        import os
        fd = os.open({str(fifo)!r}, os.O_RDONLY)
        n = 0
        while os.read(fd, 1):
            chunk = b"".join(b"%d\\n" % i for i in range(n, n + 10000))
            n += 10000
            for start in range(0, len(chunk), 4093):
                piece = memoryview(chunk)[start:start + 4093]
                while piece:
                    piece = piece[os.write(1, piece):]
    """)
    monitor.request("add", app="numbers", command=app, log_path=str(log))
    monitor.request("start", app="numbers")
    go = os.open(fifo, os.O_WRONLY)
    try:
        for round_ in range(100):
            os.write(go, b"x")
            os.rename(log, f"{log}.{round_:03d}")
            reply = monitor.request("reopen", app="numbers")
            assert reply["log_path"] == str(log)
            assert log.exists(), "reopen answered before the new file existed"
    finally:
        os.close(go)
    assert monitor.request("wait", app="numbers")["exit_code"] == 0
    files = [Path(f"{log}.{r:03d}") for r in range(100)] + [log]
    numbers: list[int] = []
    for path in files:
        recs = records(path)
        assert all(not r.partial for r in recs), f"a line was split in {path}"
        numbers.extend(int(r.content) for r in recs)
    assert numbers == list(range(1_000_000))


def test_reopen_refused_for_an_app_that_is_not_running(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "0.log"
    monitor.request("add", app="idle", command=["true"], log_path=str(log))
    os.rename(log, tmp_path / "rotated")
    with pytest.raises(ControlError) as created:
        monitor.request("reopen", app="idle")
    assert created.value.code == "FailedPrecondition"
    assert not log.exists()
    monitor.request("start", app="idle")
    monitor.request("wait", app="idle")
    with pytest.raises(ControlError) as exited:
        monitor.request("reopen", app="idle")
    assert exited.value.code == "FailedPrecondition"
    assert not log.exists()
    with pytest.raises(ControlError) as missing:
        monitor.request("reopen", app="ghost")
    assert missing.value.code == "NotFound"


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 4 MiB tmpfs of the test's own, unmounted even if the test fails."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_filesystem_drops_and_recovers_without_blocking_the_app(
    monitor: MonitorHandle, tmp_path: Path, small_fs: Path
) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (2 << 20))
    log = small_fs / "ctr" / "0.log"
    fifo = tmp_path / "phase2"
    os.mkfifo(fifo)
    # Phase 1 writes ~6 MB into a file system with ~2 MB free; the app only
    # reaches the fifo if the monitor kept draining its pipe meanwhile.
    app = py_app(f"""
        import os
        line = b"x" * 99 + b"\\n"
        for i in range(60000):
            os.write(1, b"%06d" % i + line[6:]) if i % 100 == 0 else None
            os.write(1, line) if False else None
        block = b"".join(b"%06d" % i + line[6:] for i in range(60000))
        view = memoryview(block)
        while view:
            view = view[os.write(1, view[:65536]):]
        fd = os.open({str(fifo)!r}, os.O_RDONLY)
        os.read(fd, 1)
        for i in range(1000):
            os.write(1, b"after-%d\\n" % i)
    """)
    monitor.request("add", app="flood", command=app, log_path=str(log))
    monitor.request("start", app="flood")
    go = os.open(fifo, os.O_WRONLY)  # returns once phase 1 is fully written
    try:
        expected_bytes = 60000 * 100
        status = wait_for_status(monitor, "flood", lambda s: s["log"]["bytes"] >= expected_bytes)
        log_stats = status["log"]
        assert log_stats["dropped_lines"] > 0
        assert log_stats["dropped_bytes"] > 0
        assert log_stats["write_errors"] > 0 and log_stats["drop_episodes"] >= 1
        # The error is cleared once a write succeeds again, and one can before the
        # filler goes: cutting a half-written batch back out frees room for a small
        # last batch. So the error is ENOSPC, or gone with the episode it belonged to.
        if log_stats["dropping"]:
            assert log_stats["last_error"].startswith("ENOSPC"), log_stats
        else:
            assert log_stats["last_error"] == "", log_stats
        assert status["state"] == "running"
        written = records(log)  # every record in the file is whole
        assert 0 < len(written) < 60000
        assert log_stats["lines"] == len(written)
        dropped_before = log_stats["dropped_lines"]
        filler.unlink()
        os.write(go, b"x")
    finally:
        os.close(go)
    final = monitor.request("wait", app="flood")
    assert final["exit_code"] == 0
    after = [r.content for r in records(log) if r.content.startswith(b"after-")]
    assert after == [b"after-%d" % i for i in range(1000)]
    assert final["log"]["dropped_lines"] == dropped_before


def wait_for_status(monitor: MonitorHandle, app: str, predicate, timeout: float = 30.0):
    """Poll the monitor's status; no event exists for 'the monitor has read N bytes'."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        status = monitor.request("status", app=app)["apps"][0]
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached; last status {status}")
        time.sleep(0.02)
