"""Logical lines: what readers hand out, and the merger that glues ``P`` pieces.

A writer splits a long line into ``P`` pieces finished by an ``F`` record.
:class:`PartialMerger` glues them back, one buffer per stream, so a stdout ``P``
never joins a stderr ``F``.  A logical line takes the timestamp of the record that
finished it: lines then come out of a file in time order, which ``--since``/
``--until``, the merge of several containers and the ``--timestamps`` column rely on.
:class:`LineRun` is the fast form: consecutive lines sharing stream and timestamp,
held as one bytes object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from iottymux.logblocks import replace_prefixes
from iottymux.logformat import LogRecord, parse_timestamp
from iottymux.logsegments import SourceInfo

#: A stream's unfinished line is emitted (incomplete) once its pieces exceed this.
MAX_PENDING: Final = 8 << 20


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
            self._data = replace_prefixes(self._data, self.prefix, b"\n")
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
