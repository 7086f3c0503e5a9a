"""Following logs: new lines of many containers as they are written, across rotations.

:class:`FollowGroup` follows several sources with one inotify instance: it watches
each log *directory* plus the inode of the file being read.  Each source has a
follower that reads the current file as it grows and switches segments as
:class:`~iottymux.logrotation.RotationTracker` decides, reading a ``.gz`` copy when it
fell so far behind that the plain file is gone.  Idle followers are *parked* (their
descriptor closed, their watch kept) so that at most ``max_open`` files are open.
History (tail/since) comes from :class:`~iottymux.logreader.SourceReader` first.
"""

from __future__ import annotations

import functools
import gzip
import os
import select
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

from iottymux.logdecode import Block
from iottymux.logfiles import (
    FORWARD_BLOCK,
    ErrorHandler,
    MalformedLine,
    PlainFile,
    ReadStats,
    forward_blocks,
    gz_blocks,
    ignore_errors,
)
from iottymux.loginotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
    InotifyEvent,
    Watches,
)
from iottymux.loglines import LineRun, LogLine, PartialMerger, expand_runs
from iottymux.logreader import ReadOptions, SourceReader, merge_lines, merge_runs
from iottymux.logrotation import ROTATION_GRACE_NS, RotationTracker
from iottymux.logsegments import LogSource, Segment, SegmentKey

#: What a follower watches: its directory (segments come and go), its file (growth, close).
_DIR_MASK: Final = (
    IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_FILE_MASK: Final = IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB
#: The follower re-checks the directory this often even without events (the
#: kubelet's logForceCheckPeriod).
FOLLOW_TICK_NS: Final = 1_000_000_000


Notice = Callable[[str], None]


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
        self.cur: PlainFile | None = None
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
                self._set_current(PlainFile(live.path, stats))
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

    def _set_current(self, file: PlainFile, wd: int = -1) -> None:
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

    def _open_inode(self, parked: _Parked) -> PlainFile | None:
        for path in [parked.path] + [e.path for e in self.tracker.entries if e.ino == parked.ino]:
            try:
                file = PlainFile(path, self.stats)
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
        for offset, data, stop in forward_blocks(cur, self.offset, hi):
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
        for offset, data in gz_blocks(segment.path, self.stats, self.on_error):
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
            for offset, data in gz_blocks(segment.path, self.stats, self.on_error):
                out += self.decoder.feed_runs(Block(data, segment.path, offset))
            self.pos_key = segment.key
            return out
        try:
            file = PlainFile(segment.path, self.stats)
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
        self.on_error = on_error or ignore_errors
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
