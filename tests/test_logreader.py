"""Tests for the log reader (iottymux.logreader and the modules it reads with): real
files written by the real framer, and generated ones."""

from __future__ import annotations

import gzip
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iottymux import logfiles, logfollow, logreader, logsegments, logtime
from iottymux.logfiles import MalformedLine, ReadStats
from iottymux.logfollow import FollowGroup
from iottymux.logformat import (
    DEFAULT_MAX_LINE_SIZE,
    LineFramer,
    LogRecord,
    format_timestamp,
    parse_timestamp,
)
from iottymux.loglines import LogLine, PartialMerger
from iottymux.logreader import ReadOptions, SourceReader, merge_lines, read_lines, read_log_file
from iottymux.logrotation import RotationTracker
from iottymux.logsegments import LogSource, Segment, list_segments
from iottymux.logtime import parse_time_arg

T0 = 1_700_000_000_000_000_000
OUT, ERR = b"stdout", b"stderr"


class Runtime:
    """Writes a CRI log the way the monitor does: one LineFramer per stream."""

    def __init__(
        self, path: Path, max_line_size: int = DEFAULT_MAX_LINE_SIZE, *, crlf: bool = False
    ):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.framers = {s: LineFramer(s, max_line_size, crlf=crlf) for s in (OUT, ERR)}
        self.t = T0

    def write(self, stream: bytes, data: bytes, step: int = 1000) -> None:
        self.t += step
        out, _ = self.framers[stream].feed(data, format_timestamp(self.t))
        if out:
            os.write(self.fd, out)

    def flush(self, stream: bytes) -> None:
        self.t += 1000
        out, _ = self.framers[stream].flush(format_timestamp(self.t))
        os.write(self.fd, out)

    def close(self) -> None:
        os.close(self.fd)


Ref = tuple[int, bytes, bytes, bool]


def reference(raw: bytes) -> list[Ref]:
    """An independent, obviously-correct decoder: (time, stream, content, complete)."""
    pending: dict[bytes, tuple[int, list[bytes]]] = {}
    out: list[Ref] = []
    lines = raw.split(b"\n")
    torn = lines.pop()  # an unterminated last record is still a record
    if torn:
        lines.append(torn)
    for line in lines:
        parts = line.split(b" ", 3)
        if len(parts) != 4 or parts[1] not in (OUT, ERR):
            continue
        tag = parts[2].split(b":")[0]
        if tag not in (b"P", b"F"):
            continue
        ns = parse_timestamp(parts[0])
        if tag == b"P":
            pending.setdefault(parts[1], (ns, []))[1].append(parts[3])
            pending[parts[1]] = (ns, pending[parts[1]][1])
            continue
        pieces = pending.pop(parts[1], (0, []))[1]
        out.append((ns, parts[1], b"".join(pieces) + parts[3], True))
    rest = [(ns, s, b"".join(p), False) for s, (ns, p) in pending.items()]
    return out + sorted(rest)


def as_ref(lines: list[LogLine]) -> list[Ref]:
    return [(line.time_ns, line.stream, line.content, line.complete) for line in lines]


def no_issues(issue: MalformedLine) -> None:
    pytest.fail(f"unexpected: {issue}")


def source_for(path: Path) -> LogSource:
    return LogSource.for_file(str(path))


# ---------------------------------------------------------------------------
# Round trip with the real writer, and the format cases


WRITER_CASES = {
    "lines reassembled across reads": [(OUT, b"hel"), (OUT, b"lo wor"), (OUT, b"ld\n")],
    "line longer than max -> P...F": [(OUT, b"x" * 50 + b"\n")],
    "exactly max": [(OUT, b"y" * 16 + b"\n")],
    "max plus one": [(OUT, b"y" * 17 + b"\n")],
    "empty lines": [(OUT, b"\n\n\n")],
    "no trailing newline, flushed at exit": [(ERR, b"tail without newline")],
    "invalid utf-8, NUL and lone CR": [(OUT, b"\xff\xfe\x00bin\rary\n")],
    "interleaved partials per stream": [
        (OUT, b"a" * 40),
        (ERR, b"e" * 20 + b"\n"),
        (OUT, b"tail\n"),
        (ERR, b"second\n"),
    ],
    "many lines in one read": [(OUT, b"".join(b"%d\n" % i for i in range(500)))],
}


@pytest.mark.parametrize("case", sorted(WRITER_CASES))
def test_round_trip_with_real_writer(tmp_path: Path, case: str) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path, max_line_size=16)
    sent = {OUT: b"", ERR: b""}
    for stream, data in WRITER_CASES[case]:
        rt.write(stream, data)
        sent[stream] += data
    for stream in (OUT, ERR):
        if rt.framers[stream].pending:
            rt.flush(stream)
    rt.close()
    lines = read_log_file(str(path), on_error=no_issues)
    assert as_ref(lines) == reference(path.read_bytes())
    for stream in (OUT, ERR):
        got = b"".join(ln.content + b"\n" for ln in lines if ln.stream == stream)
        expected = (
            sent[stream]
            if sent[stream].endswith(b"\n") or not sent[stream]
            else sent[stream] + b"\n"
        )
        assert got == expected


def test_round_trip_pty_crlf(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path, crlf=True)
    rt.write(OUT, b"one\r")
    rt.write(OUT, b"\ntwo\r\nthree\rx\r\n")
    rt.close()
    assert [ln.content for ln in read_log_file(str(path))] == [b"one", b"two", b"three\rx"]


FOREIGN = {
    # containerd: trailing zeros trimmed, no fraction at all at .000000000
    "containerd trimmed timestamps": (
        b"2024-01-02T03:04:05.5Z stdout F half\n2024-01-02T03:04:06Z stdout F whole\n",
        [(b"stdout", b"half", True), (b"stdout", b"whole", True)],
    ),
    # conmon: local time with an offset, a P per read chunk, CR kept
    "conmon offsets, P per chunk, CR kept": (
        b"2024-01-02T05:04:05.000000001+02:00 stdout P abc\n"
        b"2024-01-02T05:04:05.000000002+02:00 stdout F def\r\n",
        [(b"stdout", b"abcdef\r", True)],
    ),
    "extra tags are ignored": (
        b"2024-01-02T03:04:05.1Z stderr F:x:y z\n",
        [(b"stderr", b"z", True)],
    ),
    "empty content keeps its space": (
        b"2024-01-02T03:04:05.1Z stdout F \n",
        [(b"stdout", b"", True)],
    ),
    "dangling P at exit (containerd, conmon)": (
        b"2024-01-02T03:04:05.1Z stdout P never ended\n",
        [(b"stdout", b"never ended", False)],
    ),
    "content may contain tag-like text": (
        b"2024-01-02T03:04:05.1Z stdout F x stdout P y\n",
        [(b"stdout", b"x stdout P y", True)],
    ),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_other_runtimes_formats(tmp_path: Path, case: str) -> None:
    raw, expected = FOREIGN[case]
    path = tmp_path / "0.log"
    path.write_bytes(raw)
    lines = read_log_file(str(path), on_error=no_issues)
    assert [(ln.stream, ln.content, ln.complete) for ln in lines] == expected
    assert as_ref(lines) == reference(raw)


def test_offsets_are_normalised_for_timestamps() -> None:
    assert (
        logtime.fixed_timestamp(b"2024-01-02T05:04:05.5+02:00") == b"2024-01-02T03:04:05.500000000Z"
    )
    assert len(logtime.fixed_timestamp(b"2024-01-02T03:04:06Z")) == 30


def test_malformed_lines_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    good = b"2024-01-02T03:04:05.000000001Z stdout F ok\n"
    path.write_bytes(
        good
        + b"2024-01-02T03:04:05.000000001Z stdout F\n"  # no space after the tag
        + good
        + b"not a record at all\n"
        + b"2024-01-02T03:04:05.000000001Z stdfoo F x\n"
        + b"2024-01-02T03:04:05.000000001Z stdout Q x\n"
        + good
    )
    issues: list[MalformedLine] = []
    lines = read_log_file(str(path), on_error=issues.append)
    assert [ln.content for ln in lines] == [b"ok"] * 3
    assert [issue.lineno for issue in issues] == [2, 4, 5, 6]
    assert all(issue.path == str(path) for issue in issues)
    assert "log tag is not found" in issues[0].reason


def test_malformed_line_number_is_found_when_reading_from_mid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logfiles, "BACKWARD_BLOCK", 128)
    monkeypatch.setattr(logreader, "BACKWARD_BLOCK", 128)
    path = tmp_path / "0.log"
    rt = Runtime(path)
    for i in range(300):
        rt.write(OUT, b"line %d\n" % i)
    rt.close()
    with open(path, "ab") as f:
        f.write(b"garbage\n")
        f.write(b"2024-01-02T03:04:05.000000001Z stdout F last\n")
    issues: list[MalformedLine] = []
    lines = list(read_lines(source_for(path), ReadOptions(tail=2), on_error=issues.append))
    assert [ln.content for ln in lines] == [b"line 299", b"last"]
    assert [(i.path, i.lineno) for i in issues] == [(str(path), 301)]


def test_partial_merger_keeps_streams_apart() -> None:
    merger = PartialMerger()
    ts = format_timestamp(T0)
    assert merger.feed(LogRecord(ts, OUT, True, b"out-a ")) is None
    line = merger.feed(LogRecord(ts, ERR, False, b"err"))
    assert line is not None and (line.stream, line.content) == (ERR, b"err")
    line = merger.feed(LogRecord(ts, OUT, False, b"out-b"))
    assert line is not None and (line.stream, line.content) == (OUT, b"out-a out-b")
    assert not merger.pending


def test_partial_merger_caps_a_line_that_never_ends() -> None:
    merger = PartialMerger(max_pending=100)
    ts = format_timestamp(T0)
    emitted = [merger.feed(LogRecord(ts, OUT, True, b"x" * 40)) for _ in range(3)]
    assert emitted[:2] == [None, None]
    assert emitted[2] is not None and not emitted[2].complete and len(emitted[2].content) == 120


# ---------------------------------------------------------------------------
# tail / since / until against the reference, over many boundaries


def random_log(path: Path, records: int, seed: int, dangling: bool = True) -> bytes:
    rng = random.Random(seed)
    rt = Runtime(path, max_line_size=12)
    for _ in range(records):
        stream = rng.choice((OUT, ERR))
        parts = []
        for _ in range(rng.randint(1, 3)):
            parts.append(bytes(rng.choice(b"abcdefgh") for _ in range(rng.randint(0, 40))))
        data = b"\n".join(parts)
        if rng.random() < 0.7:
            data += b"\n"
        rt.write(stream, data, step=rng.choice((0, 1, 1000, 7000)))
    for stream in (OUT, ERR):
        if rt.framers[stream].pending:
            rt.write(stream, b"\n")
    if dangling:
        # A container that dies mid-line leaves P pieces and no F.
        rt.write(ERR, b"z" * 30)
    rt.close()
    return path.read_bytes()


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny blocks make every line cross block edges in files of a few kilobytes.
    # Each module that reads a size binds its own name for it.
    for module in (logfiles, logreader):
        monkeypatch.setattr(module, "BACKWARD_BLOCK", 61)
    for module in (logfiles, logfollow):
        monkeypatch.setattr(module, "FORWARD_BLOCK", 97)
    monkeypatch.setattr(logtime, "_BISECT_LINEAR", 200)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tail_counts_logical_lines(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "0.log"
    raw = random_log(path, 400, seed)
    expected = reference(raw)
    assert not expected[-1][3] and raw.count(b" P ") > 50  # the cases that matter are there
    for n in [0, 1, 2, 3, 5, 17, 100, len(expected) - 1, len(expected), len(expected) + 5]:
        got = as_ref(list(read_lines(source_for(path), ReadOptions(tail=n))))
        assert got == expected[-n:] if n else got == [], n
    for stream in (OUT, ERR):
        only = [r for r in expected if r[1] == stream]
        opts = ReadOptions(tail=7, streams=frozenset({stream}))
        assert as_ref(list(read_lines(source_for(path), opts))) == only[-7:]


@pytest.mark.usefixtures("small_blocks")
def test_tail_without_merging_counts_records(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    raw = random_log(path, 200, 9)
    records = raw.split(b"\n")[:-1]
    got = list(read_lines(source_for(path), ReadOptions(tail=25, merge_partials=False)))
    assert [ln.content for ln in got] == [r.split(b" ", 3)[3] for r in records[-25:]]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("seed", [4, 5])
def test_since_and_until_match_the_reference(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "0.log"
    raw = random_log(path, 400, seed)
    expected = reference(raw)
    times = sorted({parse_timestamp(line.split(b" ", 1)[0]) for line in raw.split(b"\n")[:-1]})
    last = times[-1]
    rng = random.Random(seed)
    probes = [
        times[0] - 1,
        last + 1,
        *rng.sample(times, 25),
        *(t + 1 for t in rng.sample(times, 10)),
    ]
    for t in probes:
        got = as_ref(list(read_lines(source_for(path), ReadOptions(since_ns=t))))
        assert got == [r for r in expected if r[0] >= t], t
        got = as_ref(list(read_lines(source_for(path), ReadOptions(until_ns=t))))
        cut = t < last
        want = [r for r in expected if r[0] <= t and (r[3] or not cut)]
        assert got == want, t
    lo, hi = times[len(times) // 3], times[2 * len(times) // 3]
    got = as_ref(list(read_lines(source_for(path), ReadOptions(since_ns=lo, until_ns=hi, tail=5))))
    assert got == [r for r in expected if lo <= r[0] <= hi and r[3]][-5:]


def test_since_keeps_pieces_written_before_it(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    rt = Runtime(path, max_line_size=4)
    rt.write(OUT, b"early\n")
    rt.write(OUT, b"0123456789")  # P pieces now, F later
    boundary = rt.t + 1
    rt.write(ERR, b"err\n")
    rt.write(OUT, b"ab\n")
    rt.close()
    lines = list(read_lines(source_for(path), ReadOptions(since_ns=boundary)))
    assert [(ln.stream, ln.content) for ln in lines] == [(ERR, b"err"), (OUT, b"0123456789ab")]


def test_parse_time_arg() -> None:
    now = T0
    assert parse_time_arg("90s", now) == now - 90 * 10**9
    assert parse_time_arg("1h30m", now) == now - 5400 * 10**9
    assert parse_time_arg("250ms", now) == now - 250 * 10**6
    assert parse_time_arg("2024-01-02T03:04:05Z") == parse_timestamp(b"2024-01-02T03:04:05Z")
    assert parse_time_arg("2024-01-02T05:04:05.5+02:00") == parse_timestamp(
        b"2024-01-02T03:04:05.5Z"
    )
    for bad in ("", "5x", "yesterday", "2024-01-02"):
        with pytest.raises(ValueError):
            parse_time_arg(bad, now)


# ---------------------------------------------------------------------------
# Big files: cost independent of size


def write_big_log(path: Path, size_mb: int, tail_part: bytes) -> int:
    """``size_mb`` of whole F lines with rising timestamps, then ``tail_part``.

    Returns the time after which only ``tail_part`` has records.
    """
    framer = LineFramer(OUT)
    placeholder = format_timestamp(0)
    body = b"".join(b"filler line %06d %s\n" % (i, b"." * 70) for i in range(700))
    chunk, _ = framer.feed(body, placeholder)
    t = T0
    with open(path, "wb", buffering=0) as f:
        batch = []
        for i in range(size_mb * (1 << 20) // len(chunk)):
            t = T0 + i * 1_000_000
            batch.append(chunk.replace(placeholder, format_timestamp(t)))
            if len(batch) == 64:
                f.write(b"".join(batch))
                batch = []
        f.write(b"".join(batch) + tail_part)
    return t


def test_tail_and_since_on_a_big_file_read_only_a_little(tmp_path: Path) -> None:
    small = tmp_path / "small.log"
    rt = Runtime(small, max_line_size=10)
    rt.t = T0 + 10**15
    for i in range(150):
        rt.write(OUT if i % 3 else ERR, b"tail line %d with pieces\n" % i)
    rt.close()
    tail_part = small.read_bytes()
    expected = reference(tail_part)
    big = tmp_path / "0.log"
    write_big_log(big, 300, tail_part)
    assert big.stat().st_size > 300 * 10**6

    stats = ReadStats()
    got = list(read_lines(source_for(big), ReadOptions(tail=100), stats=stats))
    assert as_ref(got) == expected[-100:]
    assert stats.bytes_read < 1 << 20, stats

    stats = ReadStats()
    since = T0 + 10**15
    got = list(read_lines(source_for(big), ReadOptions(since_ns=since), stats=stats))
    assert as_ref(got) == expected
    assert stats.bytes_read < 2 << 20, stats

    stats = ReadStats()
    until = T0 + 10**15
    got = list(read_lines(source_for(big), ReadOptions(until_ns=until, tail=3), stats=stats))
    assert len(got) == 3 and all(ln.content.startswith(b"filler") for ln in got)
    assert stats.bytes_read < 2 << 20, stats


# ---------------------------------------------------------------------------
# Rotated sets


def kubelet_gzip(path: Path) -> None:
    """Compress a rotated file the kubelet's way: write .tmp, rename to .gz, delete."""
    tmp = Path(str(path) + ".tmp")
    with open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
        dst.write(src.read())
    os.rename(tmp, str(path) + ".gz")
    os.unlink(path)


def make_rotated_set(directory: Path, files: int, per_file: int, gz: int) -> list[bytes]:
    """``files`` segments of ``per_file`` numbered lines; the oldest ``gz`` compressed.

    Returns every line in order.  A P piece ends each rotated file and its F starts
    the next (a partial flushed into the old file at reopen).
    """
    directory.mkdir(parents=True, exist_ok=True)
    live = directory / "0.log"
    rt = Runtime(live, max_line_size=8)
    sent: list[bytes] = []
    n = 0
    rotated = []
    for f in range(files):
        for _ in range(per_file):
            rt.write(OUT, b"n%d\n" % n)
            sent.append(b"n%d" % n)
            n += 1
        if f == files - 1:
            break
        rt.write(OUT, b"straddles-")  # 10 bytes: one P piece, "-" stays pending
        name = directory / f"0.log.202401{f + 1:02d}-000000"
        os.rename(live, name)
        rotated.append(name)
        old = rt.fd
        rt.fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.close(old)
        rt.write(OUT, b"the-rotation\n")
        sent.append(b"straddles-the-rotation")
    rt.close()
    for name in rotated[:gz]:
        kubelet_gzip(name)
    return sent


def test_list_segments_orders_and_dedupes(tmp_path: Path) -> None:
    d = tmp_path
    for name in [
        "0.log",
        "0.log.20240103-000000",
        "0.log.20240101-000000.gz",
        "0.log.20240102-000000",
        "0.log.20240102-000000.gz",  # being compressed: the plain twin wins
        "0.log.20240104-000000.tmp",
        "1.log",
        "1.log.20240105-000000",
        "notes.txt",
    ]:
        (d / name).write_bytes(b"")
    names = [s.name for s in list_segments(str(d), None)]
    assert names == [
        "0.log.20240101-000000.gz",
        "0.log.20240102-000000",
        "0.log.20240103-000000",
        "0.log",
        "1.log.20240105-000000",
        "1.log",
    ]
    assert [s.name for s in list_segments(str(d), "0.log")] == names[:4]
    assert [s.name for s in LogSource.for_container_dir(str(d)).segments()] == ["1.log"]


def test_all_rotated_reads_plain_and_gzip_in_order(tmp_path: Path) -> None:
    sent = make_rotated_set(tmp_path / "app", files=5, per_file=30, gz=2)
    source = LogSource.for_container_dir(str(tmp_path / "app"))
    lines = list(read_lines(source, ReadOptions(all_rotated=True)))
    assert [ln.content for ln in lines] == sent
    # Without --all-rotated only the live file, starting with the rest of the line
    # whose first piece ("straddle") went to the rotated file.
    live = [ln.content for ln in read_lines(source)]
    assert live == [b"s-the-rotation", *sent[-30:]]


@pytest.mark.usefixtures("small_blocks")
def test_tail_and_since_cross_segments(tmp_path: Path) -> None:
    sent = make_rotated_set(tmp_path / "app", files=4, per_file=20, gz=2)
    source = LogSource.for_container_dir(str(tmp_path / "app"))
    for n in (5, 21, 22, 50, 70, 1000):
        tail = [ln.content for ln in read_lines(source, ReadOptions(tail=n, all_rotated=True))]
        assert tail == sent[-n:], n
    every = list(read_lines(source, ReadOptions(all_rotated=True)))
    for k in (0, 10, 21, 40, 63, len(every) - 1):
        since = every[k].time_ns
        got = list(read_lines(source, ReadOptions(since_ns=since, all_rotated=True)))
        assert [ln.content for ln in got] == [ln.content for ln in every if ln.time_ns >= since]


def test_until_inside_a_gzipped_segment_with_tail(tmp_path: Path) -> None:
    sent = make_rotated_set(tmp_path / "app", files=4, per_file=20, gz=2)
    source = LogSource.for_container_dir(str(tmp_path / "app"))
    every = list(read_lines(source, ReadOptions(all_rotated=True)))
    until = every[10].time_ns  # in the first, gzipped, segment
    options = ReadOptions(until_ns=until, tail=4, all_rotated=True)
    got = [ln.content for ln in read_lines(source, options)]
    assert got == [ln.content for ln in every if ln.time_ns <= until][-4:] == sent[7:11]


def test_restarts_do_not_glue_partials(tmp_path: Path) -> None:
    d = tmp_path / "app"
    d.mkdir()
    first = Runtime(d / "0.log", max_line_size=4)
    first.write(OUT, b"died-mid")  # P piece, container dies
    first.close()
    second = Runtime(d / "1.log")
    second.t = first.t + 10**9
    second.write(OUT, b"fresh\n")
    second.close()
    lines = list(read_lines(LogSource.for_container_dir(str(d)), ReadOptions(all_rotated=True)))
    assert [(ln.content, ln.complete) for ln in lines] == [(b"died", False), (b"fresh", True)]


def test_corrupt_gzip_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    d = tmp_path / "app"
    sent = make_rotated_set(d, files=3, per_file=10, gz=1)
    gz = next(d.glob("*.gz"))
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])
    issues: list[MalformedLine] = []
    source = LogSource.for_container_dir(str(d))
    lines = [
        ln.content
        for ln in read_lines(source, ReadOptions(all_rotated=True), on_error=issues.append)
    ]
    assert lines[-21:] == sent[-21:]
    assert len(issues) == 1 and issues[0].path == str(gz) and "gzip" in issues[0].reason


# ---------------------------------------------------------------------------
# Several sources


def test_merge_orders_several_containers_by_time(tmp_path: Path) -> None:
    rng = random.Random(7)
    runtimes = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        runtimes[name] = Runtime(tmp_path / name / "0.log")
    t = T0
    expected = []
    for i in range(300):
        name = rng.choice("abc")
        t += rng.randint(1, 5000)
        rt = runtimes[name]
        rt.t = t - 1000
        rt.write(OUT, b"%s-%d\n" % (name.encode(), i))
        expected.append(b"%s-%d" % (name.encode(), i))
    for rt in runtimes.values():
        rt.close()
    sources = [LogSource.for_container_dir(str(tmp_path / n)) for n in "abc"]
    readers = [SourceReader(s, ReadOptions(), parse_times=True) for s in sources]
    merged = list(merge_lines(r.lines() for r in readers))
    assert [ln.content for ln in merged] == expected
    assert {ln.source.container for ln in merged if ln.source} == {"a", "b", "c"}


# ---------------------------------------------------------------------------
# The rotation state machine, without files


def seg(name: str, ino: int, gz: bool = False) -> Segment:
    kind = logsegments.classify_segment(name, None)
    assert kind is not None
    return Segment("/d/" + name, kind[0], gz, 0 if gz else ino)


class TestRotationTracker:
    def test_stays_while_the_file_is_live(self) -> None:
        tr = RotationTracker(grace_ns=100)
        tr.observe([seg("0.log", 1)])
        assert tr.decide(1, 0) is None
        assert tr.decide(1, 10**12) is None

    def test_waits_for_the_writer_to_close_a_renamed_file(self) -> None:
        tr = RotationTracker(grace_ns=10**9)
        tr.observe([seg("0.log", 1)])
        tr.new_batch()
        tr.observe([seg("0.log.20240101-000000", 1), seg("0.log", 2)])
        assert tr.decide(1, 0) is None  # the runtime may still flush into it
        tr.new_batch()
        tr.writer_wrote(1)
        tr.writer_closed(1)
        nxt = tr.decide(1, 1)
        assert nxt is not None and nxt.ino == 2

    def test_a_close_before_the_rename_is_stale(self) -> None:
        tr = RotationTracker(grace_ns=10**9)
        tr.observe([seg("0.log", 1)])
        tr.writer_closed(1)  # a reopen of the same, unrenamed file
        tr.new_batch()
        tr.observe([seg("0.log.20240101-000000", 1), seg("0.log", 2)])
        assert tr.decide(1, 0) is None
        assert tr.wake_in(1, 0) == 10**9

    def test_a_late_write_cancels_a_close(self) -> None:
        tr = RotationTracker(grace_ns=10**9)
        tr.observe([seg("0.log.20240101-000000", 1), seg("0.log", 2)])
        tr.writer_closed(1)
        tr.writer_wrote(1)
        assert tr.decide(1, 0) is None

    def test_grace_counts_from_the_last_growth(self) -> None:
        tr = RotationTracker(grace_ns=100)
        tr.observe([seg("0.log.20240101-000000", 1), seg("0.log", 2)])
        assert tr.decide(1, 1000) is None
        tr.grew(1, 1050)
        assert tr.decide(1, 1120) is None
        assert tr.wake_in(1, 1120) == 30
        nxt = tr.decide(1, 1150)
        assert nxt is not None and nxt.ino == 2

    def test_two_newer_segments_mean_the_writer_is_long_gone(self) -> None:
        tr = RotationTracker(grace_ns=10**12)
        tr.observe(
            [seg("0.log.20240101-000000", 1), seg("0.log.20240102-000000", 2), seg("0.log", 3)]
        )
        nxt = tr.decide(1, 0)
        assert nxt is not None and nxt.ino == 2

    def test_deleted_file_is_done(self) -> None:
        tr = RotationTracker(grace_ns=10**12)
        tr.observe([seg("0.log.20240101-000000", 1), seg("0.log", 2)])
        assert tr.decide(1, 0, deleted=True) is not None

    def test_compressed_away_file_is_found_by_its_first_bytes(self) -> None:
        tr = RotationTracker(grace_ns=10**12)
        tr.observe([seg("0.log", 1)])
        tr.new_batch()
        entries = [
            seg("0.log.20240101-000000", 0, gz=True),
            seg("0.log.20240102-000000", 0, gz=True),
            seg("0.log.20240103-000000", 3),
            seg("0.log", 4),
        ]
        tr.observe(entries)
        heads = {entries[0].path: b"first file", entries[1].path: b"our file starts so"}
        nxt = tr.decide(
            1,
            0,
            deleted=True,
            head=lambda: b"our file starts so",
            gz_head=lambda entry, n: heads[entry.path][:n],
        )
        assert nxt is not None and nxt.name == "0.log.20240103-000000"

    def test_restart_is_a_successor(self) -> None:
        tr = RotationTracker(grace_ns=10**12)
        tr.observe([seg("0.log", 1)])
        tr.writer_closed(1)  # the container exited
        tr.new_batch()
        tr.observe([seg("0.log", 1), seg("1.log", 2)])
        nxt = tr.decide(1, 0)
        assert nxt is not None and nxt.name == "1.log"


# ---------------------------------------------------------------------------
# Following in-process: the emit callback drives the writer


def numbers(lines: list[LogLine]) -> Iterator[int]:
    for line in lines:
        yield int(line.content)


def test_follow_group_crosses_rotation_and_stops_on_hook(tmp_path: Path) -> None:
    d = tmp_path / "app"
    d.mkdir()
    live = d / "0.log"
    rt = Runtime(live, max_line_size=8)
    n = 0

    def write(k: int) -> None:
        nonlocal n
        rt.write(OUT, b"".join(b"%d\n" % (n + i) for i in range(k)))
        n += k

    write(5)
    seen: list[int] = []
    rounds = 0
    stop = False

    def emit(batch: list[LogLine]) -> bool:
        nonlocal rounds, stop
        seen.extend(numbers(batch))
        if stop or seen[-1] != n - 1:
            return True  # the end, or more of the same round still coming
        rounds += 1
        if rounds <= 10:
            write(3)
            rotated = d / f"0.log.202401{rounds:02d}-000000"
            os.rename(live, rotated)
            new_fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            write(4)  # the runtime drains into the renamed file until its reopen
            os.close(rt.fd)
            rt.fd = new_fd
            write(2)
            if rounds >= 3:
                kubelet_gzip(d / f"0.log.202401{rounds - 1:02d}-000000")
        else:
            write(3)
            # Two P pieces; "ed" stays in the framer, as when a container is killed.
            rt.write(OUT, b"12345678unfinished")
            stop = True
        return True

    group = FollowGroup([LogSource.for_container_dir(str(d))], ReadOptions(), grace_ns=10**10)
    try:
        history = list(group.history())
        assert list(numbers(history)) == [0, 1, 2, 3, 4]
        seen.extend(numbers(history))
        emit([])
        unfinished: list[LogLine] = []

        def emit_final(batch: list[LogLine]) -> bool:
            if stop:
                unfinished.extend(ln for ln in batch if not ln.content.isdigit())
                batch = [ln for ln in batch if ln.content.isdigit()]
            return emit(batch) if batch else True

        group.run(emit_final, should_stop=lambda: stop)
    finally:
        group.close()
        rt.close()
    assert seen == list(range(n))
    assert [(ln.content, ln.complete) for ln in unfinished] == [(b"12345678unfinish", False)]


def test_follow_group_from_another_thread_stops_by_hook(tmp_path: Path) -> None:
    """The CRI side's use: follow in a worker thread until told the container exited."""
    path = tmp_path / "0.log"
    rt = Runtime(path)
    got: list[bytes] = []
    exited = threading.Event()
    seen_first = threading.Event()
    history_read = threading.Event()

    def worker() -> None:
        group = FollowGroup([LogSource.for_file(str(path))], ReadOptions())
        try:
            got.extend(ln.content for ln in group.history())
            history_read.set()

            def emit(batch: list[LogLine]) -> None:
                got.extend(ln.content for ln in batch)
                seen_first.set()

            group.run(emit, should_stop=exited.is_set)
        finally:
            group.close()

    rt.write(OUT, b"before\n")
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert history_read.wait(10)
        rt.write(OUT, b"during\n")
        assert seen_first.wait(10)
        rt.write(ERR, b"last words\n")
        exited.set()
    finally:
        exited.set()
        thread.join(10)
        rt.close()
    assert not thread.is_alive()
    assert got == [b"before", b"during", b"last words"]


def test_a_parked_file_is_reopened_by_position_even_after_rotation_and_gzip(
    tmp_path: Path,
) -> None:
    """One file open for two containers: the idle one is parked, then rotated (and the
    rotated file compressed and deleted) while parked; nothing is lost or repeated."""
    dirs = [tmp_path / name for name in ("a", "b")]
    runtimes = []
    for d in dirs:
        d.mkdir()
        runtimes.append(Runtime(d / "0.log"))
    got: list[bytes] = []
    group = FollowGroup(
        [LogSource.for_container_dir(str(d)) for d in dirs],
        ReadOptions(),
        max_open=1,
        grace_ns=10**12,
    )

    def settle() -> None:
        """Run the group until it has shown everything written so far."""
        wanted = sum(counts)

        def emit(batch: list[LogLine]) -> bool:
            got.extend(line.content for line in batch)
            return len(got) < wanted

        deadline = time.monotonic() + 30
        group.run(emit, should_stop=lambda: time.monotonic() > deadline)
        assert len(got) == wanted

    counts = [0, 0]

    def write(i: int, k: int) -> None:
        runtimes[i].write(
            OUT, b"".join(b"%s%d\n" % (b"ab"[i : i + 1], counts[i] + j) for j in range(k))
        )
        counts[i] += k

    try:
        list(group.history())
        write(0, 3)
        write(1, 3)
        settle()
        assert group.open_files <= 1
        parked = [f for f in group.followers if f.parked is not None]
        assert len(parked) == 1
        idle = dirs.index(Path(parked[0].source.directory))
        # While parked: more lines, a rotation, the rotated file compressed away.
        write(idle, 4)
        live = dirs[idle] / "0.log"
        rotated = dirs[idle] / "0.log.20240101-000000"
        os.rename(live, rotated)
        new_fd = os.open(live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.close(runtimes[idle].fd)
        runtimes[idle].fd = new_fd
        kubelet_gzip(rotated)
        write(idle, 2)
        settle()
    finally:
        group.close()
        for rt in runtimes:
            rt.close()
    for i, tag in enumerate((b"a", b"b")):
        assert [line for line in got if line.startswith(tag)] == [
            b"%s%d" % (tag, n) for n in range(counts[i])
        ]
