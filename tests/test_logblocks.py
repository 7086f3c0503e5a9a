"""The run decoder: byte vectors, the real writer's files, and a record-by-record reference.

Every case is decoded whole, cut at every byte into two blocks, and in blocks of
random sizes; the logical lines must be byte for byte those an independent,
obviously-correct decoder finds, and the app's bytes must come back exactly.
"""

from __future__ import annotations

import random

import pytest

from iottymux.logblocks import check_run, count_newlines, full_prefix_end, run_end, strip_run
from iottymux.logdecode import Block, LineDecoder
from iottymux.logfiles import MalformedLine
from iottymux.logformat import LineFramer, format_timestamp
from iottymux.loglines import LineRun, expand_runs
from tests.test_logreader import Ref, reference

T0 = 1_700_000_000_000_000_000
OUT, ERR = b"stdout", b"stderr"


def decode(raw: bytes, cuts: list[int]) -> list[LineRun]:
    """Decode ``raw`` in blocks ending at ``cuts`` (each block up to a newline)."""
    decoder = LineDecoder(parse_times=True)
    runs: list[LineRun] = []
    start = 0
    for cut in [*cuts, len(raw)]:
        stop = raw.rfind(b"\n", start, cut) + 1
        if stop > start:
            # Like a read that went past the block's last newline.
            runs += decoder.feed_runs(Block(raw[start:], "x.log", start, stop=stop - start))
            start = stop
    if start < len(raw):
        runs += decoder.feed_runs(Block(raw[start:], "x.log", start))
    return runs + decoder.finish_runs()


def as_ref(runs: list[LineRun]) -> list[Ref]:
    return [(ln.time_ns, ln.stream, ln.content, ln.complete) for ln in expand_runs(runs)]


class Writer:
    """The monitor's framing: a LineFramer per stream, one timestamp per read."""

    def __init__(self, max_line_size: int = 16, *, crlf: bool = False) -> None:
        self.framers = {s: LineFramer(s, max_line_size, crlf=crlf) for s in (OUT, ERR)}
        self.t = T0
        self.out = b""
        self.sent = {OUT: b"", ERR: b""}

    def write(self, stream: bytes, data: bytes, step: int = 1000) -> None:
        self.t += step
        self.out += self.framers[stream].feed(data, format_timestamp(self.t))[0]
        self.sent[stream] += data

    def exit_partial(self, stream: bytes) -> None:
        """What the writer does at exit with an unfinished line: a last ``P``."""
        pending = self.framers[stream]._pending
        if pending:
            self.t += 1000
            self.out += b"%s %s P %s\n" % (format_timestamp(self.t), stream, pending)
            self.framers[stream]._pending = b""


def check_all_cuts(raw: bytes) -> list[LineRun]:
    expected = reference(raw)
    whole = decode(raw, [])
    assert as_ref(whole) == expected
    for cut in range(1, len(raw)):
        assert as_ref(decode(raw, [cut])) == expected, cut
    rng = random.Random(len(raw))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 8))))
        assert as_ref(decode(raw, cuts)) == expected, cuts
    return whole


def test_a_read_of_many_lines_is_one_run() -> None:
    w = Writer(max_line_size=64)
    w.write(OUT, b"".join(b"line %d\n" % i for i in range(50)))
    runs = check_all_cuts(w.out)
    assert len(runs) == 1 and runs[0].count == 50
    assert runs[0].data == w.sent[OUT]


CASES: dict[str, list[tuple[bytes, bytes, int]]] = {
    "P/F joining within one read": [(OUT, b"a" * 40 + b"\nshort\n" + b"b" * 20 + b"\nend\n", 1)],
    "interleaved stdout/stderr partials": [
        (OUT, b"x" * 30, 1),
        (ERR, b"e" * 20 + b"\nerr2\n", 1),
        (OUT, b"tail\nmore\n", 1),
        (ERR, b"eee", 1),
        (ERR, b"\n", 1),
    ],
    "same timestamp on both streams": [
        (OUT, b"o1\no2\n", 1000),
        (ERR, b"e1\ne2\n", 0),
        (OUT, b"o3\no4\n", 0),
    ],
    "empty lines": [(OUT, b"\n\n\nx\n\n", 1)],
    "invalid UTF-8, NUL, lone CR": [(OUT, b"\xff\xfe\x00bin\rary\n\xc3\n", 1)],
    "CRLF from a pty": [(OUT, b"one\r\ntwo\r", 1), (OUT, b"\nthree\r\n", 1)],
    "clock stepped back to an equal timestamp": [
        (OUT, b"a\nb\n", 1000),
        (ERR, b"c\n", 1000),
        (OUT, b"d\ne\n", -1000),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case: str) -> None:
    crlf = "pty" in case
    w = Writer(crlf=crlf)
    for stream, data, step in CASES[case]:
        w.write(stream, data, step)
    runs = check_all_cuts(w.out)
    for stream in (OUT, ERR):
        got = b"".join(r.data for r in runs if r.stream == stream)
        sent = w.sent[stream].replace(b"\r\n", b"\n") if crlf else w.sent[stream]
        assert got == sent


def test_trailing_unterminated_p_line_at_eof_is_printed() -> None:
    """The writer ends an unfinished last line with ``P``; reading to EOF shows it."""
    w = Writer()
    w.write(OUT, b"whole\nno newline at exit")
    w.exit_partial(OUT)
    runs = check_all_cuts(w.out)
    assert [(r.data, r.complete) for r in runs] == [
        (b"whole\n", True),
        (b"no newline at exit\n", False),
    ]


def test_a_torn_last_record_is_decoded_alone() -> None:
    raw = b"%s stdout F ok\n%s stdout P torn without newline" % (
        format_timestamp(T0),
        format_timestamp(T0 + 1),
    )
    runs = decode(raw, [])
    assert [(r.data, r.complete) for r in runs] == [
        (b"ok\n", True),
        (b"torn without newline\n", False),
    ]


def test_random_streams_against_the_reference() -> None:
    rng = random.Random(5)
    for _ in range(40):
        w = Writer(max_line_size=rng.choice((4, 16, 64)), crlf=rng.random() < 0.3)
        for _ in range(rng.randint(1, 30)):
            stream = rng.choice((OUT, ERR))
            data = bytes(rng.choice(b"ab\n\r\xff ") for _ in range(rng.randint(0, 90)))
            w.write(stream, data, rng.choice((0, 1, 1000)))
        raw = w.out
        expected = reference(raw)
        for _ in range(5):
            cuts = sorted(rng.sample(range(1, max(2, len(raw))), min(3, max(0, len(raw) - 2))))
            assert as_ref(decode(raw, cuts)) == expected


def test_foreign_writers_per_line_timestamps() -> None:
    """containerd stamps every line (trimmed zeros): runs of one line each."""
    raw = b"".join(
        b"2024-01-02T03:04:%02d.%dZ %s F line %d\n" % (i // 10, i % 10 + 1, OUT, i)
        for i in range(400)
    )
    runs = decode(raw, [])
    assert b"".join(r.data for r in runs) == b"".join(b"line %d\n" % i for i in range(400))
    assert as_ref(runs) == reference(raw)


def test_malformed_lines_inside_a_run_are_reported_with_their_line_number() -> None:
    ts = format_timestamp(T0)
    good = b"%s stdout F ok\n" % ts
    raw = good * 5 + b"garbage\n" + good * 5 + b"%s stdout F\n" % ts + good
    issues: list[MalformedLine] = []
    decoder = LineDecoder(on_error=issues.append)
    runs = decoder.feed_runs(Block(raw, "x.log", 0, lineno=1))
    assert b"".join(r.data for r in runs) == b"ok\n" * 11
    assert [(i.lineno, i.reason.split(":")[0]) for i in issues] == [
        (6, "no stream"),
        (12, "log tag is not found"),
    ]


def test_since_until_and_stream_filters_per_run() -> None:
    w = Writer(max_line_size=64)
    for i in range(10):
        w.write(OUT if i % 2 else ERR, b"%d-a\n%d-b\n" % (i, i), step=1000)
    decoder = LineDecoder(streams=[OUT], since_ns=T0 + 3000, until_ns=T0 + 8000, parse_times=True)
    runs = decoder.feed_runs(Block(w.out, "x.log", 0, check_until=True))
    assert b"".join(r.data for r in runs) == b"3-a\n3-b\n5-a\n5-b\n7-a\n7-b\n"
    assert decoder.done


def test_primitives() -> None:
    ts = format_timestamp(T0)
    data = b"%s stdout F a\n%s stdout F bb\n%s stderr F c\n" % (ts, ts, ts)
    ends = full_prefix_end(data, 0, data.find(b"\n") + 1)
    assert ends == (30, 40)
    prefix = data[:40]
    end = run_end(data, 0, data.find(b"\n") + 1, prefix)
    assert end == data.find(b"stderr") - 31
    assert strip_run(data, 0, end, prefix) == (b"a\nbb\n", 2)
    # A run that was not contiguous is refused, not half stripped.
    assert strip_run(data, 0, len(data), prefix) is None
    assert count_newlines(data) == 3
    for bad in (b"junk\n", b"%s stdout P x\n" % ts, b"%s stdfoo F x\n" % ts, b"%s stdout F\n" % ts):
        assert full_prefix_end(bad, 0, len(bad)) is None, bad
    assert full_prefix_end(b"%s stdout F:x y\n" % ts, 0, 50) == (30, 42)


def test_check_run_keeps_prefixes_and_refuses_a_broken_run() -> None:
    ts = format_timestamp(T0)
    data = b"%s stdout F a\n%s stdout F bb\n%s stderr F c\n" % (ts, ts, ts)
    prefix = data[:40]
    end = run_end(data, 0, data.find(b"\n") + 1, prefix)
    assert check_run(data, 0, end, prefix) == (b"a\n" + prefix + b"bb\n", 2)
    assert check_run(data, 0, len(data), prefix) is None


def test_decoder_keeping_prefixes_gives_the_same_lines() -> None:
    rng = random.Random(9)
    for _ in range(20):
        w = Writer(max_line_size=rng.choice((8, 64)))
        for _ in range(rng.randint(1, 20)):
            data = bytes(rng.choice(b"ab\n") for _ in range(rng.randint(0, 80)))
            w.write(rng.choice((OUT, ERR)), data, rng.choice((0, 1000)))
        plain = LineDecoder().feed_runs(Block(w.out, "x", 0))
        kept = LineDecoder(keep_prefixes=True).feed_runs(Block(w.out, "x", 0))
        assert [(r.stream, r.data, r.count) for r in kept] == [
            (r.stream, r.data, r.count) for r in plain
        ]


@pytest.mark.parametrize("seed", range(4))
def test_run_end_finds_where_a_contiguous_run_ends(seed: int) -> None:
    """Against a line-by-line walk, over runs of every length and line size."""
    rng = random.Random(seed)
    for _ in range(2000):
        count = rng.randint(1, 400)
        size = rng.choice((0, 5, 60, 300))
        run = b"".join(b"P0 " + b"x" * rng.randint(0, size) + b"\n" for _ in range(count))
        rest = b"".join(b"P%d y\n" % rng.randint(1, 2) for _ in range(rng.randint(0, 50)))
        data = run + rest
        assert run_end(data, 0, data.find(b"\n") + 1, b"P0 ") == len(run)
