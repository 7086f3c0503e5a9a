"""Reading the bytes of CRI log files: counted reads, whole-line blocks, gzip, backwards.

Every read goes through a :class:`PlainFile` (a descriptor whose ``pread`` calls
are counted in a :class:`ReadStats`) or through :func:`gz_blocks`, so callers and
tests can check what a read cost.  Blocks always end on a line boundary:
:func:`forward_blocks` starts each read where the last whole line ended,
:func:`lines_backward` walks a file from its end for ``--tail``.  What the bytes
mean is :mod:`iottymux.logdecode`'s business.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final

#: Forward reads: large enough that per-block Python overhead vanishes.
FORWARD_BLOCK: Final = 1 << 20
#: Backward reads for ``--tail``: a few hundred typical lines per block.
BACKWARD_BLOCK: Final = 64 << 10


class LogReadError(Exception):
    """A log source cannot be read at all (missing, unreadable, not a log)."""


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


def ignore_errors(_issue: MalformedLine) -> None:
    pass


class PlainFile:
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


def forward_blocks(
    file: PlainFile, start: int, end: int, block_size: int = 0
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


def gz_blocks(
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


def lines_backward(
    file: PlainFile, lo: int, hi: int, block_size: int = 0
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
