"""The CRI log line codec, fed byte vectors whole, byte by byte and in odd cuts."""

from __future__ import annotations

import pytest

from iottymux.logformat import (
    STDERR,
    STDOUT,
    LineFramer,
    LogFormatError,
    LogRecord,
    TimestampCache,
    format_timestamp,
    maybe_next_record,
    parse_record,
    parse_timestamp,
)

TS = b"2026-11-28T14:21:30.000000001Z"


def frame(
    data: bytes,
    max_line: int = 16384,
    *,
    crlf: bool = False,
    cuts: list[int] | None = None,
    flush: bool = False,
) -> list[tuple[bytes, bytes]]:
    """Feed ``data`` cut at ``cuts``; return (tag, content) pairs of the output."""
    framer = LineFramer(STDOUT, max_line, crlf=crlf)
    out = b""
    start = 0
    total = 0
    for cut in [*(cuts or []), len(data)]:
        chunk, n = framer.feed(data[start:cut], TS)
        out += chunk
        total += n
        start = cut
    if flush:
        chunk, n = framer.flush(TS)
        out += chunk
        total += n
    records = [parse_record(line) for line in out.split(b"\n")[:-1]]
    assert total == len(records)
    assert all(r.timestamp == TS and r.stream == STDOUT for r in records)
    return [(b"P" if r.partial else b"F", r.content) for r in records]


def frame_every_way(
    data: bytes, max_line: int = 16384, *, crlf: bool = False, flush: bool = False
) -> list[tuple[bytes, bytes]]:
    """The framing must not depend on how the app's writes were cut into reads."""
    whole = frame(data, max_line, crlf=crlf, flush=flush)
    assert frame(data, max_line, crlf=crlf, cuts=list(range(1, len(data))), flush=flush) == whole
    for cut in range(len(data)):
        assert frame(data, max_line, crlf=crlf, cuts=[cut], flush=flush) == whole
    return whole


CASES = [
    ("one line", b"hello\n", 16, [(b"F", b"hello")]),
    ("empty line is F with a space", b"\n", 16, [(b"F", b"")]),
    ("two empty lines", b"\n\n", 16, [(b"F", b""), (b"F", b"")]),
    ("no trailing newline stays pending", b"abc", 16, []),
    ("line of exactly max is one F", b"abcd\n", 4, [(b"F", b"abcd")]),
    ("max+1 is P then F", b"abcde\n", 4, [(b"P", b"abcd"), (b"F", b"e")]),
    ("2*max is P then F of max", b"abcdefgh\n", 4, [(b"P", b"abcd"), (b"F", b"efgh")]),
    ("long unfinished line emits P pieces", b"abcdefghij", 4, [(b"P", b"abcd"), (b"P", b"efgh")]),
    (
        "line, then a long unfinished one",
        b"ab\nabcdefghij",
        4,
        [(b"F", b"ab"), (b"P", b"abcd"), (b"P", b"efgh")],
    ),
    (
        "long line between short ones",
        b"a\nbcdefghijk\nl\n",
        4,
        [(b"F", b"a"), (b"P", b"bcde"), (b"P", b"fghi"), (b"F", b"jk"), (b"F", b"l")],
    ),
    ("NUL and invalid UTF-8 pass through", b"a\x00b\xff\xfe\n", 16, [(b"F", b"a\x00b\xff\xfe")]),
    ("lone CR kept without crlf", b"a\r\n", 16, [(b"F", b"a\r")]),
    ("spaces kept", b"  x  \n", 16, [(b"F", b"  x  ")]),
]


@pytest.mark.parametrize(("name", "data", "max_line", "expected"), CASES, ids=[c[0] for c in CASES])
def test_framing_cases(
    name: str, data: bytes, max_line: int, expected: list[tuple[bytes, bytes]]
) -> None:
    assert frame_every_way(data, max_line) == expected


def test_crlf_normalised_even_across_reads() -> None:
    data = b"one\r\ntwo\r\n\r\nlone\rcr\r\n"
    assert frame_every_way(data, crlf=True) == [
        (b"F", b"one"),
        (b"F", b"two"),
        (b"F", b""),
        (b"F", b"lone\rcr"),
    ]


def test_flush_writes_unfinished_line_as_a_last_p() -> None:
    # No newline was written after "rest": P keeps readers from inventing one.
    assert frame_every_way(b"a\nrest", flush=True) == [(b"F", b"a"), (b"P", b"rest")]
    assert frame(b"", flush=True) == []
    assert frame(b"whole\n", flush=True) == [(b"F", b"whole")]


@pytest.mark.parametrize("size", [16383, 16384, 16385, 1 << 20])
def test_kubelet_sized_lines(size: int) -> None:
    line = bytes(i % 251 for i in range(size)).replace(b"\n", b"x")
    records = frame(line + b"\n", cuts=sorted({c for c in (1, 4096, 65536, size - 1) if c < size}))
    pieces = -(-size // 16384)
    assert [tag for tag, _ in records] == [b"P"] * (pieces - 1) + [b"F"]
    assert all(len(c) == 16384 for _, c in records[:-1])
    assert b"".join(c for _, c in records) == line


def test_split_counter_counts_only_p_records() -> None:
    framer = LineFramer(STDERR, 4)
    framer.feed(b"abcdefghij\nxy\n", TS)
    assert framer.splits == 2


def test_framer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stream"):
        LineFramer(b"stdin")
    with pytest.raises(ValueError, match="max_line_size"):
        LineFramer(STDOUT, 0)


def test_timestamps_are_fixed_width_utc() -> None:
    assert format_timestamp(0) == b"1970-01-01T00:00:00.000000000Z"
    assert format_timestamp(1_795_876_007_000_000_001) == b"2026-11-28T14:26:47.000000001Z"
    cache = TimestampCache()
    assert cache.format(5 * 10**9 + 7) == b"1970-01-01T00:00:05.000000007Z"
    assert cache.format(5 * 10**9 + 999_999_999) == b"1970-01-01T00:00:05.999999999Z"
    assert cache.format(6 * 10**9) == b"1970-01-01T00:00:06.000000000Z"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1970-01-01T00:00:06.000000000Z", 6 * 10**9),
        (b"1970-01-01T00:00:06Z", 6 * 10**9),
        (b"1970-01-01T00:00:06.5Z", 6 * 10**9 + 500_000_000),
        (b"1970-01-01T02:00:06.000000001+02:00", 6 * 10**9 + 1),
        (b"1969-12-31T23:00:06-01:00", 6 * 10**9),
    ],
)
def test_parse_timestamp(raw: bytes, expected: int) -> None:
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"yesterday",
        b"1970-01-01T00:00:06",
        b"1970-13-01T00:00:06Z",
        b"1970-01-01T00:00:06.1234567890Z",
        b"1970-01-01 00:00:06Z",
    ],
)
def test_parse_timestamp_rejects(raw: bytes) -> None:
    with pytest.raises(LogFormatError):
        parse_timestamp(raw)


def test_decoder_round_trips_encoder_output() -> None:
    framer = LineFramer(STDERR, 8)
    out, n = framer.feed(b"short\n\nlonger than eight\n", TS)
    buf = bytearray(out)
    records = []
    while (record := maybe_next_record(buf)) is not None:
        records.append(record)
    assert len(records) == n == 5
    assert b"".join(r.encode() for r in records) == out
    assert [r.partial for r in records] == [False, False, True, True, False]


def test_maybe_next_record_needs_a_whole_line() -> None:
    line = TS + b" stdout F hi\n"
    buf = bytearray()
    for i in range(len(line) - 1):
        buf.append(line[i])
        assert maybe_next_record(buf) is None
    buf += line[-1:] + b"trailing"
    assert maybe_next_record(buf) == LogRecord(TS, STDOUT, False, b"hi")
    assert buf == b"trailing"


def test_extra_tags_are_ignored() -> None:
    assert parse_record(TS + b" stdout F:x:y body\n").content == b"body"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "no timestamp"),
        (TS, "no stream"),
        (TS + b" stdout F", "log tag is not found"),
        (TS + b" stdin F x", "unknown stream"),
        (TS + b" stdout X x", "unknown tag"),
        (b"garbage stdout F x", "bad timestamp"),
    ],
)
def test_parse_record_rejects(line: bytes, message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        parse_record(line)


def test_malformed_line_is_consumed() -> None:
    buf = bytearray(b"junk\n" + TS + b" stdout F ok\n")
    with pytest.raises(LogFormatError):
        maybe_next_record(buf)
    record = maybe_next_record(buf)
    assert record is not None and record.content == b"ok"


def reference_framing(stream: bytes, max_line: int, crlf: bool) -> list[tuple[bytes, bytes]]:
    """The CRI framing of a whole stream, written the obvious way."""
    if crlf:
        stream = stream.replace(b"\r\n", b"\n")
    result = []
    for line in stream.split(b"\n")[:-1]:
        while len(line) > max_line:
            result.append((b"P", line[:max_line]))
            line = line[max_line:]
        result.append((b"F", line))
    return result


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_match_the_reference_whatever_the_reads(seed: int) -> None:
    import random

    rng = random.Random(seed)
    crlf = seed % 2 == 1
    max_line = rng.choice([1, 2, 3, 7, 16, 64])
    alphabet = b"ab\n\r" if crlf else b"abc\n"
    data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
    data += b"\n"
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 30))))
    got = frame(data, max_line, crlf=crlf, cuts=cuts)
    assert got == reference_framing(data, max_line, crlf)
