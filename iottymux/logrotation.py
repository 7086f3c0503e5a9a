"""When a follower may leave a rotated file, and what it reads next: a state machine.

Rotation the kubelet's way is a rename, a reopen that creates a new live file, a
last flush of the runtime into the old file, and later a gzip of the old file.  A
follower keeps reading the renamed file (its descriptor follows the inode) until
:class:`RotationTracker` says its writer is done with it, then continues with the
next segment by name.  The tracker takes observations (directory listings, writer
close/write events, the clock) and returns decisions: no files, no I/O, so it is
tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from iottymux.logsegments import Segment, SegmentKey

#: How long a rotated file must stay quiet before the follower leaves it without
#: having seen its writer close it.
ROTATION_GRACE_NS: Final = 1_000_000_000


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
