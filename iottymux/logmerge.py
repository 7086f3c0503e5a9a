"""Lines of several followed containers in time order, held no longer than a window.

Followed files are read as they grow, so a line stamped earlier in one container can
arrive after a line stamped later in another.  :class:`MergeWindow` holds what
arrives for at most ``window_ns`` and releases it in timestamp order: when a batch of
runs has waited its window out, everything buffered that is no newer than the newest
run of that batch goes out, oldest first.  A run is never held past its deadline,
and lines that arrive later than the window allows are still printed (late), not
dropped.  One container's own runs keep their file order whatever their stamps say
(a clock that stepped back does not shuffle a container's lines).

Memory is bounded: past ``max_bytes`` buffered, batches are released early.

Sans-IO: the caller passes the clock and asks when to come back.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Final

from iottymux.loglines import LineRun

__all__ = ["MergeWindow"]

DEFAULT_WINDOW_NS: Final = 100_000_000
DEFAULT_MAX_BYTES: Final = 8 << 20


class MergeWindow:
    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.window_ns = window_ns
        self.max_bytes = max_bytes
        self._queues: dict[Hashable, deque[LineRun]] = {}
        self._heads: list[tuple[int, int, Hashable]] = []  # (head ns, seq, source)
        self._batches: deque[tuple[int, int]] = deque()  # (deadline, newest ns)
        self._seq = 0
        self._bytes = 0
        self._watermark = -1

    @property
    def buffered(self) -> int:
        return self._bytes

    def add(self, key: Hashable, runs: Sequence[LineRun], now_ns: int) -> None:
        """Runs of one source, in its file order, read at ``now_ns``."""
        if not runs:
            return
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        if not queue:
            self._push_head(key, runs[0])
        queue.extend(runs)
        self._bytes += sum(run.size for run in runs)
        newest = max(run.ns for run in runs)
        self._batches.append((now_ns + self.window_ns, newest))

    def _push_head(self, key: Hashable, run: LineRun) -> None:
        self._seq += 1
        heapq.heappush(self._heads, (run.ns, self._seq, key))

    def next_deadline(self) -> int | None:
        return self._batches[0][0] if self._batches else None

    def pop_due(self, now_ns: int) -> list[LineRun]:
        """What must go out by ``now_ns``, in time order."""
        out: list[LineRun] = []
        batches = self._batches
        while batches and (batches[0][0] <= now_ns or self._bytes > self.max_bytes):
            self._watermark = max(self._watermark, batches.popleft()[1])
            self._release(self._watermark, out)
        return out

    def drain(self) -> list[LineRun]:
        """Everything, in time order (the end of the follow)."""
        out: list[LineRun] = []
        self._batches.clear()
        self._release(None, out)
        return out

    def _release(self, upto: int | None, out: list[LineRun]) -> None:
        heads = self._heads
        while heads and (upto is None or heads[0][0] <= upto):
            _, _, key = heapq.heappop(heads)
            queue = self._queues[key]
            run = queue.popleft()
            self._bytes -= run.size
            out.append(run)
            if queue:
                self._push_head(key, queue[0])
            else:
                del self._queues[key]
