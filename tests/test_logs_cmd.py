"""Tests for ``iottymux logs``, run as a real subprocess on real files."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from iottymux.logformat import LineFramer, TimestampCache, format_timestamp

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000_000_000
OUT, ERR = b"stdout", b"stderr"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("NO_COLOR", None)


def logs_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "iottymux", "logs", *args]


def run_logs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        logs_argv(*args), capture_output=True, cwd=REPO, env=ENV, timeout=timeout, check=False
    )


class Runtime:
    """Writes a CRI log as the monitor does: a LineFramer per stream, one write per read."""

    def __init__(self, path: Path, max_line_size: int = 16 * 1024, t0: int = T0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.framers = {s: LineFramer(s, max_line_size) for s in (OUT, ERR)}
        self.t = t0

    def write(self, stream: bytes, data: bytes, t: int | None = None) -> None:
        self.t = self.t + 1000 if t is None else t
        out, _ = self.framers[stream].feed(data, format_timestamp(self.t))
        os.write(self.fd, out)

    def close(self) -> None:
        os.close(self.fd)


class Follower:
    """``iottymux logs -f`` in a subprocess; its output and stderr lines collected by threads."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            logs_argv("-f", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=ENV,
        )
        self.lines: list[bytes] = []
        self.errors: list[bytes] = []
        self.cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _pump(self, pipe: IO[bytes], into: list[bytes]) -> None:
        for line in pipe:
            with self.cond:
                into.append(line.rstrip(b"\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(
        self, pred: Callable[[list[bytes]], bool], timeout: float = 30, *, stderr: bool = False
    ) -> None:
        lines = self.errors if stderr else self.lines
        with self.cond:
            ok = self.cond.wait_for(lambda: pred(lines) or self.proc.poll() is not None, timeout)
            assert ok and pred(lines), (lines[-5:], self.proc.poll())

    def wait_line(self, line: bytes, timeout: float = 30) -> None:
        self.wait_for(lambda lines: line in lines[-50:], timeout)

    def wait_notice(self, text: str, timeout: float = 30) -> None:
        notice = b"iottymux logs: " + text.encode()
        self.wait_for(lambda lines: notice in lines, timeout, stderr=True)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, bytes]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for thread in self.threads:
            thread.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode, b"".join(line + b"\n" for line in self.errors)


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        if follower.proc.poll() is None:
            os.kill(follower.proc.pid, signal.SIGCONT)  # in case a test stopped it
            follower.proc.kill()
            follower.proc.wait()
        for thread in follower.threads:
            thread.join(10)
        for pipe in (follower.proc.stdout, follower.proc.stderr):
            if pipe is not None:
                pipe.close()


def kubelet_rotate(live: Path, stamp: int, max_files: int = 5) -> None:
    """One rotation the kubelet's way (container_log_manager.go), before the reopen."""
    directory = live.parent
    prefix = live.name + "."
    rotated = sorted(p for p in directory.iterdir() if p.name.startswith(prefix))
    for path in rotated:
        if path.name.endswith(".tmp") or Path(str(path) + ".gz").exists():
            path.unlink()
    rotated = sorted(p for p in directory.iterdir() if p.name.startswith(prefix))
    for path in rotated[: max(0, len(rotated) - (max_files - 2))]:
        path.unlink()
    for path in sorted(p for p in directory.iterdir() if p.name.startswith(prefix)):
        if path.suffix != ".gz":
            tmp = Path(str(path) + ".tmp")
            with open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
                dst.write(src.read())
            os.rename(tmp, str(path) + ".gz")
            path.unlink()
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(1_700_000_000 + stamp))
    os.rename(live, directory / (live.name + "." + name))


# ---------------------------------------------------------------------------
# Reading


def test_help_documents_targets_and_exit_codes() -> None:
    result = run_logs("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for needle in (
        "exit codes:",
        "  0  ",
        "  1  ",
        "  2  ",
        "  3  ",
        "NAMESPACE/POD",
        "--all-rotated",
    ):
        assert needle in text


def mixed_log(path: Path) -> bytes:
    """Blocks of plain lines (fast path) and interleaved partials (decoder path)."""
    rt = Runtime(path, max_line_size=32)
    rng = random.Random(3)
    for i in range(3000):
        if i % 500 < 20:  # 120 times: two lines, one of them in pieces around the other
            rt.write(OUT, b"long-%d-" % i + b"x" * rng.randint(30, 90))
            rt.write(ERR, b"err-%d\n" % i)
            rt.write(OUT, b"-end\n")
        else:
            data = b"line %d \xff\x00 %s\n" % (i, b"." * rng.randint(0, 60))
            rt.write(rng.choice((OUT, ERR)), data)
    rt.close()
    return path.read_bytes()


def test_fast_and_decoder_paths_agree(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    mixed_log(path)
    raw = run_logs(str(path))
    as_json = run_logs("--output", "json", str(path))
    assert raw.returncode == 0 and as_json.returncode == 0
    assert raw.stderr == b""
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(records) == 3120
    assert raw.stdout.count(b"\n") == 3120
    # JSON decodes content as UTF-8 with replacement; compare on that basis.
    raw_lines = [line.decode("utf-8", "replace") for line in raw.stdout.split(b"\n")[:-1]]
    assert raw_lines == [r["line"] for r in records]
    assert any(r["line"].startswith("long-") and r["line"].endswith("-end") for r in records)
    assert set(records[0]) == {"time", "stream", "namespace", "pod", "container", "line", "partial"}

    stamped = run_logs("--timestamps", "--stream", "stderr", str(path))
    lines = stamped.stdout.splitlines()
    assert lines and all(
        re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z .*", ln, re.S) for ln in lines
    )
    assert len(lines) == sum(r["stream"] == "stderr" for r in records)


def test_other_runtimes_timestamps_print_fixed_width(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(
        b"2024-01-02T05:04:05.5+02:00 stdout P con\n"
        b"2024-01-02T05:04:05.6+02:00 stdout F mon\n"
        b"2024-01-02T03:04:06Z stderr F containerd\n"
    )
    result = run_logs("--timestamps", str(path))
    assert result.stdout == (
        b"2024-01-02T03:04:05.600000000Z conmon\n2024-01-02T03:04:06.000000000Z containerd\n"
    )
    pieces = run_logs("--no-merge-partials", str(path))
    assert pieces.stdout == b"con\nmon\ncontainerd\n"


def test_limit_bytes_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path, max_line_size=8)
    for i in range(100):
        rt.write(OUT, b"%d-0123456789\n" % i)  # two or three pieces each
    rt.close()
    tail = run_logs("--tail", "3", str(path))
    assert tail.stdout == b"97-0123456789\n98-0123456789\n99-0123456789\n"
    limited = run_logs("--limit-bytes", "20", str(path))
    assert limited.returncode == 0 and limited.stdout == b"0-0123456789\n1-01234"


def test_malformed_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(
        b"2024-01-02T03:04:05.000000001Z stdout F a\n"
        b"2024-01-02T03:04:05.000000001Z stdout F\n"
        b"\x00\x00 broken\n"
        b"2024-01-02T03:04:05.000000002Z stdout F b\n"
    )
    result = run_logs(str(path))
    assert result.returncode == 0
    assert result.stdout == b"a\nb\n"
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"iottymux logs: {path}:2: ")
    assert errors[1].startswith(f"iottymux logs: {path}:3: ")


def test_malformed_line_number_in_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path, max_line_size=64)
    rt.write(OUT, b"".join(b"line %d\n" % i for i in range(30000)))
    rt.write(OUT, b"x" * 200 + b"\n")  # P pieces: that block is decoded, not fast-pathed
    rt.write(OUT, b"".join(b"more %d\n" % i for i in range(30000)))
    rt.close()
    lines = path.read_bytes().split(b"\n")
    lines[44444] = b"garbage in the middle"
    path.write_bytes(b"\n".join(lines))
    assert path.stat().st_size > 2 << 20
    result = run_logs(str(path))
    assert result.returncode == 0
    assert result.stderr.decode().startswith(f"iottymux logs: {path}:44445: unknown stream")
    out = result.stdout.split(b"\n")
    assert result.stdout.count(b"\n") == 60000  # 60001 lines written, one of them garbage
    assert out[30000] == b"x" * 200 and out[44443] == b"more %d" % (44444 - 30001)


def pod_layout(root: Path) -> Path:
    """/var/log/pods-like tree: one pod, two containers, interleaved in time."""
    pod = root / "default_web_0f1e2d3c"
    app = Runtime(pod / "app" / "0.log")
    side = Runtime(pod / "sidecar" / "0.log")
    for i in range(20):
        rt = app if i % 3 else side
        rt.write(OUT, b"msg %d\n" % i, t=T0 + i * 1000)
    app.close()
    side.close()
    return pod


def test_pod_dir_merges_containers_in_time_order(tmp_path: Path) -> None:
    pod = pod_layout(tmp_path)
    result = run_logs(str(pod))
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert lines == [f"[{'app' if i % 3 else 'sidecar'}] msg {i}" for i in range(20)]
    json_lines = [json.loads(x) for x in run_logs("--output", "json", str(pod)).stdout.splitlines()]
    assert {(r["namespace"], r["pod"]) for r in json_lines} == {("default", "web")}
    assert [r["container"] for r in json_lines][:3] == ["sidecar", "app", "app"]
    tail = run_logs("--tail", "2", "--no-prefix", str(pod))
    assert tail.stdout == b"msg 18\nmsg 19\n"


def test_namespace_pod_container_targets(tmp_path: Path) -> None:
    pod_layout(tmp_path)
    root = str(tmp_path)
    one = run_logs("--log-root", root, "default/web/sidecar")
    assert one.returncode == 0
    assert one.stdout.decode().splitlines() == [f"msg {i}" for i in range(0, 20, 3)]
    both = run_logs("--log-root", root, "default/web")
    assert both.stdout.count(b"\n") == 20 and b"[app] msg 1\n" in both.stdout
    missing = run_logs("--log-root", root, "default/nope")
    assert missing.returncode == 1 and b"no such file, directory or pod" in missing.stderr
    no_ctr = run_logs("--log-root", root, "default/web/db")
    assert no_ctr.returncode == 1 and b"no container 'db'" in no_ctr.stderr


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    missing = run_logs(str(tmp_path / "nope.log"))
    assert missing.returncode == 1 and b"no such file or directory" in missing.stderr
    assert run_logs("--since", "yesterday", str(tmp_path)).returncode == 2
    assert run_logs("--tail", "-1", str(tmp_path)).returncode == 2
    assert run_logs("--bogus").returncode == 2


def test_container_name_needs_the_daemon(tmp_path: Path) -> None:
    sock = tmp_path / "rktlet.sock"
    result = run_logs("--rktlet-socket", str(sock), "--log-root", str(tmp_path), "nginx")
    assert result.returncode == 3
    assert result.stderr.decode().strip() == f"iottymux logs: no rktlet daemon at {sock}"
    assert b"Traceback" not in result.stderr


def test_all_rotated_with_gzip(tmp_path: Path) -> None:
    ctr = tmp_path / "ns_pod_uid" / "app"
    live = ctr / "0.log"
    rt = Runtime(live)
    for r in range(4):
        rt.write(OUT, b"".join(b"%d\n" % (r * 10 + i) for i in range(10)))
        kubelet_rotate(live, r)
        new = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.close(rt.fd)
        rt.fd = new
    rt.write(OUT, b"40\n")
    rt.close()
    assert len(list(ctr.glob("*.gz"))) == 3
    every = run_logs("--all-rotated", str(ctr))
    assert every.stdout.split() == [b"%d" % i for i in range(41)]
    assert run_logs(str(ctr)).stdout == b"40\n"
    tail = run_logs("--all-rotated", "--tail", "15", str(ctr))
    assert tail.stdout.split() == [b"%d" % i for i in range(26, 41)]
    oldest = sorted(ctr.glob("*.gz"))[0]
    assert run_logs(str(oldest)).stdout.split() == [b"%d" % i for i in range(10)]
    # Following a file that can never grow shows it, then waits like any follow.
    follower = Follower(str(oldest))
    try:
        follower.wait_line(b"9")
        code, err = follower.stop()
    finally:
        if follower.proc.poll() is None:
            follower.proc.kill()
    assert code == 0 and err == b"" and follower.lines == [b"%d" % i for i in range(10)]


def test_colors_only_on_a_terminal(tmp_path: Path) -> None:
    pod = pod_layout(tmp_path)
    plain = run_logs(str(pod))
    assert b"\x1b[" not in plain.stdout
    for extra, colored in (([], True), (["--no-color"], False)):
        master, slave = os.openpty()
        proc = subprocess.Popen(
            logs_argv(*extra, str(pod)), stdout=slave, stderr=subprocess.PIPE, cwd=REPO, env=ENV
        )
        os.close(slave)
        try:
            out = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                out += chunk
            assert proc.wait(30) == 0
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        assert (b"\x1b[" in out) is colored
        assert b"msg 19" in out


def write_big(path: Path, size_mb: int, tail_part: bytes) -> None:
    framer = LineFramer(OUT)
    placeholder = format_timestamp(0)
    chunk, _ = framer.feed(
        b"".join(b"filler %06d %s\n" % (i, b"-" * 80) for i in range(600)), placeholder
    )
    with open(path, "wb", buffering=0) as f:
        batch = []
        for i in range(size_mb * (1 << 20) // len(chunk)):
            batch.append(chunk.replace(placeholder, format_timestamp(T0 + i * 10**6)))
            if len(batch) == 64:
                f.write(b"".join(batch))
                batch = []
        f.write(b"".join(batch) + tail_part)


def stats_of(stderr: bytes) -> dict[str, int]:
    match = re.search(
        rb"stats: bytes_read=(\d+) reads=(\d+) files_opened=(\d+) rchar=(\d+)", stderr
    )
    assert match, stderr
    return dict(
        zip(("bytes_read", "reads", "files", "rchar"), map(int, match.groups()), strict=True)
    )


def test_tail_and_since_on_hundreds_of_mb_read_a_few(tmp_path: Path) -> None:
    late = T0 + 10**15
    small = tmp_path / "small.log"
    rt = Runtime(small, max_line_size=16, t0=late)
    for i in range(200):
        rt.write(OUT if i % 4 else ERR, b"late line %d, long enough for pieces\n" % i)
    rt.close()
    big = tmp_path / "0.log"
    write_big(big, 400, small.read_bytes())
    assert big.stat().st_size > 400 * 10**6

    tail = run_logs("--tail", "100", "--debug-stats", str(big))
    assert tail.stdout.splitlines() == [
        b"late line %d, long enough for pieces" % i for i in range(100, 200)
    ]
    stats = stats_of(tail.stderr)
    assert stats["bytes_read"] < 1 << 20
    # rchar is every byte the process read, its own modules included.
    assert stats["rchar"] < 12 << 20

    since = format_timestamp(late).decode()
    since_run = run_logs("--since", since, "--debug-stats", str(big))
    assert since_run.stdout.count(b"\n") == 200
    stats = stats_of(since_run.stderr)
    assert stats["bytes_read"] < 2 << 20
    assert stats["rchar"] < 12 << 20


def test_closed_output_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    write_big(path, 20, b"")
    proc = subprocess.Popen(
        logs_argv(str(path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=ENV
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline().startswith(b"filler 000000")
        proc.stdout.close()
        assert proc.wait(60) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# ---------------------------------------------------------------------------
# Following


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_follow_ends_cleanly_on_signals(
    tmp_path: Path, followers: list[Follower], sig: signal.Signals
) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path)
    rt.write(OUT, b"first\n")
    follower = Follower(str(path))
    followers.append(follower)
    follower.wait_line(b"first")
    rt.write(OUT, b"second\n")
    follower.wait_line(b"second")
    rt.close()
    code, err = follower.stop(sig)
    assert code == 0
    assert err == b""


def test_follow_keeps_partials_per_stream_across_a_rotation(
    tmp_path: Path, followers: list[Follower]
) -> None:
    ctr = tmp_path / "ns_p_u" / "app"
    live = ctr / "0.log"
    rt = Runtime(live, max_line_size=8)
    rt.write(OUT, b"ready\n")
    follower = Follower(str(ctr))
    followers.append(follower)
    follower.wait_line(b"ready")
    rt.write(OUT, b"stdout-begins-")  # P "stdout-b" to the old file
    rt.write(ERR, b"stderr whole line\n")
    kubelet_rotate(live, 1)
    new = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    rt.write(ERR, b"err-late")  # P "err-late" to the old file, after the new one exists
    os.close(rt.fd)
    rt.fd = new
    rt.write(OUT, b"and-ends\n")
    rt.write(ERR, b"-done\n")
    follower.wait_line(b"err-late-done")
    rt.close()
    code, err = follower.stop()
    assert code == 0 and err == b""
    assert follower.lines == [
        b"ready",
        b"stderr whole line",
        b"stdout-begins-and-ends",
        b"err-late-done",
    ]


def test_follow_pod_dir_prefixes_containers(tmp_path: Path, followers: list[Follower]) -> None:
    pod = pod_layout(tmp_path)
    follower = Follower("--tail", "1", str(pod))
    followers.append(follower)
    follower.wait_line(b"[app] msg 19")
    app = Runtime(pod / "app" / "0.log", t0=T0 + 10**9)
    side = Runtime(pod / "sidecar" / "0.log", t0=T0 + 2 * 10**9)
    app.write(OUT, b"new app line\n")
    follower.wait_line(b"[app] new app line")
    side.write(ERR, b"new sidecar line\n")
    follower.wait_line(b"[sidecar] new sidecar line")
    app.close()
    side.close()
    code, err = follower.stop()
    assert code == 0 and err == b""
    assert follower.lines == [b"[app] msg 19", b"[app] new app line", b"[sidecar] new sidecar line"]


class App(threading.Thread):
    """An app writing numbered stdout and stderr lines through the real framer.

    Some lines are longer than the maximum line size and some are written in two
    parts, so P pieces land in one file and their F in the next.
    """

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.framers = {s: LineFramer(s, 48) for s in (OUT, ERR)}
        self.clock = TimestampCache()
        self.cond = threading.Condition()
        self.next = {OUT: 0, ERR: 0}
        self.carry = {OUT: b"", ERR: b""}
        self.batches = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.rng = random.Random(11)

    def batch(self) -> None:
        with self.cond:
            stream = OUT if self.rng.random() < 0.7 else ERR
            tag = b"o" if stream == OUT else b"e"
            first = self.next[stream]
            count = self.rng.randint(1, 12)
            self.next[stream] += count
            text = self.carry[stream] + b"".join(
                b"%s%d %s\n" % (tag, first + i, b"." * self.rng.choice((0, 5, 60, 130)))
                for i in range(count)
            )
            cut = len(text) - self.rng.randint(1, 70) if self.rng.random() < 0.3 else len(text)
            text, self.carry[stream] = text[:cut], text[cut:]
            out, _ = self.framers[stream].feed(text, self.clock.now())
            if out:
                os.write(self.fd, out)
            self.batches += 1
            self.cond.notify_all()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.batch()
                time.sleep(0.0005)  # an app's pace; nothing waits on this
        except BaseException as exc:
            self.error = exc

    def wait_batches(self, count: int) -> None:
        with self.cond:
            target = self.batches + count
            assert self.cond.wait_for(lambda: self.batches >= target, 30)

    def swap_fd(self, new_fd: int) -> int:
        with self.cond:
            old, self.fd = self.fd, new_fd
            return old

    def finish(self) -> dict[bytes, int]:
        self.done.set()
        if self.ident is not None:  # some tests drive batch() by hand instead
            self.join(30)
        with self.cond:
            for stream in (OUT, ERR):
                # A batch's text ends in a newline, so the carried rest of it does too.
                if self.carry[stream]:
                    out, _ = self.framers[stream].feed(self.carry[stream], self.clock.now())
                    os.write(self.fd, out)
            # Written last: once the follower prints it, it has printed everything.
            out, _ = self.framers[OUT].feed(b"fin\n", self.clock.now())
            os.write(self.fd, out)
            os.close(self.fd)
            return dict(self.next)


def check_numbers(lines: list[bytes], last: dict[bytes, int]) -> None:
    got: dict[bytes, list[int]] = {b"o": [], b"e": []}
    assert lines[-1] == b"fin"
    for line in lines[:-1]:
        number = line.split(b" ", 1)[0]
        got[number[:1]].append(int(number[1:]))
    assert got[b"o"] == list(range(last[OUT])), "stdout lost, repeated or reordered lines"
    assert got[b"e"] == list(range(last[ERR])), "stderr lost, repeated or reordered lines"


def test_follow_across_50_kubelet_rotations(tmp_path: Path, followers: list[Follower]) -> None:
    ctr = tmp_path / "default_app_1234" / "app"
    ctr.mkdir(parents=True)
    live = ctr / "0.log"
    app = App(live)
    app.batch()
    follower = Follower(str(ctr))
    followers.append(follower)
    follower.wait_for(lambda lines: len(lines) > 0)
    app.start()
    mark = 0
    try:
        for rotation in range(50):
            app.wait_batches(3)
            kubelet_rotate(live, rotation)
            new_fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            app.wait_batches(2)  # the old descriptor keeps taking writes until the reopen
            os.close(app.swap_fd(new_fd))
            if rotation % 2:
                # Let the follower lag at most two rotations (MaxFiles 5 keeps three).
                with app.cond:
                    stream = OUT if app.next[OUT] else ERR
                    tag = b"o" if stream == OUT else b"e"
                    want = b"%s%d " % (tag, app.next[stream] - 1)
                with follower.cond:
                    start = mark
                    mark = len(follower.lines)

                def printed(lines: list[bytes], want: bytes = want, start: int = start) -> bool:
                    return any(ln.startswith(want) for ln in lines[start:])

                follower.wait_for(printed)
    finally:
        last = app.finish()
    assert app.error is None
    assert len(list(ctr.glob("0.log.*.gz"))) == 3
    follower.wait_line(b"fin")
    code, err = follower.stop()
    assert code == 0 and err == b""
    check_numbers(follower.lines, last)
    assert last[OUT] > 500 and last[ERR] > 100


def test_follow_catches_up_through_gzipped_files_after_a_stall(
    tmp_path: Path, followers: list[Follower]
) -> None:
    ctr = tmp_path / "default_app_1234" / "app"
    ctr.mkdir(parents=True)
    live = ctr / "0.log"
    app = App(live)
    app.batch()
    follower = Follower(str(ctr))
    followers.append(follower)
    follower.wait_for(lambda lines: len(lines) > 0)
    os.kill(follower.proc.pid, signal.SIGSTOP)
    _, status = os.waitpid(follower.proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    try:
        for rotation in range(3):
            for _ in range(5):
                app.batch()
            kubelet_rotate(live, rotation)
            new_fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            app.batch()
            os.close(app.swap_fd(new_fd))
            app.batch()
        # The file the follower holds was compressed and deleted two rotations ago.
        assert sorted(p.name.endswith(".gz") for p in ctr.iterdir()) == [False, False, True, True]
    finally:
        os.kill(follower.proc.pid, signal.SIGCONT)
    last = app.finish()
    follower.wait_line(b"fin")
    code, err = follower.stop()
    assert code == 0 and err == b""
    check_numbers(follower.lines, last)


# ---------------------------------------------------------------------------
# A node: pods and containers under a log root, selected by pattern, followed as they come


def node_pod(root: Path, ns: str, pod: str, uid: str, *containers: str, t0: int = T0) -> Path:
    for i, container in enumerate(containers):
        rt = Runtime(root / f"{ns}_{pod}_{uid}" / container / "0.log", t0=t0 + i)
        rt.write(OUT, b"%s/%s/%s says hi\n" % (ns.encode(), pod.encode(), container.encode()))
        rt.close()
    return root / f"{ns}_{pod}_{uid}"


def sample_node(root: Path) -> None:
    node_pod(root, "default", "web-1", "u1", "app", "sidecar", t0=T0)
    node_pod(root, "default", "web-2", "u2", "app", "sidecar", t0=T0 + 10)
    node_pod(root, "default", "db", "u3", "postgres", t0=T0 + 20)
    node_pod(root, "prod", "web-1", "u4", "app", t0=T0 + 30)


def test_selection_by_pattern_namespace_and_container(tmp_path: Path) -> None:
    sample_node(tmp_path)
    root = ["--log-root", str(tmp_path)]
    deployment = run_logs(*root, "default/web-.*")
    assert deployment.returncode == 0, deployment.stderr
    assert deployment.stdout.decode().splitlines() == [
        "[web-1/app] default/web-1/app says hi",
        "[web-1/sidecar] default/web-1/sidecar says hi",
        "[web-2/app] default/web-2/app says hi",
        "[web-2/sidecar] default/web-2/sidecar says hi",
    ]
    apps = run_logs(*root, "-n", "default", "-n", "prod", "-c", "app|postgres")
    assert apps.stdout.decode().splitlines() == [
        "[default/web-1/app] default/web-1/app says hi",
        "[default/web-2/app] default/web-2/app says hi",
        "[default/db/postgres] default/db/postgres says hi",
        "[prod/web-1/app] prod/web-1/app says hi",
    ]
    no_sidecars = run_logs(*root, "-A", "--exclude-container", "side.*", "--no-prefix")
    assert no_sidecars.stdout.count(b"\n") == 4 and b"sidecar" not in no_sidecars.stdout
    bare = run_logs(*root, "-n", "prod", "web-.*")
    assert bare.stdout == b"[web-1/app] prod/web-1/app says hi\n"
    one = run_logs(*root, "default/web-2/sidecar")
    assert one.stdout == b"default/web-2/sidecar says hi\n"
    none = run_logs(*root, "default/api-.*")
    assert none.returncode == 1
    assert none.stderr.decode().strip() == (
        f"iottymux logs: default/api-.*: no such file, directory or pod under {tmp_path}"
    )
    nothing = run_logs(*root, "-n", "kube-system")
    assert nothing.returncode == 1 and b"nothing matches namespace kube-system" in nothing.stderr
    bad = run_logs(*root, "default/web(")
    assert bad.returncode == 2 and b"bad pod regular expression" in bad.stderr
    assert run_logs(*root).returncode == 2  # no target and no selection


def test_label_selector_needs_the_daemon(tmp_path: Path) -> None:
    sample_node(tmp_path)
    sock = tmp_path / "none.sock"
    result = run_logs("--log-root", str(tmp_path), "--rktlet-socket", str(sock), "-l", "app=web")
    assert result.returncode == 3
    assert result.stderr.decode() == (
        "iottymux logs: pod labels (-l) come from the rktlet daemon, and none answers at "
        f"{sock} (use --rktlet-socket)\n"
    )
    bad = run_logs("--log-root", str(tmp_path), "-l", "app in ()")
    assert bad.returncode == 2 and b"label selector" in bad.stderr


def test_line_filters_highlight_and_formats(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path)
    rt.write(OUT, b"GET /health 200\nGET /api 500 error\nPOST /api 201\n")
    rt.write(ERR, b"warning: slow\n")
    rt.close()
    only = run_logs("--include", "/api", "--exclude", "POST", str(path))
    assert only.stdout == b"GET /api 500 error\n"
    either = run_logs("--include", "error", "--include", "^warn", str(path))
    assert either.stdout == b"GET /api 500 error\nwarning: slow\n"
    lit = run_logs("--highlight", "50[0-9]", "--color", "always", str(path))
    assert b"GET /api \x1b[1;31m500\x1b[0m error\n" in lit.stdout
    plain = run_logs("--highlight", "500", str(path))  # not a terminal: no colour
    assert b"\x1b" not in plain.stdout
    no_color = subprocess.run(
        logs_argv("--highlight", "500", "--color", "auto", str(path)),
        capture_output=True,
        cwd=REPO,
        env={**ENV, "NO_COLOR": "1"},
        check=False,
    )
    assert b"\x1b" not in no_color.stdout
    templated = run_logs("--template", "{stream}|{line}", "--include", "slow|201", str(path))
    assert templated.stdout == b"stdout|POST /api 201\nstderr|warning: slow\n"
    as_json = run_logs("--output", "json", "--exclude", ".", str(path))
    assert as_json.returncode == 0 and as_json.stdout == b""
    assert run_logs("--output", "template", str(path)).returncode == 2
    bad = run_logs("--template", "{nope}", str(path))
    assert bad.returncode == 2 and b"unknown field {nope}" in bad.stderr
    assert run_logs("--include", "(", str(path)).returncode == 2


class Container(threading.Thread):
    """A container of a node: numbered lines, restarts as N.log -> N+1.log, via the framer."""

    def __init__(
        self,
        directory: Path,
        name: bytes,
        lines: int,
        restarts: int = 0,
        before_restart: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.tag = name
        self.lines = lines
        self.restarts = restarts
        self.before_restart = before_restart
        self.clock = TimestampCache()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            per_instance = self.lines // (self.restarts + 1)
            n = 0
            for instance in range(self.restarts + 1):
                if instance and self.before_restart is not None:
                    self.before_restart(b"%s %d " % (self.tag, n - 1))
                path = self.directory / f"{instance}.log"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                framer = LineFramer(OUT, 64)
                last = self.lines if instance == self.restarts else n + per_instance
                while n < last:
                    count = min(last - n, 7)
                    text = b"".join(
                        b"%s %d %s\n" % (self.tag, n + i, b"." * ((n + i) % 90))
                        for i in range(count)
                    )
                    n += count
                    out, _ = framer.feed(text, self.clock.now())
                    os.write(fd, out)
                    time.sleep(0.001)
                os.close(fd)
        except BaseException as exc:
            self.error = exc


def check_exactly_once(lines: list[bytes], names: list[bytes], count: int) -> None:
    got: dict[bytes, list[int]] = {name: [] for name in names}
    for line in lines:
        name, number, _ = line.split(b" ", 2)
        got[name].append(int(number))
    for name in names:
        assert got[name] == list(range(count)), f"{name!r}: lost, repeated or reordered lines"


def test_follow_picks_up_pods_and_containers_as_they_come(
    tmp_path: Path, followers: list[Follower]
) -> None:
    root = tmp_path / "pods"
    root.mkdir()
    follower = Follower("--log-root", str(root), "-A", "--no-prefix", "--merge-window", "20ms")
    followers.append(follower)
    follower.wait_notice("nothing matches every pod yet; waiting")
    containers: list[Container] = []
    names: list[bytes] = []

    def printed(start: bytes) -> None:
        seen = 0
        hit = False

        def found(lines: list[bytes]) -> bool:
            nonlocal seen, hit
            hit = hit or any(line.startswith(start) for line in lines[seen:])
            seen = len(lines)
            return hit

        follower.wait_for(found)

    for p in range(4):
        pod = root / f"ns{p % 2}_pod-{p}_uid{p}"
        pod.mkdir()
        for c in range(2):
            name = b"p%dc%d" % (p, c)
            names.append(name)
            # A pod's second container comes later, and restarts twice (once the
            # follower has shown its last line: a restart before the container was
            # found is history, not news).
            containers.append(
                Container(pod / f"ctr{c}", name, 300, restarts=2 * c, before_restart=printed)
            )
    for container in containers:
        container.start()
        time.sleep(0.02)
    for container in containers:
        container.join(60)
        assert container.error is None
    follower.wait_for(lambda lines: len(lines) >= 300 * len(names))
    # The kubelet removes a deleted pod's log directory.
    shutil.rmtree(root / "ns0_pod-0_uid0")
    follower.wait_notice("pod ns0/pod-0 removed")
    code, err = follower.stop()
    assert code == 0
    check_exactly_once(follower.lines, names, 300)
    notices = err.decode().splitlines()
    news = sorted(n for n in notices if "following new container" in n)
    assert news == sorted(
        f"iottymux logs: following new container ns{p % 2}/pod-{p}/ctr{c}"
        for p in range(4)
        for c in range(2)
    )
    restarts = [n for n in notices if "restarted" in n]
    assert sorted(restarts) == sorted(
        f"iottymux logs: ns{p % 2}/pod-{p}/ctr1 restarted ({i}.log)"
        for p in range(4)
        for i in (1, 2)
    )
    assert "iottymux logs: pod ns0/pod-0 removed" in notices
    assert len(notices) == 1 + len(news) + len(restarts) + 1


def test_a_pattern_that_matches_nothing_waits_when_following(
    tmp_path: Path, followers: list[Follower]
) -> None:
    sample_node(tmp_path)
    follower = Follower("--log-root", str(tmp_path), "default/api-.*", "-c", "app")
    followers.append(follower)
    follower.wait_notice("nothing matches default/api-.*; container app yet; waiting")
    assert follower.proc.poll() is None and follower.lines == []
    node_pod(tmp_path, "default", "api-7", "u9", "app", "sidecar")
    follower.wait_line(b"[api-7/app] default/api-7/app says hi")
    code, err = follower.stop()
    assert code == 0 and follower.lines == [b"[api-7/app] default/api-7/app says hi"]
    assert err.decode().splitlines() == [
        "iottymux logs: nothing matches default/api-.*; container app yet; waiting",
        "iottymux logs: following new container default/api-7/app",
    ]


def test_merge_window_orders_lines_across_containers(
    tmp_path: Path, followers: list[Follower]
) -> None:
    node_pod(tmp_path, "default", "a", "u1", "c")
    node_pod(tmp_path, "default", "b", "u2", "c")
    results = {}
    for window in ("2s", "0"):
        follower = Follower(
            "--log-root", str(tmp_path), "-n", "default", "--tail", "0", "--merge-window", window
        )
        followers.append(follower)
        late = T0 + 10**12 + (10**10 if window == "0" else 0)
        a = Runtime(tmp_path / "default_a_u1" / "c" / "0.log", t0=late)
        b = Runtime(tmp_path / "default_b_u2" / "c" / "0.log", t0=late)
        # Ready once it shows a line written after it started.
        shown = follower.lines

        def ready(shown: list[bytes] = shown) -> bool:
            return b"[a/c] ready" in shown

        while not ready():
            a.write(OUT, b"ready\n", t=late)
            with follower.cond:
                follower.cond.wait_for(ready, 0.3)
        start = len(follower.lines)
        a.write(OUT, b"stamped second, written first\n", t=late + 2000)
        if window == "0":
            follower.wait_line(b"[a/c] stamped second, written first")
        b.write(OUT, b"stamped first, written second\n", t=late + 1000)
        a.close()
        b.close()

        def both(lines: list[bytes], start: int = start) -> bool:
            return len(lines) >= start + 2

        follower.wait_for(both)
        follower.stop()
        results[window] = follower.lines[start:]
    # Held up to the window: the line stamped first comes first, though read last.
    assert results["2s"] == [
        b"[b/c] stamped first, written second",
        b"[a/c] stamped second, written first",
    ]
    # No window: lines come out as they are read.
    assert results["0"] == [
        b"[a/c] stamped second, written first",
        b"[b/c] stamped first, written second",
    ]


def open_log_files(pid: int, root: Path) -> int:
    """Descriptors of ``pid`` open on files under ``root`` (live, rotated or deleted)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(root)):
                count += 1
        except OSError:
            pass
    return count


def test_follow_many_containers_with_few_open_files(
    tmp_path: Path, followers: list[Follower]
) -> None:
    """40 containers, 5 files open at most: idle files are closed and reopened by position."""
    rng = random.Random(4)
    runtimes: list[Runtime] = []
    names: list[bytes] = []
    sent = {}
    for p in range(40):
        rt = Runtime(tmp_path / f"default_pod-{p}_u{p}" / "app" / "0.log")
        runtimes.append(rt)
        names.append(b"c%d" % p)
        sent[names[-1]] = 0
    follower = Follower(
        "--log-root", str(tmp_path), "-n", "default", "--no-prefix", "--max-open-files", "5"
    )
    followers.append(follower)
    time.sleep(0.5)
    peak = 0
    for round_ in range(30):
        for p in rng.sample(range(40), 8):
            name = names[p]
            rt = runtimes[p]
            lines = b"".join(b"%s %d x\n" % (name, sent[name] + i) for i in range(3))
            rt.write(OUT, lines)
            sent[name] += 3
            if round_ % 10 == 9 and p % 4 == 0:
                # A rotation while the follower may hold the file closed.
                kubelet_rotate(
                    rt_path := tmp_path / f"default_pod-{p}_u{p}" / "app" / "0.log", round_
                )
                new_fd = os.open(rt_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                os.close(rt.fd)
                rt.fd = new_fd
        time.sleep(0.03)
        peak = max(peak, open_log_files(follower.proc.pid, tmp_path))
    total = sum(sent.values())
    follower.wait_for(lambda lines: len(lines) >= total)
    peak = max(peak, open_log_files(follower.proc.pid, tmp_path))
    for rt in runtimes:
        rt.close()
    code, err = follower.stop()
    assert code == 0 and err == b""
    assert peak <= 5 + 1  # the cap, plus a file opened to read a new one's history
    got: dict[bytes, list[int]] = {name: [] for name in names}
    for line in follower.lines:
        name, number, _ = line.split(b" ", 2)
        got[name].append(int(number))
    assert got == {name: list(range(sent[name])) for name in names}


@pytest.mark.parametrize("crlf", [False, True])
def test_printed_bytes_are_the_apps_bytes(tmp_path: Path, crlf: bool) -> None:
    """Byte for byte what the app wrote on stdout: P/F joined, stderr's partials kept
    apart, empty lines, invalid UTF-8, CRLF from a pty, and a last line left unfinished
    at exit (the writer ends it with a ``P`` record)."""
    rng = random.Random(21 + crlf)
    path = tmp_path / "0.log"
    rt = Runtime(path, max_line_size=40)
    for framer in rt.framers.values():
        framer.crlf = crlf
    sent = b""
    for i in range(3000):
        stream = OUT if rng.random() < 0.7 else ERR
        pieces = [b"", b"\n", b"\r\n", b"\xff\xfe\xc3", b"x" * rng.randint(1, 120), b"line %d" % i]
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        rt.write(stream, data, t=T0 + i * 1000 + rng.choice((0, 1)))
        if stream == OUT:
            sent += data
    rt.write(OUT, b"the end, no newline")
    sent += b"the end, no newline"
    pending = rt.framers[OUT]._pending  # what the writer holds at the app's exit
    os.write(rt.fd, b"%s stdout P %s\n" % (format_timestamp(T0 + 10**10), pending))
    rt.close()
    expected = sent.replace(b"\r\n", b"\n") if crlf else sent
    for extra in ([], ["--output", "raw"]):
        result = run_logs("--stream", "stdout", *extra, str(path))
        assert result.returncode == 0 and result.stderr == b""
        assert result.stdout == expected


def test_a_pipe_on_stdout_is_widened_and_a_file_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    mixed_log(path)
    read_end, write_end = os.pipe()
    try:
        before = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
        proc = subprocess.Popen(logs_argv(str(path)), stdout=write_end)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            output = reader.read()
            # The size belongs to the pipe, so its read end sees what the command asked.
            widened = fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ)
        assert proc.wait(timeout=60) == 0
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert before < 1 << 20 and widened == 1 << 20
    assert output == run_logs(str(path)).stdout and output.count(b"\n") == 3120
    # A regular file is not a pipe: nothing to widen, nothing refused.
    with open(tmp_path / "out", "wb") as out:
        assert subprocess.run(logs_argv(str(path)), stdout=out).returncode == 0
    assert (tmp_path / "out").read_bytes() == output
