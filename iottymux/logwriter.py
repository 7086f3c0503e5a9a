"""The CRI log file of one app: append-only, never blocking the app.

:class:`LogFile` owns the file descriptor, writes one buffer per read of the
app's output, and survives a full or failing disk: a batch that cannot be written
is dropped whole (a short write is cut back with ``ftruncate`` so no half record
is left in the file), counted, and the next batch is tried again, so the monitor
keeps draining the app's pipes and the app never blocks on a full disk.

:class:`AppLog` puts the per-stream :class:`~iottymux.logformat.LineFramer`
objects in front of one :class:`LogFile` and implements the synchronous reopen.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from iottymux.logformat import (
    DEFAULT_MAX_LINE_SIZE,
    STDERR,
    STDOUT,
    Buffer,
    LineFramer,
    TimestampCache,
)

IOV_MAX = os.sysconf("SC_IOV_MAX")

LOG_FILE_MODE = 0o640

#: Errors that mean "the disk cannot take this now"; anything else is a bug we
#: want to see, but we still must not stop draining, so it is counted the same way.
DROP_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ESTALE}
)


def open_log(path: str) -> tuple[int, list[str]]:
    """Open (creating it and its directories) a CRI log file for appending.

    Returns the fd and what this call created — the file and its new parent
    directories, deepest first — so that a failed container can take them back.
    """
    made: list[str] = []
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    if made:
        os.makedirs(made[0], mode=0o755, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_EXCL, LOG_FILE_MODE)
    except FileExistsError:
        return os.open(path, flags, LOG_FILE_MODE), made
    return fd, [path, *made]


class LogStats:
    """Counters reported in the monitor's status (and later as metrics)."""

    __slots__ = (
        "lines",
        "bytes",
        "reads",
        "dropped_lines",
        "dropped_bytes",
        "write_errors",
        "last_error",
    )

    def __init__(self) -> None:
        self.lines = 0  # records written, P pieces included
        self.bytes = 0  # bytes of app output taken in
        self.reads = 0  # reads of app output (bytes / reads: how well reads batch)
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.write_errors = 0
        self.last_error = ""

    def as_dict(self) -> dict[str, int | str]:
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "reads": self.reads,
            "dropped_lines": self.dropped_lines,
            "dropped_bytes": self.dropped_bytes,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }


class LogFile:
    """An ``O_APPEND`` file written one batch at a time, dropping on failure."""

    __slots__ = ("created", "fd", "path", "stats")

    def __init__(self, path: str, stats: LogStats) -> None:
        self.path = path
        self.fd, self.created = open_log(path)
        self.stats = stats

    def write(self, parts: Sequence[Buffer], size: int, records: int) -> bool:
        """Append one batch (``records`` whole records); False if it was dropped."""
        written = 0
        try:
            if len(parts) <= IOV_MAX:
                written = os.writev(self.fd, parts)
            if written < size:
                # Rare: many pieces (long lines cut up), or a short write.
                rest = memoryview(b"".join(parts))
                while written < size:
                    written += os.write(self.fd, rest[written:])
        except OSError as exc:
            self._drop(size, records, written, exc)
            return False
        self.stats.lines += records
        return True

    def _drop(self, size: int, records: int, written: int, exc: OSError) -> None:
        if written:
            # Cut the half-written batch back out, so the file holds only whole
            # records; O_APPEND left the offset at the end of what was written.
            try:
                end = os.lseek(self.fd, 0, os.SEEK_CUR)
                os.ftruncate(self.fd, end - written)
            except OSError:
                pass
        self.stats.dropped_lines += records
        self.stats.dropped_bytes += size
        self.stats.write_errors += 1
        self.stats.last_error = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AppLog:
    """Framing plus file for one app: stdout and stderr share the file."""

    def __init__(
        self, path: str, max_line_size: int = DEFAULT_MAX_LINE_SIZE, *, tty: bool = False
    ) -> None:
        self.stats = LogStats()
        self.file = LogFile(path, self.stats)
        self.framers = {
            STDOUT: LineFramer(STDOUT, max_line_size, crlf=tty),
            STDERR: LineFramer(STDERR, max_line_size, crlf=tty),
        }
        self._clock = TimestampCache()

    @property
    def path(self) -> str:
        return self.file.path

    def write(self, stream: bytes, data: bytes) -> None:
        """Log one read of ``stream`` output: one timestamp, one write."""
        self.stats.bytes += len(data)
        self.stats.reads += 1
        framer = self.framers[stream]
        parts, size, records = framer.feed_parts(data, self._clock.now())
        if records:
            self.file.write(parts, size, records)

    def stats_dict(self) -> dict[str, int | str]:
        # P records caused by the max line size: the framers count them.
        splits = sum(f.splits for f in self.framers.values())
        return {**self.stats.as_dict(), "partial_splits": splits}

    def end_of_stream(self, stream: bytes) -> None:
        """The stream hit EOF: write its unfinished line, if any, as a last ``P``."""
        out, records = self.framers[stream].flush(self._clock.now())
        if records:
            self.file.write([out], len(out), records)

    def reopen(self) -> None:
        """Switch to a new file at the same path.

        The caller has drained the app's pipes into the old file first.  An
        unfinished line stays in its framer and is written, whole, to the new
        file once it ends: no line is split across the two files.  If the new
        file cannot be opened the old one stays in use and the error is raised.
        """
        new = LogFile(self.file.path, self.stats)
        old, self.file = self.file, new
        old.close()

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        """Close, and remove what opening the log created: the container never ran.

        The kubelet counts a container's ``N.log`` files to derive restart counts, so
        a failed create must leave none behind.  A file that was there before stays.
        """
        self.file.close()
        for path in self.file.created:
            try:
                if path == self.file.path:
                    os.unlink(path)
                else:
                    os.rmdir(path)
            except OSError:
                break  # something else put files there: leave it and its parents
