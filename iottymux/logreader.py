"""Reading one container's CRI log: tail, since/until, rotated sets, without following.

:class:`SourceReader` plans a read over a :class:`~iottymux.logsegments.LogSource`'s
segments and decodes it; nothing scans a file to find where to start:

* ``--tail N`` reads backwards from the end in blocks
  (:func:`~iottymux.logfiles.lines_backward`), counting logical lines, until it has N
  and has also reached the first piece of each of those lines; decoding then runs
  forward from that offset only.
* ``--since``/``--until`` binary-search the timestamps of a plain segment
  (:func:`~iottymux.logtime.bisect_lines`), then step back over the pieces of a line
  that began before the boundary.  Gzipped segments cannot be searched: whole segments
  are skipped by the first timestamp of the next one, and the rest is filtered line by
  line.

:class:`~iottymux.logfiles.ReadStats` counts every byte read so callers (and tests)
can check that.  The pieces, each readable alone:

* :mod:`iottymux.logsegments`: which files make up a log (file-set discovery);
* :mod:`iottymux.logfiles`: counted reads of whole-line blocks, gzip, backwards;
* :mod:`iottymux.logtime`: time arguments and the binary search over timestamps;
* :mod:`iottymux.loglines` and :mod:`iottymux.logdecode`: records to logical lines,
  ``P`` pieces merged per stream;
* :mod:`iottymux.logfollow` (with :mod:`iottymux.logrotation` and
  :mod:`iottymux.loginotify`): following across rotations.
"""

from __future__ import annotations

import gzip
import heapq
import os
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from iottymux.logdecode import Block, LineDecoder
from iottymux.logfiles import (
    BACKWARD_BLOCK,
    ErrorHandler,
    PlainFile,
    ReadStats,
    forward_blocks,
    gz_blocks,
    ignore_errors,
    lines_backward,
)
from iottymux.logformat import (
    STREAMS,
    LogFormatError,
    TimestampParser,
    parse_record,
    parse_timestamp,
)
from iottymux.loglines import LineRun, LogLine, PartialMerger, expand_runs
from iottymux.logsegments import LogSource, Segment
from iottymux.logtime import bisect_lines, first_line_after, record_time

__all__ = [
    "SINCE_LOOKBACK",
    "ReadOptions",
    "SourceReader",
    "merge_lines",
    "merge_runs",
    "read_lines",
    "read_log_file",
]

#: How far back ``--since`` looks for a stream whose line may have started before the
#: boundary, when no record of that stream was seen yet (a stream that never writes
#: would otherwise send the search back to the start of the file).
SINCE_LOOKBACK: Final = 256 << 10


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

    def __init__(self, segment: Segment, file: PlainFile | None, end: int) -> None:
        self.segment = segment
        self.file = file
        self.end = end
        self._gz_data: bytes | None = None

    def gz_data(self, stats: ReadStats, on_error: ErrorHandler) -> bytes:
        # Only for tail/since over rotated gzip files: bounded by the kubelet's
        # rotation size, and gzip streams cannot be read backwards.
        if self._gz_data is None:
            self._gz_data = b"".join(
                data for _, data in gz_blocks(self.segment.path, stats, on_error)
            )
            self.end = len(self._gz_data)
        return self._gz_data

    def lines_backward(
        self, hi: int, stats: ReadStats, on_error: ErrorHandler
    ) -> Iterator[tuple[int, bytes]]:
        if self.file is not None:
            yield from lines_backward(self.file, 0, hi)
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
        return record_time(head, parser)


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
        live: PlainFile | None = None,
        follow: bool = False,
    ) -> None:
        self.source = source
        self.options = options
        self.stats = stats if stats is not None else ReadStats()
        self.on_error = on_error or ignore_errors
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
                    file = PlainFile(segment.path, self.stats)
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
    def _last_newline(file: PlainFile, end: int) -> int:
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
                end = (
                    index,
                    bisect_lines(item.file, 0, item.end, lambda t: t > until, self._parser),
                )
            elif options.tail is not None:
                # Counting back for --tail needs the exact end; a gzip stream cannot be
                # searched, but tail decompresses this segment anyway.
                data = item.gz_data(self.stats, self.on_error)
                end = (index, first_line_after(data, until, self._parser))
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
                offset = bisect_lines(item.file, 0, hi, lambda t: t >= since, self._parser)
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
                for offset, data, stop in forward_blocks(file, lo, hi, options.block_size):
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
                    chunks = gz_blocks(
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
