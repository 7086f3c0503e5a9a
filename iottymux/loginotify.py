"""inotify through libc (the package imports only the standard library), and one
instance shared by many watchers.

:class:`Inotify` is the kernel interface (``inotify_init1``, ``inotify_add_watch``,
non-blocking reads of batched events); :class:`Watches` dispatches its events by
watch descriptor to whoever asked, so a follower and node-wide discovery can share
one instance and one descriptor per directory.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_MASK_ADD: Final = 0x20000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

_EVENT_HEADER: Final = struct.Struct("iIII")


class InotifyEvent(NamedTuple):
    # A tuple, not a dataclass: hundreds of followed files make thousands a second.
    wd: int
    mask: int
    cookie: int
    name: str


class Inotify:
    """A non-blocking inotify instance (``inotify_init1``/``inotify_add_watch`` via ctypes)."""

    _libc: ctypes.CDLL | None = None

    def __init__(self) -> None:
        libc = self._load()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_init1.restype = ctypes.c_int
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_add_watch.restype = ctypes.c_int
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.inotify_rm_watch.restype = ctypes.c_int
            cls._libc = libc
        return cls._libc

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        wd: int = self._load().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}", path)
        return wd

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the kernel already dropped the watch (its inode is gone).
        self._load().inotify_rm_watch(self.fd, wd)

    def read_events(self) -> list[InotifyEvent]:
        events: list[InotifyEvent] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            pos = 0
            size = len(data)
            header = _EVENT_HEADER.size
            unpack = _EVENT_HEADER.unpack_from
            while pos + header <= size:
                wd, mask, cookie, length = unpack(data, pos)
                pos += header
                if length:
                    name = os.fsdecode(data[pos : pos + length].split(b"\0", 1)[0])
                    pos += length
                else:
                    name = ""  # an event on a watched file itself
                events.append(InotifyEvent(wd, mask, cookie, name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


WatchHandler = Callable[[InotifyEvent], None]


class Watches:
    """One inotify instance shared by many watchers, events dispatched by descriptor.

    The kernel gives one descriptor per inode, so two watchers of the same directory
    share it: handlers are kept per descriptor, masks are added up
    (``IN_MASK_ADD``), and the watch goes only when its last handler does.
    """

    def __init__(self, inotify: Inotify) -> None:
        self.inotify = inotify
        self._handlers: dict[int, list[WatchHandler]] = {}

    def add(self, path: str, mask: int, handler: WatchHandler) -> int:
        wd = self.inotify.add_watch(path, mask | IN_MASK_ADD)
        self._handlers.setdefault(wd, []).append(handler)
        return wd

    def remove(self, wd: int, handler: WatchHandler) -> None:
        handlers = self._handlers.get(wd)
        if handlers is None:
            return  # the kernel dropped it (IN_IGNORED)
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            del self._handlers[wd]
            self.inotify.rm_watch(wd)

    def dispatch(self, events: Iterable[InotifyEvent]) -> None:
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                # Events were lost: every watcher must look again.
                for handler in {h for hs in self._handlers.values() for h in hs}:
                    handler(event)
                continue
            for handler in list(self._handlers.get(event.wd, ())):
                handler(event)
            if event.mask & IN_IGNORED:
                self._handlers.pop(event.wd, None)

    def __len__(self) -> int:
        return len(self._handlers)
