"""Blocks of records to logical lines, with stream, since and until filters.

:class:`LineDecoder` takes whole-line :class:`Block` s (from :mod:`iottymux.logfiles`)
and gives :class:`~iottymux.loglines.LineRun` s: runs of whole ``F`` records sharing a
prefix become one run each with bytes operations (:mod:`iottymux.logblocks`); ``P``
pieces and anything odd go through :class:`~iottymux.loglines.PartialMerger` record
by record.  Malformed records are reported with their file and line number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final

from iottymux.logblocks import check_run, full_prefix_end, run_end, strip_run
from iottymux.logfiles import ErrorHandler, MalformedLine, ignore_errors
from iottymux.logformat import STREAMS, LogFormatError, TimestampParser, parse_record
from iottymux.loglines import LineRun, LogLine, PartialMerger, expand_runs
from iottymux.logsegments import SourceInfo


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
        self.on_error = on_error or ignore_errors
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
