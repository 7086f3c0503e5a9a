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
import time
from collections.abc import Callable, Sequence

from iottymux.beneath import open_beneath
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

#: How long a reopen waits for a line cut into P pieces to end before it gives
#: up keeping that line whole and switches files anyway.
SWITCH_DEADLINE = 2.0

#: Errors that mean "the disk cannot take this now"; anything else is a bug we
#: want to see, but we still must not stop draining, so it is counted the same way.
DROP_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ESTALE}
)


def open_log(path: str, root: str | None = None) -> tuple[int, list[str]]:
    """Open (creating it and its directories) a CRI log file for appending.

    Returns the fd and what this call created -- the file and its new parent
    directories, deepest first -- so that a failed container can take them back.
    With ``root`` (the pod's log directory), ``path`` must lie beneath it and is
    opened without following any symlink below ``root``.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    if root is not None:
        prefix = root.rstrip("/") + "/"
        relative = path[len(prefix) :] if path.startswith(prefix) else ""
        if not relative:
            raise OSError(errno.EINVAL, f"not beneath {root}", path)
        return open_beneath(root, relative, flags, LOG_FILE_MODE)
    made: list[str] = []
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    if made:
        os.makedirs(made[0], mode=0o755, exist_ok=True)
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
        "dropping",
        "drop_episodes",
    )

    def __init__(self) -> None:
        self.lines = 0  # records written, P pieces included
        self.bytes = 0  # bytes of app output taken in
        self.reads = 0  # reads of app output (bytes / reads: how well reads batch)
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.write_errors = 0
        self.last_error = ""  # cleared once a write succeeds again
        self.dropping = False  # the last write failed: an episode of drops is under way
        self.drop_episodes = 0

    def as_dict(self) -> dict[str, int | str | bool]:
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "reads": self.reads,
            "dropped_lines": self.dropped_lines,
            "dropped_bytes": self.dropped_bytes,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "dropping": self.dropping,
            "drop_episodes": self.drop_episodes,
        }


#: Told when an episode of drops starts (True) and when writes succeed again (False).
EpisodeHook = Callable[[bool], None]


class LogFile:
    """An ``O_APPEND`` file written one batch at a time, dropping on failure."""

    __slots__ = ("created", "fd", "on_episode", "path", "root", "stats")

    def __init__(
        self,
        path: str,
        stats: LogStats,
        on_episode: EpisodeHook | None = None,
        root: str | None = None,
    ) -> None:
        self.path = path
        self.root = root
        self.fd, self.created = open_log(path, root)
        self.stats = stats
        self.on_episode = on_episode

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
        if self.stats.dropping:
            self._recovered()
        return True

    def _recovered(self) -> None:
        self.stats.dropping = False
        self.stats.last_error = ""
        if self.on_episode is not None:
            self.on_episode(False)

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
        if not self.stats.dropping:
            self.stats.dropping = True
            self.stats.drop_episodes += 1
            if self.on_episode is not None:
                self.on_episode(True)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AppLog:
    """Framing plus file for one app: stdout and stderr share the file."""

    def __init__(
        self,
        path: str,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        *,
        tty: bool = False,
        on_episode: EpisodeHook | None = None,
        root: str | None = None,
    ) -> None:
        self.stats = LogStats()
        self.on_episode = on_episode
        self.file = LogFile(path, self.stats, on_episode, root)
        #: The file a reopen made, used once no line is half-written (see reopen).
        self._next: LogFile | None = None
        self._switch_by = 0.0
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
        if self._next is not None:
            self._maybe_switch()

    def stats_dict(self) -> dict[str, int | str | bool]:
        # P records caused by the max line size: the framers count them.
        splits = sum(f.splits for f in self.framers.values())
        return {**self.stats.as_dict(), "partial_splits": splits}

    def end_of_stream(self, stream: bytes) -> None:
        """The stream hit EOF: write its unfinished line, if any, as a last ``P``."""
        out, records = self.framers[stream].flush(self._clock.now())
        if records:
            self.file.write([out], len(out), records)
        if self._next is not None:
            self._maybe_switch()

    def reopen(self) -> None:
        """Switch to a new file at the same path; it exists when this returns.

        No line is split across the two files.  An unfinished line that is still
        whole in its framer goes, whole, to the new file.  A line already cut
        into ``P`` pieces (longer than the maximum line size) is finished in the
        old file first: the switch waits for its ``F`` -- without blocking, at
        the next write -- or at most :data:`SWITCH_DEADLINE` seconds.  If the
        new file cannot be opened the old one stays in use and the error is raised.
        """
        new = LogFile(self.file.path, self.stats, self.on_episode, self.file.root)
        if self._next is not None:
            self._next.close()  # reopened again before the last switch happened
        self._next = new
        self._switch_by = time.monotonic() + SWITCH_DEADLINE
        self._maybe_switch()

    def _maybe_switch(self) -> None:
        assert self._next is not None
        if any(f.in_line for f in self.framers.values()) and time.monotonic() < self._switch_by:
            return
        old, self.file, self._next = self.file, self._next, None
        old.close()

    def close(self) -> None:
        if self._next is not None:
            self._next.close()
            self._next = None
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
