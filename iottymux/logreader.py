"""Reading CRI log files: tail, since/until, rotated sets, per-stream partials, follow.

Theory of operation
===================

A container's log is a *set of segments* in one directory: the live file the runtime
appends to (``0.log``; ``1.log`` after a restart, …) and the files the kubelet rotated
away from it (``0.log.20240102-150405``, later gzipped to ``….gz``).  Segments sort by
``(restart, rotated-before-live, suffix)``; :func:`list_segments` finds them and
:class:`LogSource` picks the ones a read wants.

Records are decoded in whole blocks (:class:`LineDecoder`) and glued into *logical lines*
by :class:`PartialMerger`, one buffer per stream, so a stdout ``P`` never joins a stderr
``F``.  A logical line takes the timestamp of the record that finished it: lines then
come out of a file in time order, which is what ``--since``/``--until``, the merge of
several containers and the ``--timestamps`` column all rely on.

Nothing scans a file to find where to start:

* ``--tail N`` reads backwards from the end in blocks (:func:`_lines_backward`),
  counting logical lines, until it has N and has also reached the first piece of
  each of those lines; decoding then runs forward from that offset only.
* ``--since``/``--until`` binary-search the timestamps of a plain segment
  (:func:`_bisect`), then step back over the pieces of a line that began before the
  boundary.  Gzipped segments cannot be searched: whole segments are skipped by the
  first timestamp of the next one, and the rest is filtered line by line.

:class:`ReadStats` counts every byte read so callers (and tests) can check that.

Following (:class:`FollowGroup`) watches the *directory* with inotify, plus the inode
of the file being read.  Rotation the kubelet's way is a rename, a reopen that
creates a new live file, a last flush of the runtime into the old file, and later a
gzip of the old file.  The follower keeps reading the renamed file (its descriptor
follows the inode) until :class:`RotationTracker` says its writer is done with it,
then continues with the next segment by name, reading a ``.gz`` copy when it fell so
far behind that the plain file is gone.  That state machine takes observations
(directory listings, writer close/write events, the clock) and returns decisions,
so it is tested without any files.
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import heapq
import os
import re
import select
import stat
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Final, NamedTuple

from iottymux.logblocks import check_run, full_prefix_end, run_end, strip_run
from iottymux.logformat import (
    STREAMS,
    TIMESTAMP_WIDTH,
    LogFormatError,
    LogRecord,
    TimestampParser,
    format_timestamp,
    parse_record,
    parse_timestamp,
)

__all__ = [
    "Block",
    "DaemonUnavailable",
    "FollowGroup",
    "Inotify",
    "InotifyEvent",
    "LineDecoder",
    "LineRun",
    "LogLine",
    "LogReadError",
    "LogSource",
    "MalformedLine",
    "PartialMerger",
    "ReadOptions",
    "ReadStats",
    "RotationTracker",
    "Segment",
    "SourceInfo",
    "SourceReader",
    "classify_segment",
    "fixed_timestamp",
    "list_segments",
    "expand_runs",
    "merge_lines",
    "merge_runs",
    "parse_duration",
    "parse_time_arg",
    "source_key",
    "read_lines",
    "read_log_file",
]

#: Forward reads: large enough that per-block Python overhead vanishes.
FORWARD_BLOCK: Final = 1 << 20
#: Backward reads for ``--tail``: a few hundred typical lines per block.
BACKWARD_BLOCK: Final = 64 << 10
#: Below this many bytes, a binary search finishes with a linear scan.
_BISECT_LINEAR: Final = 64 << 10
#: How far back ``--since`` looks for a stream whose line may have started before the
#: boundary, when no record of that stream was seen yet (a stream that never writes
#: would otherwise send the search back to the start of the file).
SINCE_LOOKBACK: Final = 256 << 10
#: A stream's unfinished line is emitted (incomplete) once its pieces exceed this.
MAX_PENDING: Final = 8 << 20
#: How long a rotated file must stay quiet before the follower leaves it without
#: having seen its writer close it.
ROTATION_GRACE_NS: Final = 1_000_000_000
#: The follower re-checks the directory this often even without events (the
#: kubelet's logForceCheckPeriod).
FOLLOW_TICK_NS: Final = 1_000_000_000


class LogReadError(Exception):
    """A log source cannot be read at all (missing, unreadable, not a log)."""


class DaemonUnavailable(Exception):
    """A source is known only to the rktlet daemon, and it cannot answer."""


@dataclass(slots=True)
class ReadStats:
    """What a reader cost: bytes and read calls on log files, files opened."""

    bytes_read: int = 0
    reads: int = 0
    files_opened: int = 0


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A line that is not a CRI record (or a segment that could not be decoded)."""

    path: str
    lineno: int | None
    reason: str

    def __str__(self) -> str:
        where = self.path if self.lineno is None else f"{self.path}:{self.lineno}"
        return f"{where}: {self.reason}"


ErrorHandler = Callable[[MalformedLine], None]


def _ignore(_issue: MalformedLine) -> None:
    pass


# ---------------------------------------------------------------------------
# Time arguments

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


# ---------------------------------------------------------------------------
# Segments: the files of one container's log

#: ``(restart, 1 if live else 0, -n for logrotate's .n, kubelet suffix)``
SegmentKey = tuple[int, int, int, str]
_RESTART_LOG: Final = re.compile(r"(\d+)\.log(?:\.(.+))?")
_STATIC_NAME: Final = re.compile(r".*(?:\.gz|\.log\.[^/]+)")


@dataclass(frozen=True, slots=True)
class Segment:
    """One file of a log set: the live file, a rotated file, or a gzipped one."""

    path: str
    key: SegmentKey
    compressed: bool
    ino: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def live(self) -> bool:
        return self.key[1] == 1

    @property
    def restart(self) -> int:
        return self.key[0]


def classify_segment(name: str, base: str | None) -> tuple[SegmentKey, bool] | None:
    """Sort key and compression of a file name in a log directory, or None if foreign.

    With ``base`` (a live file's name) only ``base`` and ``base.<suffix>[.gz]`` belong;
    without, the kubelet's ``<restart>.log[.<suffix>][.gz]``.  ``.tmp`` files are the
    kubelet's half-written compressions and never belong.
    """
    if name.endswith(".tmp"):
        return None
    compressed = name.endswith(".gz")
    stem = name[:-3] if compressed else name
    suffix: str | None
    if base is None:
        match = _RESTART_LOG.fullmatch(stem)
        if match is None:
            return None
        restart, suffix = int(match.group(1)), match.group(2)
    else:
        restart = 0
        if stem == base:
            suffix = None
        elif stem.startswith(base + "."):
            suffix = stem[len(base) + 1 :]
        else:
            return None
    if suffix is None:
        if compressed:
            return (restart, 0, 0, ""), True
        return (restart, 1, 0, ""), False
    if suffix.isdigit():
        # logrotate numbers its copies upwards with age.
        return (restart, 0, -int(suffix), ""), compressed
    return (restart, 0, 0, suffix), compressed


def list_segments(directory: str, base: str | None) -> list[Segment]:
    """The log set in ``directory``, oldest first; a plain file wins over its ``.gz`` twin."""
    found: dict[SegmentKey, Segment] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        kind = classify_segment(entry.name, base)
        if kind is None:
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        key, compressed = kind
        # The kubelet deletes the plain file only after its .gz is complete, so while
        # both exist they hold the same records; the plain one can be searched.
        if key in found and not found[key].compressed:
            continue
        found[key] = Segment(entry.path, key, compressed, 0 if compressed else st.st_ino)
    return [found[key] for key in sorted(found)]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Who wrote a log, as far as its path tells (kubelet layout), and its display label."""

    label: str
    namespace: str | None = None
    pod: str | None = None
    uid: str | None = None
    container: str | None = None

    @classmethod
    def for_container_dir(cls, directory: str) -> SourceInfo:
        directory = os.path.normpath(directory)
        container = os.path.basename(directory)
        pod_dir = os.path.basename(os.path.dirname(directory))
        parts = pod_dir.split("_")
        if len(parts) == 3 and all(parts):
            namespace, pod, uid = parts
            return cls(f"{pod}/{container}", namespace, pod, uid, container)
        return cls(container, container=container)


@dataclass(frozen=True, slots=True)
class LogSource:
    """One container's log.

    ``base`` names the live file of a single-file set; ``None`` means a kubelet
    container directory of ``<restart>.log`` files.  A ``static`` source is one file
    read as it is (a rotated or gzipped file named directly).
    """

    info: SourceInfo
    directory: str
    base: str | None
    static: bool = False

    @classmethod
    def for_file(cls, path: str, info: SourceInfo | None = None) -> LogSource:
        real = os.path.realpath(path)
        directory, name = os.path.split(real)
        if info is None:
            if _RESTART_LOG.fullmatch(name):
                info = SourceInfo.for_container_dir(directory)
            else:
                info = SourceInfo(name)
        return cls(info, directory, name, static=bool(_STATIC_NAME.fullmatch(name)))

    @classmethod
    def for_container_dir(cls, path: str, info: SourceInfo | None = None) -> LogSource:
        real = os.path.realpath(path)
        return cls(info or SourceInfo.for_container_dir(real), real, None)

    def listing(self) -> list[Segment]:
        """Every segment of the set now, oldest first."""
        if self.static:
            assert self.base is not None
            path = os.path.join(self.directory, self.base)
            try:
                ino = os.stat(path).st_ino
            except FileNotFoundError:
                return []
            compressed = self.base.endswith(".gz")
            return [Segment(path, (0, 1, 0, ""), compressed, 0 if compressed else ino)]
        return list_segments(self.directory, self.base)

    def segments(self, all_rotated: bool = False) -> list[Segment]:
        """The segments a read covers: the newest restart's live file, or everything."""
        segments = self.listing()
        if all_rotated or not segments:
            return segments
        newest = segments[-1]
        return [newest]


# ---------------------------------------------------------------------------
# Logical lines


@dataclass(slots=True)
class LogLine:
    """One logical line: a whole ``F`` record, or ``P`` pieces glued to their ``F``.

    ``timestamp`` is the finishing record's (raw, as in the file).  ``complete`` is
    False for a line whose ``F`` never came (the stream ended on a ``P``).  ``ns`` is
    the parsed timestamp when the decoder was asked to parse it, else -1.
    """

    timestamp: bytes
    stream: bytes
    content: bytes
    complete: bool = True
    source: SourceInfo | None = None
    ns: int = -1

    @property
    def time_ns(self) -> int:
        return self.ns if self.ns >= 0 else parse_timestamp(self.timestamp)


class LineRun:
    """Consecutive logical lines of one source that share stream and timestamp.

    :attr:`data` is the lines' content, each followed by ``\\n``; ``count`` is how
    many.  ``complete`` is False only for a single line whose ``F`` never came (a
    stream that ended on a ``P`` piece): its ``\\n`` in ``data`` is ours, not the
    app's.  ``ns`` is the parsed timestamp when the decoder was asked for it, else -1.

    A run may still carry its record prefixes (``prefix``, when the decoder was asked
    to keep them): every line but the first then starts with ``prefix`` in
    :attr:`records`, and a format can put its own prefix in their place with one
    ``bytes.replace`` instead of two.  :attr:`data` strips them on first use.
    """

    __slots__ = ("_data", "complete", "count", "ns", "prefix", "source", "stream", "timestamp")

    def __init__(
        self,
        timestamp: bytes,
        stream: bytes,
        data: bytes,
        count: int,
        complete: bool = True,
        source: SourceInfo | None = None,
        ns: int = -1,
        prefix: bytes = b"",
    ) -> None:
        self.timestamp = timestamp
        self.stream = stream
        self._data = data
        self.count = count
        self.complete = complete
        self.source = source
        self.ns = ns
        self.prefix = prefix

    @property
    def data(self) -> bytes:
        if self.prefix:
            self._data = self._data.replace(b"\n" + self.prefix, b"\n")
            self.prefix = b""
        return self._data

    @property
    def records(self) -> bytes:
        """The lines with their record prefixes but the first (see ``prefix``)."""
        return self._data

    @property
    def size(self) -> int:
        return len(self._data)

    def with_data(self, data: bytes, count: int) -> LineRun:
        """The same run holding other (e.g. filtered) lines."""
        return LineRun(
            self.timestamp, self.stream, data, count, self.complete, self.source, self.ns
        )

    def __repr__(self) -> str:
        return (
            f"LineRun({self.timestamp!r}, {self.stream!r}, {self._data[:40]!r}, "
            f"count={self.count}, complete={self.complete}, prefix={self.prefix!r})"
        )

    @property
    def time_ns(self) -> int:
        return self.ns if self.ns >= 0 else parse_timestamp(self.timestamp)

    @classmethod
    def of(cls, line: LogLine) -> LineRun:
        return cls(
            line.timestamp,
            line.stream,
            line.content + b"\n",
            1,
            line.complete,
            line.source,
            line.ns,
        )


class PartialMerger:
    """Glues ``P`` pieces to their ``F``, one buffer per stream."""

    __slots__ = ("_pending", "_sizes", "max_pending", "source")

    def __init__(self, source: SourceInfo | None = None, max_pending: int = MAX_PENDING) -> None:
        self._pending: dict[bytes, tuple[bytes, list[bytes]]] = {}
        self._sizes: dict[bytes, int] = {}
        self.max_pending = max_pending
        self.source = source

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def feed(self, record: LogRecord) -> LogLine | None:
        """The finished line, or None while ``record`` is a piece of one."""
        stream = record.stream
        if record.partial:
            entry = self._pending.get(stream)
            if entry is None:
                pieces = [record.content]
                size = len(record.content)
            else:
                pieces = entry[1]
                pieces.append(record.content)
                size = self._sizes[stream] + len(record.content)
            if size > self.max_pending:
                # A writer that never ends its line must not exhaust our memory.
                del self._pending[stream]
                self._sizes.pop(stream, None)
                return LogLine(record.timestamp, stream, b"".join(pieces), False, self.source)
            self._pending[stream] = (record.timestamp, pieces)
            self._sizes[stream] = size
            return None
        entry = self._pending.pop(stream, None)
        if entry is None:
            return LogLine(record.timestamp, stream, record.content, True, self.source)
        del self._sizes[stream]
        entry[1].append(record.content)
        return LogLine(record.timestamp, stream, b"".join(entry[1]), True, self.source)

    def flush(self) -> list[LogLine]:
        """Unfinished lines as incomplete lines, oldest last piece first."""
        lines = [
            LogLine(timestamp, stream, b"".join(pieces), False, self.source)
            for stream, (timestamp, pieces) in self._pending.items()
        ]
        self._pending.clear()
        self._sizes.clear()
        lines.sort(key=lambda line: line.timestamp)
        return lines


@dataclass(frozen=True, slots=True)
class Block:
    """Whole records read from one segment.

    ``offset`` is where ``data`` starts (in the decompressed stream for ``.gz``);
    ``lineno`` is the line number of its first line when known; ``count_lines``
    counts the lines before an offset, for error messages only.  ``check_until``
    asks the decoder to test each record against ``until`` (segments that could
    not be binary-searched).  ``first_of_restart`` starts another container
    instance's file, where no partial line can continue.  ``stop`` ends the block
    inside ``data`` (-1: at its end); what follows belongs to the next block, so a
    read need not be copied to cut it at its last newline.
    """

    data: bytes
    path: str
    offset: int
    lineno: int | None = None
    count_lines: Callable[[int], int] | None = None
    check_until: bool = False
    first_of_restart: bool = False
    stop: int = -1

    @property
    def end(self) -> int:
        return len(self.data) if self.stop < 0 else self.stop


class LineDecoder:
    """Blocks of records → logical lines, with stream, since and until filters.

    Malformed lines go to ``on_error`` with their file and line number and are
    skipped.  ``since_ns`` is tested per run only until one run passes (files are
    in time order); ``until_ns`` only for blocks marked ``check_until``.  With
    ``parse_times`` every line's timestamp is parsed (``LineRun.ns``), which merging
    several sources needs; an unparsable one is then reported as malformed.

    :meth:`feed_runs` is the decoder: runs of whole ``F`` records sharing a prefix
    (:mod:`iottymux.logblocks`) become one :class:`LineRun` each with bytes operations
    over the run; ``P`` pieces, the first ``F`` after a stream's pieces, and anything
    odd go through :class:`PartialMerger` record by record.  :meth:`feed` is the same
    output one :class:`LogLine` per line.
    """

    #: After this many one-line runs in a row (a writer that stamps every line,
    #: like containerd), stretches of the block are decoded record by record.
    SHORT_RUNS: Final = 8
    #: Bytes decoded record by record before runs are tried again.
    RECORD_STRETCH: Final = 32 << 10

    def __init__(
        self,
        *,
        source: SourceInfo | None = None,
        streams: Iterable[bytes] = STREAMS,
        merge_partials: bool = True,
        since_ns: int | None = None,
        until_ns: int | None = None,
        parse_times: bool = False,
        on_error: ErrorHandler | None = None,
        keep_prefixes: bool = False,
    ) -> None:
        self.source = source
        self.streams = frozenset(streams)
        self.merge_partials = merge_partials
        #: Leave record prefixes in runs (``LineRun.prefix``) for a format to replace.
        self.keep_prefixes = keep_prefixes
        self.since_ns = since_ns
        self.until_ns = until_ns
        self.parse_times = parse_times
        self.on_error = on_error or _ignore
        self.merger = PartialMerger(source)
        self.done = False
        self._times = TimestampParser()
        self._short = 0

    @property
    def idle(self) -> bool:
        """No partial line held and no since filter pending."""
        return not self.merger.pending and self.since_ns is None and not self.done

    def feed(self, block: Block) -> list[LogLine]:
        return expand_runs(self.feed_runs(block))

    def feed_runs(self, block: Block) -> list[LineRun]:
        out: list[LineRun] = []
        if self.done:
            return out
        data = block.data
        n = block.end
        if n and data[n - 1] != 0x0A:
            # A torn last record (or a writer's last P at EOF): one record, alone.
            last = data.rfind(b"\n", 0, n) + 1
            if last:
                out = self.feed_runs(replace(block, stop=last))
            if not self.done:
                self._records(block, last, n, out)
            return out
        find = data.find
        pending = self.merger._pending if self.merge_partials else {}
        until = self.until_ns if block.check_until else None
        want_time = self.parse_times or until is not None or self.since_ns is not None
        streams = self.streams
        pos = 0
        while pos < n:
            line_end = find(b"\n", pos, n) + 1
            ends = full_prefix_end(data, pos, line_end)
            # The first F after a stream's P pieces finishes their line: a record's job.
            if ends is None or data[ends[0] + 1 : ends[0] + 7] in pending:
                self._records(block, pos, line_end, out)
                pos = line_end
                continue
            ts_end, cut = ends
            prefix = data[pos:cut]
            end = run_end(data, pos, line_end, prefix, n)
            # A run of one line is its own proof of contiguity.
            kept = b""
            if end == line_end:
                stripped: tuple[bytes, int] | None = (data[cut:end], 1)
            elif self.keep_prefixes:
                stripped = check_run(data, pos, end, prefix)
                kept = prefix
            else:
                stripped = strip_run(data, pos, end, prefix)
            if stripped is None:
                self._records(block, pos, end, out)
                pos = end
                continue
            ns = -1
            timestamp = prefix[: ts_end - pos]
            if want_time:
                try:
                    ns = self._times.parse(timestamp)
                except LogFormatError:
                    self._records(block, pos, end, out)
                    pos = end
                    continue
                if until is not None and ns > until:
                    self.done = True
                    return out
            content, count = stripped
            pos = end
            if count == 1:
                self._short += 1
                if self._short >= self.SHORT_RUNS:
                    stretch = find(b"\n", min(n - 1, pos + self.RECORD_STRETCH), n) + 1
                    self._short = self.SHORT_RUNS // 2
                    emitted = self._emit_run(timestamp, prefix, content, count, ns, streams, kept)
                    if emitted is not None:
                        out.append(emitted)
                    self._records(block, pos, stretch, out)
                    pos = stretch
                    if self.done:
                        return out
                    continue
            else:
                self._short = 0
            emitted = self._emit_run(timestamp, prefix, content, count, ns, streams, kept)
            if emitted is not None:
                out.append(emitted)
        return out

    def _emit_run(
        self,
        timestamp: bytes,
        prefix: bytes,
        content: bytes,
        count: int,
        ns: int,
        streams: frozenset[bytes],
        kept: bytes,
    ) -> LineRun | None:
        stream = prefix[len(timestamp) + 1 : len(timestamp) + 7]
        if stream not in streams:
            return None
        if self.since_ns is not None:
            if ns < self.since_ns:
                return None
            self.since_ns = None
        return LineRun(timestamp, stream, content, count, True, self.source, ns, kept)

    def _records(self, block: Block, start: int, stop: int, out: list[LineRun]) -> None:
        """Decode ``block.data[start:stop]`` record by record (whole lines)."""
        if self.done or start >= stop:
            return
        data = block.data
        lines = data[start:stop].split(b"\n")
        if data[stop - 1 : stop] == b"\n":
            lines.pop()
        streams = self.streams
        merger = self.merger if self.merge_partials else None
        until = self.until_ns if block.check_until else None
        want_time = self.parse_times or until is not None or self.since_ns is not None
        source = self.source
        offset = start
        for raw in lines:
            line_start = offset
            offset += len(raw) + 1
            try:
                record = parse_record(raw)
                ns = self._times.parse(record.timestamp) if want_time else -1
            except LogFormatError as exc:
                self._malformed(block, line_start, raw, str(exc))
                continue
            if until is not None and ns > until:
                self.done = True
                return
            if record.stream not in streams:
                continue
            if merger is not None:
                line = merger.feed(record)
                if line is None:
                    continue
                run = LineRun(
                    line.timestamp, line.stream, line.content + b"\n", 1, line.complete, source
                )
            else:
                run = LineRun(
                    record.timestamp,
                    record.stream,
                    record.content + b"\n",
                    1,
                    not record.partial,
                    source,
                )
            if want_time:
                run.ns = ns
            if self.since_ns is not None:
                if ns < self.since_ns:
                    continue
                self.since_ns = None
            out.append(run)

    def finish(self) -> list[LogLine]:
        return expand_runs(self.finish_runs())

    def finish_runs(self) -> list[LineRun]:
        """End of input: unfinished lines come out incomplete (the kubelet emits them too)."""
        lines = self.merger.flush()
        if self.done:
            return []
        kept = []
        for line in lines:
            try:
                ns = self._times.parse(line.timestamp)
            except LogFormatError:
                continue
            if self.since_ns is not None and ns < self.since_ns:
                continue
            kept.append(
                LineRun(
                    line.timestamp, line.stream, line.content + b"\n", 1, False, self.source, ns
                )
            )
        return kept

    def _malformed(self, block: Block, offset: int, raw: bytes, reason: str) -> None:
        if block.lineno is not None:
            lineno: int | None = block.lineno + block.data.count(b"\n", 0, offset)
        elif block.count_lines is not None:
            lineno = block.count_lines(block.offset + offset) + 1
        else:
            lineno = None
        shown = raw[:60] + (b"..." if len(raw) > 60 else b"")
        self.on_error(MalformedLine(block.path, lineno, f"{reason}: {shown!r}, skipped"))


def expand_runs(runs: Iterable[LineRun]) -> list[LogLine]:
    """One :class:`LogLine` per line of ``runs``."""
    out: list[LogLine] = []
    for run in runs:
        if run.count == 1:
            out.append(
                LogLine(run.timestamp, run.stream, run.data[:-1], run.complete, run.source, run.ns)
            )
            continue
        for content in run.data[:-1].split(b"\n"):
            out.append(LogLine(run.timestamp, run.stream, content, True, run.source, run.ns))
    return out


# ---------------------------------------------------------------------------
# File access


class _PlainFile:
    """A read-only descriptor whose reads are counted in a :class:`ReadStats`."""

    __slots__ = ("_counted", "dev", "fd", "ino", "path", "stats")

    def __init__(self, path: str, stats: ReadStats) -> None:
        self._counted = (0, 0)
        self.path = path
        self.stats = stats
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.ino = st.st_ino
        self.dev = st.st_dev
        stats.files_opened += 1

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def links(self) -> int:
        return os.fstat(self.fd).st_nlink

    def pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        self.stats.reads += 1
        self.stats.bytes_read += len(data)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def count_lines(self, offset: int) -> int:
        """Newlines before ``offset``; only for error messages, so its reads are not hidden.

        Remembers where it got to: errors come in file order, so the file is read
        about once however many there are.
        """
        pos, count = self._counted
        if offset < pos:
            pos, count = 0, 0
        while pos < offset:
            data = self.pread(min(FORWARD_BLOCK, offset - pos), pos)
            if not data:
                break
            count += data.count(b"\n")
            pos += len(data)
        self._counted = (pos, count)
        return count


class _CountingReader:
    """The file object under :class:`gzip.GzipFile`, counting compressed bytes read."""

    def __init__(self, raw: IO[bytes], stats: ReadStats) -> None:
        self.raw = raw
        self.stats = stats

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.stats.reads += 1
        self.stats.bytes_read += len(data)
        return data

    def seek(self, offset: int, /) -> int:
        return self.raw.seek(offset)


def _forward_blocks(
    file: _PlainFile, start: int, end: int, block_size: int = 0
) -> Iterator[tuple[int, bytes, int]]:
    """``(offset, data, stop)``: ``data[:stop]`` are whole lines covering ``[start, end)``.

    Each read starts where the last whole line ended (re-reading the few bytes of a
    line cut by the previous read costs less than gluing and cutting copies of a
    whole block).  Unterminated bytes at ``end`` come last, alone (a torn final
    record), with ``stop == len(data)``.
    """
    block_size = block_size or FORWARD_BLOCK
    pos = start
    size = block_size
    while pos < end:
        want = min(size, end - pos)
        data = file.pread(want, pos)
        if not data:
            break
        stop = data.rfind(b"\n") + 1
        if stop == 0:
            if len(data) < want or pos + want >= end:
                yield pos, data, len(data)
                break
            size *= 2  # a line longer than a block
            continue
        yield pos, data, stop
        pos += stop
        size = block_size


def _gz_blocks(
    path: str, stats: ReadStats, on_error: ErrorHandler, block_size: int = 0
) -> Iterator[tuple[int, bytes]]:
    """Decompressed blocks of whole lines of a gzipped segment."""
    block_size = block_size or FORWARD_BLOCK
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed in finally, generator-scoped
    except FileNotFoundError:
        on_error(MalformedLine(path, None, "vanished before it could be read"))
        return
    stats.files_opened += 1
    pos = 0
    carry = b""
    try:
        with gzip.GzipFile(fileobj=_CountingReader(raw, stats), mode="rb") as gz:
            while True:
                try:
                    data = gz.read(block_size)
                except (OSError, EOFError, zlib.error) as exc:
                    on_error(MalformedLine(path, None, f"corrupt gzip data ({exc}), rest skipped"))
                    break
                if not data:
                    break
                buf = carry + data if carry else data
                cut = buf.rfind(b"\n") + 1
                if cut:
                    yield pos, buf[:cut]
                    pos += cut
                carry = buf[cut:]
    finally:
        raw.close()
    if carry:
        yield pos, carry


def _lines_backward(
    file: _PlainFile, lo: int, hi: int, block_size: int = 0
) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for the lines in ``[lo, hi)``, last first.

    ``lo`` must be a line start.  Lines keep their ``\\n`` (the last may lack it).
    """
    block_size = block_size or BACKWARD_BLOCK
    pos = hi
    carry = b""
    while pos > lo:
        size = min(block_size, pos - lo)
        pos -= size
        buf = file.pread(size, pos) + carry
        end = len(buf)
        while True:
            newline = buf.rfind(b"\n", 0, end - 1) if end > 1 else -1
            if newline < 0:
                break
            yield pos + newline + 1, buf[newline + 1 : end]
            end = newline + 1
        carry = buf[:end]
    if carry:
        yield lo, carry


def _record_time(line: bytes, parser: TimestampParser) -> int | None:
    space = line.find(b" ", 0, 64)
    if space <= 0:
        return None
    try:
        return parser.parse(line[:space])
    except LogFormatError:
        return None


def _find_newline(file: _PlainFile, pos: int, limit: int) -> int:
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


def _bisect(
    file: _PlainFile, lo: int, hi: int, pred: Callable[[int], bool], parser: TimestampParser
) -> int:
    """First line start in ``[lo, hi)`` whose timestamp satisfies ``pred``, else ``hi``.

    ``pred`` must be monotone over the file (False… then True); lines without a valid
    timestamp are skipped.  Reads a few KiB per halving, never the file.
    """
    answer = hi
    while hi - lo > _BISECT_LINEAR:
        mid = (lo + hi) // 2
        start = _find_newline(file, mid - 1, hi)
        ts: int | None = None
        while start < hi:
            ts = _record_time(file.pread(64, start), parser)
            if ts is not None:
                break
            start = _find_newline(file, start, hi)
        if start >= hi or ts is None:
            hi = mid
        elif pred(ts):
            answer = start
            hi = mid
        else:
            lo = _find_newline(file, start, hi)
    data = file.pread(hi - lo + 4096, lo) if hi > lo else b""
    pos = 0
    while lo + pos < hi:
        ts = _record_time(data[pos : pos + 64], parser)
        if ts is not None and pred(ts):
            return lo + pos
        newline = data.find(b"\n", pos)
        if newline < 0:
            break
        pos = newline + 1
    return answer


def _first_line_after(data: bytes, until: int, parser: TimestampParser) -> int:
    """Offset of the first line in ``data`` stamped after ``until`` (a linear scan)."""
    pos = 0
    while pos < len(data):
        ts = _record_time(data[pos : pos + 64], parser)
        if ts is not None and ts > until:
            return pos
        newline = data.find(b"\n", pos)
        if newline < 0:
            break
        pos = newline + 1
    return len(data)


# ---------------------------------------------------------------------------
# Planning a read: where each segment's read starts and ends


@dataclass(slots=True)
class ReadOptions:
    """What to read from a source.  Times are epoch nanoseconds."""

    tail: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    streams: frozenset[bytes] = frozenset(STREAMS)
    merge_partials: bool = True
    all_rotated: bool = False
    #: Runs keep their record prefixes for the output format to replace (LineRun).
    keep_prefixes: bool = False
    #: Bytes per forward read (0: FORWARD_BLOCK); smaller when many sources are read
    #: side by side, each holding a block.
    block_size: int = 0


class _Opened:
    """A segment opened for a read, with the end of the bytes it contributes."""

    __slots__ = ("_gz_data", "end", "file", "segment")

    def __init__(self, segment: Segment, file: _PlainFile | None, end: int) -> None:
        self.segment = segment
        self.file = file
        self.end = end
        self._gz_data: bytes | None = None

    def gz_data(self, stats: ReadStats, on_error: ErrorHandler) -> bytes:
        # Only for tail/since over rotated gzip files: bounded by the kubelet's
        # rotation size, and gzip streams cannot be read backwards.
        if self._gz_data is None:
            self._gz_data = b"".join(
                data for _, data in _gz_blocks(self.segment.path, stats, on_error)
            )
            self.end = len(self._gz_data)
        return self._gz_data

    def lines_backward(
        self, hi: int, stats: ReadStats, on_error: ErrorHandler
    ) -> Iterator[tuple[int, bytes]]:
        if self.file is not None:
            yield from _lines_backward(self.file, 0, hi)
            return
        data = self.gz_data(stats, on_error)
        end = min(hi, len(data))
        while end > 0:
            newline = data.rfind(b"\n", 0, end - 1) if end > 1 else -1
            yield newline + 1, data[newline + 1 : end]
            end = newline + 1

    def first_time(self, stats: ReadStats, parser: TimestampParser) -> int | None:
        if self.file is not None:
            head = self.file.pread(64, 0)
        elif self._gz_data is not None:
            head = self._gz_data[:64]
        else:
            try:
                with gzip.open(self.segment.path, "rb") as gz:
                    head = gz.read(64)
            except (OSError, EOFError, zlib.error):
                return None
            stats.files_opened += 1
        return _record_time(head, parser)


Position = tuple[int, int]  # (segment index, offset)


class SourceReader:
    """Reads one :class:`LogSource` for a :class:`ReadOptions`, without following.

    :meth:`lines` gives logical lines; :meth:`blocks` plus :attr:`decoder` give the
    raw blocks for callers with a faster path of their own.  ``live`` is an already
    open descriptor of the newest segment (a follower's); with ``follow`` the read
    stops at that file's last newline and keeps unfinished lines pending, and
    :attr:`live_end` tells the follower where to continue.
    """

    def __init__(
        self,
        source: LogSource,
        options: ReadOptions,
        *,
        stats: ReadStats | None = None,
        on_error: ErrorHandler | None = None,
        parse_times: bool = False,
        segments: Sequence[Segment] | None = None,
        live: _PlainFile | None = None,
        follow: bool = False,
    ) -> None:
        self.source = source
        self.options = options
        self.stats = stats if stats is not None else ReadStats()
        self.on_error = on_error or _ignore
        self.follow = follow
        self._segments = list(segments) if segments is not None else None
        self._live = live
        self.live_end = 0
        self._parser = TimestampParser()
        self.decoder = LineDecoder(
            source=source.info,
            streams=options.streams,
            merge_partials=options.merge_partials,
            since_ns=options.since_ns,
            until_ns=options.until_ns,
            parse_times=parse_times,
            on_error=self.on_error,
            keep_prefixes=options.keep_prefixes,
        )
        self._opened: list[_Opened] = []
        self._until_cut = False

    # -- opening --------------------------------------------------------------

    def _open(self) -> list[_Opened]:
        segments = self._segments
        if segments is None:
            segments = self.source.segments(self.options.all_rotated)
        opened: list[_Opened] = []
        for index, segment in enumerate(segments):
            is_last = index == len(segments) - 1
            if segment.compressed:
                opened.append(_Opened(segment, None, -1))
                continue
            if is_last and self._live is not None:
                file = self._live
            else:
                try:
                    file = _PlainFile(segment.path, self.stats)
                except FileNotFoundError:
                    # Rotated away and compressed between listing and opening.
                    gz = segment.path + ".gz"
                    if os.path.exists(gz):
                        opened.append(_Opened(Segment(gz, segment.key, True), None, -1))
                    continue
            end = file.size()
            if self.follow and is_last:
                end = self._last_newline(file, end)
            opened.append(_Opened(segment, file, end))
        return opened

    @staticmethod
    def _last_newline(file: _PlainFile, end: int) -> int:
        # A follower must not consume a record the writer has not finished.
        pos = end
        while pos > 0:
            size = min(BACKWARD_BLOCK, pos)
            found = file.pread(size, pos - size).rfind(b"\n")
            if found >= 0:
                return pos - size + found + 1
            pos -= size
        return 0

    def close(self) -> None:
        for item in self._opened:
            if item.file is not None and item.file is not self._live:
                item.file.close()
        self._opened = []

    # -- planning -------------------------------------------------------------

    def _plan(self, opened: list[_Opened]) -> tuple[Position, Position, bool]:
        """Start and end positions, and whether the last segment needs until checks."""
        options = self.options
        last = len(opened) - 1
        start: Position = (0, 0)
        end: Position = (last, opened[last].end)
        until_checked = False
        if options.until_ns is not None:
            until = options.until_ns
            index = last
            while index > 0:
                first = opened[index].first_time(self.stats, self._parser)
                if first is None or first <= until:
                    break
                index -= 1
            item = opened[index]
            if item.file is not None:
                end = (index, _bisect(item.file, 0, item.end, lambda t: t > until, self._parser))
            elif options.tail is not None:
                # Counting back for --tail needs the exact end; a gzip stream cannot be
                # searched, but tail decompresses this segment anyway.
                data = item.gz_data(self.stats, self.on_error)
                end = (index, _first_line_after(data, until, self._parser))
            else:
                end = (index, -1)
                until_checked = True
        if options.since_ns is not None:
            since = options.since_ns
            index = end[0]
            while index > 0:
                first = opened[index].first_time(self.stats, self._parser)
                if first is not None and first < since:
                    break
                index -= 1
            item = opened[index]
            offset = 0
            if item.file is not None:
                hi = end[1] if index == end[0] and end[1] >= 0 else item.end
                offset = _bisect(item.file, 0, hi, lambda t: t >= since, self._parser)
            start = self._back_to_line_starts(opened, (index, offset), None)
        if options.tail is not None:
            # Trailing pieces are a line of their own only at the real end of the
            # data; at an --until cut (or while following) that line is not finished.
            trailing = not self.follow and end == (last, opened[last].end) and not until_checked
            tail_start = self._back_to_line_starts(opened, end, options.tail, trailing)
            start = max(start, tail_start)
        return start, end, until_checked

    def _back_to_line_starts(
        self, opened: list[_Opened], origin: Position, count: int | None, trailing: bool = True
    ) -> Position:
        """Walk back from ``origin`` to the first piece of the lines that need reading.

        With ``count``: the last ``count`` logical lines before ``origin``, each back
        to its first piece.  Without: the lines still unfinished at ``origin``, back
        to their first piece; a stream not seen within :data:`SINCE_LOOKBACK` bytes
        is taken to be between lines.
        """
        streams = self.options.streams
        merge = self.options.merge_partials
        if count == 0 or (count is None and not merge):
            return origin
        start = origin
        counted = 0
        # stream -> inside a line we need (going back, its earlier pieces are needed)
        open_lines: dict[bytes, bool] = {}
        scanned = 0
        index, hi = origin
        restart = opened[index].segment.restart
        while index >= 0:
            item = opened[index]
            if item.segment.restart != restart:
                # Another container instance: no line continues across it.
                if count is None or counted >= count:
                    return start
                open_lines.clear()
                restart = item.segment.restart
            if hi < 0:
                hi = len(item.gz_data(self.stats, self.on_error))
            for offset, raw in item.lines_backward(hi, self.stats, self.on_error):
                scanned += len(raw)
                try:
                    record = parse_record(raw)
                except LogFormatError:
                    continue
                stream = record.stream
                if stream not in streams:
                    continue
                if count is not None and not merge:
                    counted += 1
                    if counted >= count:
                        return (index, offset)
                    continue
                if count is not None:
                    if open_lines.get(stream):
                        if record.partial:
                            start = (index, offset)
                        elif counted < count:
                            # This F ends the previous line of the stream: count it too.
                            counted += 1
                            start = (index, offset)
                        else:
                            open_lines[stream] = False
                    elif counted < count and (trailing or not record.partial):
                        # An F, or the trailing pieces of a line never finished.
                        counted += 1
                        open_lines[stream] = True
                        start = (index, offset)
                    if counted >= count and not any(open_lines.values()):
                        return start
                    continue
                if stream not in open_lines:
                    open_lines[stream] = record.partial
                    if record.partial:
                        start = (index, offset)
                elif open_lines[stream]:
                    if record.partial:
                        start = (index, offset)
                    else:
                        open_lines[stream] = False
                if not any(open_lines.values()) and (
                    len(open_lines) == len(streams) or scanned > SINCE_LOOKBACK
                ):
                    return start
            index -= 1
            hi = opened[index].end if index >= 0 else 0
        return (0, 0) if count is not None else start

    # -- reading --------------------------------------------------------------

    def blocks(self) -> Iterator[Block]:
        """The planned byte ranges as blocks of whole records, oldest first."""
        options = self.options
        opened = self._open()
        self._opened = opened
        if not opened:
            return
        start, end, until_checked = self._plan(opened)
        # Lines still unfinished where --until cut the read finish after it.
        self._until_cut = until_checked or end != (len(opened) - 1, opened[-1].end)
        previous_restart: int | None = None
        for index in range(start[0], end[0] + 1):
            item = opened[index]
            lo = start[1] if index == start[0] else 0
            first_of_restart = (
                previous_restart is not None and item.segment.restart != previous_restart
            )
            previous_restart = item.segment.restart
            check_until = until_checked and index == end[0]
            if item.file is not None:
                hi = end[1] if index == end[0] else item.end
                file = item.file
                lineno: int | None = 1 if lo == 0 else None
                for offset, data, stop in _forward_blocks(file, lo, hi, options.block_size):
                    yield Block(
                        data,
                        item.segment.path,
                        offset,
                        lineno,
                        file.count_lines,
                        check_until,
                        first_of_restart,
                        stop,
                    )
                    first_of_restart = False
                    lineno = None  # counted only for an error message, from the file
                if index == len(opened) - 1:
                    self.live_end = hi
            else:
                line_base = 1
                if item._gz_data is not None:
                    hi = end[1] if index == end[0] and end[1] >= 0 else len(item._gz_data)
                    data = item._gz_data[lo:hi]
                    if lo:
                        line_base = item._gz_data.count(b"\n", 0, lo) + 1
                    chunks: Iterable[tuple[int, bytes]] = [(lo, data)] if data else []
                else:
                    chunks = _gz_blocks(
                        item.segment.path, self.stats, self.on_error, options.block_size
                    )
                for offset, data in chunks:
                    yield Block(
                        data,
                        item.segment.path,
                        offset,
                        line_base,
                        None,
                        check_until,
                        first_of_restart,
                    )
                    first_of_restart = False
                    line_base += data.count(b"\n")

    def restart_boundary(self) -> list[LineRun]:
        """Call before a block marked ``first_of_restart``: ends the old instance's lines."""
        runs = self.decoder.finish_runs() if not self.decoder.done else []
        self.decoder.merger = PartialMerger(self.source.info)
        return runs

    def finish(self) -> list[LineRun]:
        """Call after the last block (not when following): the unfinished lines."""
        if self._until_cut:
            self.decoder.merger.flush()
        return self.decoder.finish_runs()

    def runs(self) -> Iterator[LineRun]:
        """Runs of logical lines, oldest first; ``tail`` is not applied (see :meth:`lines`)."""
        decoder = self.decoder
        try:
            for block in self.blocks():
                if block.first_of_restart:
                    yield from self.restart_boundary()
                yield from decoder.feed_runs(block)
                if decoder.done:
                    break
            if not self.follow:
                yield from self.finish()
        finally:
            self.close()

    def lines(self) -> Iterator[LogLine]:
        """Logical lines, oldest first (the last ``tail`` of them with ``tail``)."""
        lines = (line for run in self.runs() for line in expand_runs((run,)))
        tail = self.options.tail
        if tail is None:
            return lines
        return iter(deque(lines, maxlen=tail))


def read_lines(
    source: LogSource,
    options: ReadOptions | None = None,
    *,
    stats: ReadStats | None = None,
    on_error: ErrorHandler | None = None,
) -> Iterator[LogLine]:
    """Logical lines of one source (see :class:`SourceReader`)."""
    reader = SourceReader(source, options or ReadOptions(), stats=stats, on_error=on_error)
    return reader.lines()


def read_log_file(
    path: str, *, merge_partials: bool = True, on_error: ErrorHandler | None = None
) -> list[LogLine]:
    """Every logical line of one CRI log file (``.gz`` too) — for tests and ExecSync."""
    source = LogSource.for_file(path)
    source = LogSource(source.info, source.directory, source.base, static=True)
    options = ReadOptions(merge_partials=merge_partials)
    return list(SourceReader(source, options, on_error=on_error).lines())


def merge_lines(sources: Iterable[Iterable[LogLine]]) -> Iterator[LogLine]:
    """Several sources' lines in time order (each source must be in time order)."""
    return heapq.merge(*sources, key=_line_time)


def _line_time(line: LogLine) -> int:
    return line.ns if line.ns >= 0 else parse_timestamp(line.timestamp)


def merge_runs(sources: Iterable[Iterable[LineRun]]) -> Iterator[LineRun]:
    """Several sources' runs in time order (each source must be in time order).

    A run's lines share one timestamp, so ordering runs orders their lines.
    """
    return heapq.merge(*sources, key=_run_time)


def _run_time(run: LineRun) -> int:
    return run.ns if run.ns >= 0 else parse_timestamp(run.timestamp)


# ---------------------------------------------------------------------------
# inotify, through libc (the package imports only the standard library)

IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_MASK_ADD: Final = 0x20000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

_DIR_MASK: Final = (
    IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_FILE_MASK: Final = IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB
_EVENT_HEADER: Final = struct.Struct("iIII")


class InotifyEvent(NamedTuple):
    # A tuple, not a dataclass: hundreds of followed files make thousands a second.
    wd: int
    mask: int
    cookie: int
    name: str


class Inotify:
    """A non-blocking inotify instance (``inotify_init1``/``inotify_add_watch`` via ctypes)."""

    _libc: ctypes.CDLL | None = None

    def __init__(self) -> None:
        libc = self._load()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_init1.restype = ctypes.c_int
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_add_watch.restype = ctypes.c_int
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.inotify_rm_watch.restype = ctypes.c_int
            cls._libc = libc
        return cls._libc

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        wd: int = self._load().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}", path)
        return wd

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the kernel already dropped the watch (its inode is gone).
        self._load().inotify_rm_watch(self.fd, wd)

    def read_events(self) -> list[InotifyEvent]:
        events: list[InotifyEvent] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            pos = 0
            size = len(data)
            header = _EVENT_HEADER.size
            unpack = _EVENT_HEADER.unpack_from
            while pos + header <= size:
                wd, mask, cookie, length = unpack(data, pos)
                pos += header
                if length:
                    name = os.fsdecode(data[pos : pos + length].split(b"\0", 1)[0])
                    pos += length
                else:
                    name = ""  # an event on a watched file itself
                events.append(InotifyEvent(wd, mask, cookie, name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------------
# Following across rotations


class RotationTracker:
    """Decides when a follower may leave the file it reads, and what comes next.

    Fed with directory listings (:meth:`observe`), the writer's activity on the file
    being read (:meth:`writer_wrote`, :meth:`writer_closed`, one inotify read per
    :meth:`new_batch`) and growth seen by the reader (:meth:`grew`).

    The file being read is finished once a newer segment exists *and* one of:

    * its writer closed it after it was rotated (the runtime's reopen is done);
    * it has no links left (the kubelet compressed and deleted it);
    * two newer segments exist (a whole rotation has passed since);
    * nothing was written to it for ``grace_ns`` since the newer segment appeared.

    A close seen before the file was rotated is stale (a reopen of a file that was
    not renamed) and is forgotten when the rename is observed, unless it arrived in
    the same inotify read as that observation: there the order is unknown, and a late
    write still clears it, since every write after a close does.
    """

    def __init__(self, grace_ns: int = ROTATION_GRACE_NS) -> None:
        self.grace_ns = grace_ns
        self.entries: list[Segment] = []
        self._batch = 0
        self._closed: dict[int, int] = {}
        self._rotated: set[int] = set()
        self._known: dict[int, Segment] = {}
        self._waiting_since: dict[int, int] = {}
        self._grew_at: dict[int, int] = {}

    def new_batch(self) -> None:
        self._batch += 1

    def writer_closed(self, ino: int) -> None:
        self._closed[ino] = self._batch

    def writer_wrote(self, ino: int) -> None:
        self._closed.pop(ino, None)

    def grew(self, ino: int, now_ns: int) -> None:
        self._grew_at[ino] = now_ns

    def observe(self, entries: Sequence[Segment]) -> None:
        self.entries = sorted(entries, key=lambda entry: entry.key)
        for entry in self.entries:
            if entry.compressed or not entry.ino:
                continue
            self._known[entry.ino] = entry
            if not entry.live and entry.ino not in self._rotated:
                self._rotated.add(entry.ino)
                if self._closed.get(entry.ino, self._batch) < self._batch:
                    del self._closed[entry.ino]

    def forget(self, ino: int) -> None:
        for table in (self._closed, self._waiting_since, self._grew_at):
            table.pop(ino, None)
        self._known.pop(ino, None)
        self._rotated.discard(ino)

    def position(
        self,
        ino: int,
        head: Callable[[], bytes] | None = None,
        gz_head: Callable[[Segment, int], bytes] | None = None,
    ) -> SegmentKey | None:
        """Where the file ``ino`` sits in the set now.

        By inode while its plain file exists; once compressed and deleted, by finding
        the ``.gz`` that starts with the same bytes; else where it was last seen.
        """
        for entry in self.entries:
            if entry.ino == ino and not entry.compressed:
                return entry.key
        if head is not None and gz_head is not None:
            prefix = head()
            if prefix:
                for entry in self.entries:
                    if entry.compressed and gz_head(entry, len(prefix)) == prefix:
                        return entry.key
        known = self._known.get(ino)
        return known.key if known is not None else None

    def next_after(self, key: SegmentKey | None) -> Segment | None:
        for entry in self.entries:
            if key is None or entry.key > key:
                return entry
        return None

    def decide(
        self,
        ino: int,
        now_ns: int,
        *,
        deleted: bool = False,
        head: Callable[[], bytes] | None = None,
        gz_head: Callable[[Segment, int], bytes] | None = None,
    ) -> Segment | None:
        """The segment to continue with once ``ino`` is drained, or None to stay on it."""
        key = self.position(ino, head, gz_head)
        if key is None:
            return None
        successor = self.next_after(key)
        if successor is None:
            self._waiting_since.pop(ino, None)
            return None
        since = self._waiting_since.setdefault(ino, now_ns)
        quiet_since = max(since, self._grew_at.get(ino, since))
        if (
            ino in self._closed
            or deleted
            or self.next_after(successor.key) is not None
            or now_ns - quiet_since >= self.grace_ns
        ):
            return successor
        return None

    def wake_in(self, ino: int, now_ns: int) -> int | None:
        """Nanoseconds until :meth:`decide` may change its mind with no new event."""
        since = self._waiting_since.get(ino)
        if since is None:
            return None
        quiet_since = max(since, self._grew_at.get(ino, since))
        return max(0, quiet_since + self.grace_ns - now_ns)


Notice = Callable[[str], None]
WatchHandler = Callable[[InotifyEvent], None]


class Watches:
    """One inotify instance shared by many watchers, events dispatched by descriptor.

    The kernel gives one descriptor per inode, so two watchers of the same directory
    share it: handlers are kept per descriptor, masks are added up
    (``IN_MASK_ADD``), and the watch goes only when its last handler does.
    """

    def __init__(self, inotify: Inotify) -> None:
        self.inotify = inotify
        self._handlers: dict[int, list[WatchHandler]] = {}

    def add(self, path: str, mask: int, handler: WatchHandler) -> int:
        wd = self.inotify.add_watch(path, mask | IN_MASK_ADD)
        self._handlers.setdefault(wd, []).append(handler)
        return wd

    def remove(self, wd: int, handler: WatchHandler) -> None:
        handlers = self._handlers.get(wd)
        if handlers is None:
            return  # the kernel dropped it (IN_IGNORED)
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            del self._handlers[wd]
            self.inotify.rm_watch(wd)

    def dispatch(self, events: Iterable[InotifyEvent]) -> None:
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                # Events were lost: every watcher must look again.
                for handler in {h for hs in self._handlers.values() for h in hs}:
                    handler(event)
                continue
            for handler in list(self._handlers.get(event.wd, ())):
                handler(event)
            if event.mask & IN_IGNORED:
                self._handlers.pop(event.wd, None)

    def __len__(self) -> int:
        return len(self._handlers)


@dataclass(frozen=True, slots=True)
class _Parked:
    """A followed file closed while idle: enough to find and reopen it by position."""

    path: str
    ino: int
    offset: int
    size: int
    head: bytes


class _Follower:
    """Follows one source: reads the current file, switches segments as told.

    An idle follower may be *parked* (:meth:`park`): its descriptor is closed but its
    inotify watch, which holds the inode and not the descriptor, stays; the next
    write, rename or listing change reopens the file by inode and goes on from the
    same offset (from the ``.gz`` copy if the file was compressed away meanwhile).
    """

    def __init__(
        self,
        source: LogSource,
        options: ReadOptions,
        watches: Watches,
        stats: ReadStats,
        on_error: ErrorHandler,
        parse_times: bool,
        grace_ns: int,
        notice: Notice | None = None,
    ) -> None:
        self.source = source
        self.options = options
        self.watches = watches
        self.stats = stats
        self.on_error = on_error
        self.notice = notice
        self.tracker = RotationTracker(grace_ns)
        self.cur: _PlainFile | None = None
        self.cur_wd = -1
        self.offset = 0
        self.pos_key: SegmentKey | None = None
        self.need_scan = True
        self.more = False
        #: Something happened (an event, a timer): :meth:`step` has work.
        self.dirty = True
        #: The directory is gone (the pod or container was removed).
        self.gone = False
        self.parked: _Parked | None = None
        self._parked_event = False
        self.last_active = 0
        self.dir_wd = watches.add(source.directory, _DIR_MASK, self.handle)
        # Open the live file before listing: whatever the listing shows older than it
        # is history, and nothing rotated in between can be missed.
        entries = source.listing()
        live = entries[-1] if entries else None
        if live is not None and not live.compressed:
            try:
                self._set_current(_PlainFile(live.path, stats))
            except FileNotFoundError:
                pass
        self.scan()
        history: list[Segment] = []
        if self.cur is not None:
            key = self.tracker.position(self.cur.ino)
            if key is not None and options.all_rotated:
                history = [entry for entry in self.tracker.entries if entry.key < key]
            history.append(Segment(self.cur.path, key or (0, 1, 0, ""), False, self.cur.ino))
            self.pos_key = key
        else:
            # No live file: a single gzipped file named directly, or a container whose
            # live file is missing right now.
            if options.all_rotated or source.static:
                history = list(self.tracker.entries)
            self.pos_key = self.tracker.entries[-1].key if self.tracker.entries else None
        self.reader = SourceReader(
            source,
            options,
            stats=stats,
            on_error=on_error,
            parse_times=parse_times,
            segments=history,
            live=self.cur,
            follow=True,
        )
        self.decoder = self.reader.decoder

    @property
    def label(self) -> str:
        info = self.source.info
        if info.pod is not None and info.container is not None:
            return f"{info.namespace}/{info.pod}/{info.container}"
        return info.label

    def history_runs(self) -> Iterator[LineRun]:
        yield from self.reader.runs()
        if self.cur is not None:
            self.offset = self.reader.live_end

    def history(self) -> Iterator[LogLine]:
        for run in self.history_runs():
            yield from expand_runs((run,))

    def _set_current(self, file: _PlainFile, wd: int = -1) -> None:
        self.cur = file
        self.offset = 0
        if wd < 0:
            # Watching /proc/self/fd/N pins the watch to our inode, whatever its name.
            wd = self.watches.add(f"/proc/self/fd/{file.fd}", _FILE_MASK, self.handle)
        self.cur_wd = wd

    def _close_current(self) -> None:
        if self.cur is None and self.parked is None:
            return
        self.watches.remove(self.cur_wd, self.handle)
        if self.cur is not None:
            self.tracker.forget(self.cur.ino)
            self.cur.close()
        elif self.parked is not None:
            self.tracker.forget(self.parked.ino)
        self.cur = None
        self.parked = None
        self.cur_wd = -1

    def scan(self) -> None:
        self.tracker.observe(self.source.listing())
        self.need_scan = False

    def handle(self, event: InotifyEvent) -> None:
        self.dirty = True
        if event.mask & IN_Q_OVERFLOW:
            self.need_scan = True
            self._parked_event = True
            return
        if event.wd == self.dir_wd:
            self.need_scan = True
            if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED) and not event.name:
                self.gone = True
        if event.wd == self.cur_wd:
            self._parked_event = True
            ino = self.cur.ino if self.cur is not None else None
            if ino is None and self.parked is not None:
                ino = self.parked.ino
            if ino is not None:
                if event.mask & IN_MODIFY:
                    self.tracker.writer_wrote(ino)
                if event.mask & IN_CLOSE_WRITE:
                    self.tracker.writer_closed(ino)
            if event.mask & IN_ATTRIB:
                self.need_scan = True

    # -- idle files ------------------------------------------------------------

    @property
    def holds_file(self) -> bool:
        return self.cur is not None

    def can_park(self) -> bool:
        """Every whole line read (an unfinished last one waits in the file), no timer."""
        cur = self.cur
        return (
            cur is not None
            and not self.more
            and not self.gone
            and not self.dirty
            and self.tracker.wake_in(cur.ino, 0) is None
        )

    def park(self) -> None:
        """Close the descriptor of a drained, idle file; keep its watch and position."""
        cur = self.cur
        assert cur is not None
        self.parked = _Parked(cur.path, cur.ino, self.offset, cur.size(), cur.pread(256, 0))
        self._parked_event = False
        cur.close()
        self.cur = None

    def _unparked(self) -> bool:
        """Reopen a parked file if something may have changed; False to stay parked."""
        parked = self.parked
        assert parked is not None
        if not self._parked_event:
            # Only a timer or a listing change: look before reopening anything.
            try:
                st = os.stat(parked.path)
                unchanged = st.st_ino == parked.ino and st.st_size == parked.size
            except FileNotFoundError:
                unchanged = False
            if unchanged and self.tracker.next_after(self.tracker.position(parked.ino)) is None:
                return False
        self._parked_event = False
        self.parked = None
        file = self._open_inode(parked)
        if file is None:
            # Renamed since the last listing, perhaps: list again before giving up.
            self.scan()
            file = self._open_inode(parked)
        if file is not None:
            self._set_current(file, self.cur_wd)
            self.offset = parked.offset
            return True
        # Gone by name and by inode: compressed away, or deleted with its container.
        self.watches.remove(self.cur_wd, self.handle)
        self.cur_wd = -1
        key = self.tracker.position(parked.ino, lambda: parked.head, self._gz_head)
        known = self.tracker.next_after(None)
        self.tracker.forget(parked.ino)
        for entry in self.tracker.entries:
            if entry.key == key and entry.compressed:
                self._parked_gz = (entry, parked.offset)
                self.pos_key = entry.key
                return True
        self.pos_key = key if key is not None else (known.key if known else None)
        self.on_error(
            MalformedLine(
                parked.path,
                None,
                "deleted while closed for being idle; lines written just before are lost",
            )
        )
        return True

    def _open_inode(self, parked: _Parked) -> _PlainFile | None:
        for path in [parked.path] + [e.path for e in self.tracker.entries if e.ino == parked.ino]:
            try:
                file = _PlainFile(path, self.stats)
            except FileNotFoundError:
                continue
            if file.ino == parked.ino:
                return file
            file.close()
        return None

    # -- reading ---------------------------------------------------------------

    def _read_current(self, final: bool, now_ns: int, budget: int) -> list[LineRun]:
        cur = self.cur
        assert cur is not None
        size = cur.size()
        if size < self.offset:
            self.on_error(MalformedLine(cur.path, None, "file was truncated, reading it again"))
            self.offset = 0
        out: list[LineRun] = []
        hi = min(size, self.offset + budget)
        for offset, data, stop in _forward_blocks(cur, self.offset, hi):
            if not final and data[stop - 1 : stop] != b"\n":
                break
            block = Block(data, cur.path, offset, None, cur.count_lines, stop=stop)
            out += self.decoder.feed_runs(block)
            self.offset = offset + stop
            if self.decoder.done:
                break
        self.more = self.offset < size and hi < size
        if out:
            self.tracker.grew(cur.ino, now_ns)
            self.last_active = now_ns
        return out

    def _gz_head(self, segment: Segment, size: int) -> bytes:
        try:
            with gzip.open(segment.path, "rb") as gz:
                return gz.read(size)
        except (OSError, EOFError, zlib.error):
            return b""

    _parked_gz: tuple[Segment, int] | None = None

    def _read_parked_gz(self) -> list[LineRun]:
        """The rest of a file compressed away while it was parked, from its ``.gz``."""
        assert self._parked_gz is not None
        segment, skip = self._parked_gz
        self._parked_gz = None
        out: list[LineRun] = []
        for offset, data in _gz_blocks(segment.path, self.stats, self.on_error):
            if offset + len(data) <= skip:
                continue
            if offset < skip:
                data = data[skip - offset :]
                offset = skip
            out += self.decoder.feed_runs(Block(data, segment.path, offset))
        return out

    def step(self, now_ns: int, budget: int = 8 * FORWARD_BLOCK) -> list[LineRun]:
        self.more = False
        self.dirty = False
        out: list[LineRun] = []
        if self.need_scan:
            self.scan()
        if self.parked is not None:
            if not self._unparked():
                return out
            if self._parked_gz is not None:
                out += self._read_parked_gz()
        for _ in range(64):
            if self.decoder.done:
                break
            cur = self.cur
            if cur is not None:
                out += self._read_current(False, now_ns, budget)
                if self.more:
                    break
                successor = self.tracker.decide(
                    cur.ino,
                    now_ns,
                    deleted=cur.links() == 0,
                    head=functools.partial(cur.pread, 256, 0),
                    gz_head=self._gz_head,
                )
                if successor is None:
                    break
                out += self._read_current(True, now_ns, 1 << 62)
                self.pos_key = self.tracker.position(cur.ino) or successor.key
                self._close_current()
            else:
                successor = self.tracker.next_after(self.pos_key)
                if successor is None:
                    break
            restart = self.pos_key is not None and successor.restart != self.pos_key[0]
            out += self._enter(successor)
            if restart:
                # The restart's notice goes between the old instance's lines and these.
                self.dirty = True
                break
        return out

    def _enter(self, segment: Segment) -> list[LineRun]:
        """Start reading ``segment``; a ``.gz`` is finished by definition, so read it all."""
        out: list[LineRun] = []
        if self.pos_key is not None and segment.restart != self.pos_key[0]:
            out = self.decoder.finish_runs()
            self.decoder.merger = PartialMerger(self.source.info)
            if self.notice is not None:
                self.notice(f"{self.label} restarted ({segment.name})")
        if segment.compressed:
            for offset, data in _gz_blocks(segment.path, self.stats, self.on_error):
                out += self.decoder.feed_runs(Block(data, segment.path, offset))
            self.pos_key = segment.key
            return out
        try:
            file = _PlainFile(segment.path, self.stats)
        except FileNotFoundError:
            self.scan()
            return out
        if file.ino != segment.ino:
            # Renamed under us since the listing; list again and retry by name.
            file.close()
            self.scan()
            return out
        self._set_current(file)
        self.pos_key = segment.key
        return out

    def finish(self, now_ns: int) -> list[LineRun]:
        """The container is gone: read what is left and end unfinished lines."""
        self.scan()
        if self.parked is not None:
            self._parked_event = True
        out: list[LineRun] = []
        for _ in range(64):
            out += self.step(now_ns, 1 << 62)
            if not self.dirty:  # (set again when it stopped at a restart)
                break
        if self.cur is not None:
            out += self._read_current(True, now_ns, 1 << 62)
        return out + self.decoder.finish_runs()

    def wake_in(self, now_ns: int) -> int | None:
        if self.more:
            return 0
        if self.cur is None:
            return None
        return self.tracker.wake_in(self.cur.ino, now_ns)

    def close(self) -> None:
        self._close_current()
        self.watches.remove(self.dir_wd, self.handle)
        self.reader.close()


#: Followed files kept open at once; idle ones beyond it are parked.
DEFAULT_MAX_OPEN: Final = 128
#: Bytes one follower reads in one step when many are followed (fairness, memory).
SHARED_STEP_BUDGET: Final = FORWARD_BLOCK
#: Followers the once-a-tick safety net looks at per tick.
TICK_SLICE: Final = 64


class FollowGroup:
    """Follows several sources with one inotify instance.

    ``history()`` gives each source's past lines (tail/since applied), then ``run()``
    emits new lines in batches, in time order across sources within ``merge_window_ns``,
    until ``should_stop`` returns True (the CRI side's hook: "the container has
    exited"), ``--until`` is passed, or the caller interrupts it.  Close it in all
    cases.

    Sources can be added while running (:meth:`add_source`, e.g. by
    :class:`iottymux.logdiscover.NodeDiscovery` on its own watches of
    :attr:`watches`); a source whose directory is removed is read to its end and
    dropped.  Only the followers with something to do are stepped, and at most
    ``max_open`` followed files stay open: the least recently active idle ones are
    parked and reopened by position when they change.
    """

    def __init__(
        self,
        sources: Sequence[LogSource],
        options: ReadOptions,
        *,
        stats: ReadStats | None = None,
        on_error: ErrorHandler | None = None,
        parse_times: bool = False,
        grace_ns: int = ROTATION_GRACE_NS,
        tick_ns: int = FOLLOW_TICK_NS,
        merge_window_ns: int = 0,
        max_open: int = DEFAULT_MAX_OPEN,
        notice: Notice | None = None,
    ) -> None:
        from iottymux.logmerge import MergeWindow

        self.stats = stats if stats is not None else ReadStats()
        self.on_error = on_error or _ignore
        self.options = options
        self.tick_ns = tick_ns
        self.grace_ns = grace_ns
        self.parse_times = parse_times or len(sources) > 1 or merge_window_ns > 0
        self.max_open = max(1, max_open)
        self.notice = notice
        #: The notice for a source whose directory went away (None: no notice).
        self.on_gone: Callable[[LogSource], str | None] | None = None
        self._notices: list[str] = []
        self._announce: list[str] = []
        self.merge = MergeWindow(merge_window_ns)
        self.inotify = Inotify()
        self.watches = Watches(self.inotify)
        self.followers: list[_Follower] = []
        self._by_dir: dict[str, _Follower] = {}
        self._fresh: list[_Follower] = []
        #: Sources are expected to come and go: run() does not end when all are gone.
        self.open_ended = False
        #: Followers left unread in the last pass (the merge buffer was full).
        self.backlog = False
        self._next_turn = 0
        self._tick_cursor = 0
        try:
            for source in sources:
                self.add_source(source)
        except BaseException:
            self.close()
            raise

    def add_source(self, source: LogSource, *, new: bool = False) -> bool:
        """Follow ``source`` too; False if it is followed already.

        A ``new`` source appeared while following: it is read from its first line
        (every segment, no tail), during :meth:`run`.
        """
        key = source_key(source)
        if key in self._by_dir:
            return False
        options = self.options
        if new:
            options = replace(options, tail=None, all_rotated=True)
            self.parse_times = True
        follower = _Follower(
            source,
            options,
            self.watches,
            self.stats,
            self.on_error,
            self.parse_times,
            self.grace_ns,
            self.queue_notice,
        )
        self.followers.append(follower)
        self._by_dir[key] = follower
        if new:
            self._fresh.append(follower)
        return True

    def following(self, source: LogSource) -> bool:
        return source_key(source) in self._by_dir

    def queue_notice(self, text: str, *, before_reading: bool = False) -> None:
        """A one-line notice, given out after the lines read before it.

        ``before_reading``: also before the lines of the next read (a source that
        starts being followed is announced before its first line).
        """
        (self._announce if before_reading else self._notices).append(text)

    def _flush_notices(self, notices: list[str]) -> None:
        if self.notice is not None:
            for text in notices:
                self.notice(text)
        notices.clear()

    def history_runs(self) -> Iterator[LineRun]:
        histories = [follower.history_runs() for follower in self.followers]
        if len(histories) == 1:
            yield from histories[0]
            return
        if self.options.tail is None:
            yield from merge_runs(histories)
            return
        lines = merge_lines(
            (line for run in history for line in expand_runs((run,))) for history in histories
        )
        yield from (LineRun.of(line) for line in deque(lines, maxlen=self.options.tail))

    def history(self) -> Iterator[LogLine]:
        for run in self.history_runs():
            yield from expand_runs((run,))

    def run(
        self,
        emit: Callable[[list[LogLine]], bool | None],
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Emit new lines until stopped; ``emit`` returning False also stops."""
        self.run_runs(lambda runs: emit(expand_runs(runs)), should_stop)

    def run_runs(
        self,
        emit: Callable[[list[LineRun]], bool | None],
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Emit new runs of lines until stopped; ``emit`` returning False also stops."""
        poller = select.poll()
        poller.register(self.inotify.fd, select.POLLIN)
        last_tick = time.monotonic_ns()
        merge = self.merge
        while True:
            now = time.monotonic_ns()
            tick = now - last_tick >= self.tick_ns
            if tick:
                # The safety net: look again even if inotify said nothing.
                last_tick = now
            if self._announce:
                if merge.buffered and emit(merge.drain()) is False:
                    return
                self._flush_notices(self._announce)
            self._read_all(now, tick)
            several = len(self.followers) > 1 or merge.buffered > 0
            # A notice (a restart, a removal) comes after every line read before it.
            batch = merge.pop_due(now) if several and not self._notices else merge.drain()
            if batch and emit(batch) is False:
                return
            self._flush_notices(self._notices)
            if (
                self.followers
                and not self.open_ended
                and all(follower.decoder.done for follower in self.followers)
            ):
                emit(merge.drain())
                return
            if should_stop is not None and should_stop():
                now = time.monotonic_ns()
                for follower in self.followers:
                    merge.add(follower, follower.finish(now), now)
                final = merge.drain()
                if final:
                    emit(final)
                self._flush_notices(self._notices)
                return
            self._park_idle()
            timeout = self.tick_ns - (time.monotonic_ns() - last_tick)
            for follower in self.followers:
                wake = follower.wake_in(now)
                if wake is not None:
                    timeout = min(timeout, wake)
            deadline = merge.next_deadline()
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic_ns())
            if self.backlog:
                timeout = 0
            if timeout > 0:
                poller.poll(max(1, (timeout + 999_999) // 1_000_000))
            events = self.inotify.read_events()
            for follower in self.followers:
                follower.tracker.new_batch()
            self.watches.dispatch(events)

    def _read_all(self, now: int, tick: bool) -> None:
        """Step every follower with work, into the merge window; retire the gone.

        Open files stay within ``max_open``: before a follower that may open one is
        stepped, the least recently active drained file is parked.
        """
        merge = self.merge
        holders = sorted((f for f in self.followers if f.holds_file), key=lambda f: f.last_active)
        room = _Room(holders, self.max_open)
        fresh, self._fresh = self._fresh, []
        for follower in fresh:
            merge.add(follower, list(follower.history_runs()), now)
            room.opened(follower)
        many = len(self.followers) > 8
        budget = SHARED_STEP_BUDGET if many else 8 * FORWARD_BLOCK
        gone: list[_Follower] = []
        deferred: list[_Follower] = []
        # Start where the last pass stopped: with the buffer full, every follower
        # still gets its turn.
        count = len(self.followers)
        start = self._next_turn % count if count else 0
        order = self.followers[start:] + self.followers[:start]
        self.backlog = False
        if tick and count:
            # The safety net looks at a slice of the followers per tick: with
            # thousands of idle containers it stays a small, bounded cost.
            for index in range(self._tick_cursor, self._tick_cursor + min(count, TICK_SLICE)):
                checked = self.followers[index % count]
                checked.need_scan = True
                checked.dirty = True
            self._tick_cursor = (self._tick_cursor + TICK_SLICE) % count
        for turn, follower in enumerate(order):
            if follower.gone:
                gone.append(follower)
                continue
            wake = follower.wake_in(now)
            if follower.dirty or (wake is not None and wake <= 0):
                if merge.buffered > merge.max_bytes:
                    # Memory stays bounded: the rest waits for the next pass.
                    follower.dirty = True
                    self.backlog = True
                    self._next_turn = start + turn
                    continue
                if not follower.holds_file and not room.make(follower):
                    deferred.append(follower)  # every open file is still busy
                    continue
                merge.add(follower, follower.step(now, budget), now)
                room.opened(follower)
        # Those stepped since are drained and can make room now.  A follower still
        # without room stays dirty: it goes first once a rotation timer or a read
        # budget (both of which wake the loop) frees a file.
        for follower in deferred:
            if room.make(follower):
                merge.add(follower, follower.step(now, budget), now)
                room.opened(follower)
        for follower in gone:
            merge.add(follower, follower.finish(now), now)
            self._drop(follower)
            text = (
                self.on_gone(follower.source)
                if self.on_gone is not None
                else f"{follower.label} removed"
            )
            if text is not None:
                self.queue_notice(text)

    def _drop(self, follower: _Follower) -> None:
        follower.close()
        self.followers.remove(follower)
        self._by_dir.pop(source_key(follower.source), None)

    def _park_idle(self) -> None:
        holding = [follower for follower in self.followers if follower.holds_file]
        excess = len(holding) - self.max_open
        if excess <= 0:
            return
        idle = sorted(
            (follower for follower in holding if follower.can_park()),
            key=lambda follower: follower.last_active,
        )
        for follower in idle[:excess]:
            follower.park()

    @property
    def open_files(self) -> int:
        return sum(follower.holds_file for follower in self.followers)

    def close(self) -> None:
        for follower in self.followers:
            follower.close()
        self.followers = []
        self._by_dir.clear()
        self.inotify.close()


class _Room:
    """Keeps a group's open followed files within its limit while it steps them."""

    def __init__(self, holders: list[_Follower], limit: int) -> None:
        self.queue = deque(holders)  # least recently active first
        self.open = len(holders)
        self.limit = limit

    def opened(self, follower: _Follower) -> None:
        if follower.holds_file and follower not in self.queue:
            self.queue.append(follower)
            self.open += 1
        self.make(None)  # (a file that cannot be parked yet waits for _park_idle)

    def make(self, keep: _Follower | None) -> bool:
        """Park idle files until one more may be opened (or ``keep``'s fits).

        False if too many files are busy (unread data, a rotation timer) to park.
        """
        want = self.limit - (1 if keep is not None else 0)
        skipped: list[_Follower] = []
        while self.open > want and self.queue:
            follower = self.queue.popleft()
            if not follower.holds_file:
                self.open -= 1
            elif follower is not keep and follower.can_park():
                follower.park()
                self.open -= 1
            else:
                skipped.append(follower)
        self.queue.extendleft(reversed(skipped))
        return self.open <= want


def source_key(source: LogSource) -> str:
    return os.path.join(source.directory, source.base or "")
