"""A small single-threaded event loop: readers, writers and timers over epoll.

asyncio would do, but costs the monitor start-up time and memory; the monitor
needs only this much.  Callbacks take no arguments and must not block.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """Readiness callbacks per file descriptor, plus monotonic timers."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        # fd -> [reader callback or None, writer callback or None]
        self._handlers: dict[int, list[Callable[[], object] | None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    # -- file descriptors ------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self._set(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        self._set(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def forget(self, fd: int) -> None:
        """Drop every callback of ``fd`` (call before closing it)."""
        if self._handlers.pop(fd, None) is not None:
            self._selector.unregister(fd)

    def _set(self, fd: int, slot: int, callback: Callable[[], object] | None) -> None:
        handlers = self._handlers.get(fd)
        if handlers is None:
            if callback is None:
                return
            handlers = [None, None]
            handlers[slot] = callback
            self._handlers[fd] = handlers
            self._selector.register(fd, self._mask(handlers))
            return
        before = self._mask(handlers)
        handlers[slot] = callback
        after = self._mask(handlers)
        if after == 0:
            del self._handlers[fd]
            self._selector.unregister(fd)
        elif after != before:
            self._selector.modify(fd, after)

    @staticmethod
    def _mask(handlers: list[Callable[[], object] | None]) -> int:
        return (selectors.EVENT_READ if handlers[0] else 0) | (
            selectors.EVENT_WRITE if handlers[1] else 0
        )

    # -- timers ------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    # -- running -----------------------------------------------------------------

    def run_once(self, timeout: float | None) -> int:
        """Wait up to ``timeout`` (None: no limit) for events; return how many ran."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if timers:
            until_timer = max(0.0, timers[0][0] - time.monotonic())
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        events = self._selector.select(timeout)
        handled = 0
        for key, mask in events:
            handlers = self._handlers.get(key.fd)
            if handlers is None:
                continue  # forgotten earlier in this batch
            if mask & selectors.EVENT_READ and handlers[0] is not None:
                handlers[0]()
                handled += 1
            # The reader may have removed the writer (or closed the fd).
            handlers = self._handlers.get(key.fd)
            if handlers is not None and mask & selectors.EVENT_WRITE and handlers[1] is not None:
                handlers[1]()
                handled += 1
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.callback()
                handled += 1
        return handled

    def close(self) -> None:
        self._selector.close()
        self._handlers.clear()
        self._timers.clear()
