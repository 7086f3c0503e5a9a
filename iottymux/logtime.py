"""Times in log reading: ``--since``/``--until`` arguments, and finding a time in a file.

CRI log files are in time order, so nothing scans a file to find where a time
starts: :func:`bisect_lines` binary-searches the timestamps of a plain file,
reading a few KiB per halving, and finishes with a linear scan below
``_BISECT_LINEAR`` bytes.  Gzipped segments cannot be searched; their readers skip
whole segments by first timestamps and filter the rest line by line
(:func:`first_line_after`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Final

from iottymux.logfiles import PlainFile
from iottymux.logformat import (
    TIMESTAMP_WIDTH,
    LogFormatError,
    TimestampParser,
    format_timestamp,
    parse_timestamp,
)

#: Below this many bytes, a binary search finishes with a linear scan.
_BISECT_LINEAR: Final = 64 << 10


_DURATION_RE: Final = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h|d))+")
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}


def parse_duration(text: str) -> int:
    """Nanoseconds in ``90s``, ``1h30m``, ``100ms`` (or ``0``); ValueError otherwise."""
    value = text.strip()
    if value == "0":
        return 0
    if not _DURATION_RE.fullmatch(value):
        raise ValueError(f"not a duration: {text!r}")
    total = 0.0
    for number, unit in _DURATION_PART_RE.findall(value):
        total += float(number) * _UNIT_NS[unit]
    return int(total)


def parse_time_arg(text: str, now_ns: int | None = None) -> int:
    """Epoch nanoseconds for a duration before now (``90s``, ``1h30m``) or an RFC 3339 time.

    Raises :class:`ValueError` for anything else.
    """
    value = text.strip()
    if _DURATION_RE.fullmatch(value):
        now = time.time_ns() if now_ns is None else now_ns
        return now - parse_duration(value)
    try:
        return parse_timestamp(value.encode("ascii"))
    except (LogFormatError, UnicodeEncodeError):
        raise ValueError(f"not a duration or an RFC 3339 time: {text!r}") from None


def fixed_timestamp(raw: bytes) -> bytes:
    """``raw`` as fixed-width RFC 3339 UTC (our writer's form), or unchanged if unparsable."""
    if len(raw) == TIMESTAMP_WIDTH and raw.endswith(b"Z"):
        return raw
    try:
        return format_timestamp(parse_timestamp(raw))
    except LogFormatError:
        return raw


def record_time(line: bytes, parser: TimestampParser) -> int | None:
    space = line.find(b" ", 0, 64)
    if space <= 0:
        return None
    try:
        return parser.parse(line[:space])
    except LogFormatError:
        return None


def find_newline(file: PlainFile, pos: int, limit: int) -> int:
    """Offset just past the next ``\\n`` at or after ``pos``, or ``limit``."""
    while pos < limit:
        data = file.pread(min(8192, limit - pos), pos)
        if not data:
            return limit
        found = data.find(b"\n")
        if found >= 0:
            return pos + found + 1
        pos += len(data)
    return limit


def bisect_lines(
    file: PlainFile, lo: int, hi: int, pred: Callable[[int], bool], parser: TimestampParser
) -> int:
    """First line start in ``[lo, hi)`` whose timestamp satisfies ``pred``, else ``hi``.

    ``pred`` must be monotone over the file (False… then True); lines without a valid
    timestamp are skipped.  Reads a few KiB per halving, never the file.
    """
    answer = hi
    while hi - lo > _BISECT_LINEAR:
        mid = (lo + hi) // 2
        start = find_newline(file, mid - 1, hi)
        ts: int | None = None
        while start < hi:
            ts = record_time(file.pread(64, start), parser)
            if ts is not None:
                break
            start = find_newline(file, start, hi)
        if start >= hi or ts is None:
            hi = mid
        elif pred(ts):
            answer = start
            hi = mid
        else:
            lo = find_newline(file, start, hi)
    data = file.pread(hi - lo + 4096, lo) if hi > lo else b""
    pos = 0
    while lo + pos < hi:
        ts = record_time(data[pos : pos + 64], parser)
        if ts is not None and pred(ts):
            return lo + pos
        newline = data.find(b"\n", pos)
        if newline < 0:
            break
        pos = newline + 1
    return answer


def first_line_after(data: bytes, until: int, parser: TimestampParser) -> int:
    """Offset of the first line in ``data`` stamped after ``until`` (a linear scan)."""
    pos = 0
    while pos < len(data):
        ts = record_time(data[pos : pos + 64], parser)
        if ts is not None and ts > until:
            return pos
        newline = data.find(b"\n", pos)
        if newline < 0:
            break
        pos = newline + 1
    return len(data)
