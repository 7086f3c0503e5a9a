"""Network namespaces pinned by bind mounts, and running code inside them.

A pod's network namespace outlives any process in it: it is pinned by bind-mounting
the namespace file onto ``<run_dir>/netns/<name>``, as ``ip netns add`` does, so that
CNI plugins, the pod's infra process and port-forward can all find it by path.

Namespaces are per *thread* on Linux.  Every operation here runs in a dedicated,
short-lived thread that enters (``setns``) or creates (``unshare``) the namespace and
then exits, so the namespace change dies with it: the calling thread -- in the daemon,
the asyncio loop's thread -- never changes namespace.  Sockets keep the namespace they
were created in, so a socket made by :func:`run_in_netns` can be handed back and used
from any thread.  Threads and child processes started by a thread inherit its
namespace, which is what lets a test run a whole asyncio loop (CNI plugins included)
inside a namespace of its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "InterfaceCounters",
    "NetnsError",
    "bring_up_loopback",
    "create_netns",
    "current_netns_id",
    "interface_counters",
    "interface_counters_via",
    "is_netns_pinned",
    "netns_id",
    "netns_path",
    "parse_net_dev",
    "pin_namespace",
    "remove_netns",
    "run_in_netns",
    "run_in_netns_async",
]

_T = TypeVar("_T")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# struct ifreq: a 16-byte name, then a 24-byte union whose first member is the flags.
_IFREQ = "16sH22x"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class NetnsError(OSError):
    """A namespace could not be created, entered or removed; ``errno`` is kept."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{what}: {os.strerror(err)}")


def _validate_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise ValueError(f"invalid network namespace name {name!r}")


def netns_path(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Where :func:`create_netns` pins the namespace called ``name``."""
    _validate_name(name)
    return Path(run_dir) / "netns" / name


def _run_in_thread(fn: Callable[[], _T], thread_name: str) -> _T:
    """Run ``fn`` in a new thread and return its result or raise its exception."""
    box: list[_T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name=thread_name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box[0]


def bring_up_loopback() -> None:
    """Set IFF_UP on ``lo`` in the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def pin_namespace(source: str, path: str | os.PathLike[str]) -> None:
    """Pin the namespace file ``source`` (``/proc/<pid>/ns/<kind>``) by bind-mounting it on
    ``path``, a new file (FileExistsError if it exists); on failure nothing is left."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two pods racing for one name must not share (or unpin) a namespace.
    fd = os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        _check(
            _libc.mount(source.encode(), os.fsencode(p), None, _MS_BIND, None),
            f"bind-mount {source} on {p}",
        )
    except BaseException:
        p.unlink()
        raise


def create_netns(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Create a network namespace pinned at ``<run_dir>/netns/<name>``; return that path.

    The loopback interface is brought up inside it.  Raises :class:`FileExistsError`
    if the pin file already exists, and :class:`NetnsError` if the namespace cannot be
    made or pinned (for example without CAP_SYS_ADMIN); nothing is left behind then.
    """
    path = netns_path(run_dir, name)

    def make() -> None:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        pin_namespace(f"/proc/self/task/{threading.get_native_id()}/ns/net", path)
        try:
            bring_up_loopback()
        except OSError as exc:
            remove_netns(path)
            raise NetnsError(exc.errno or errno.EIO, f"bringing up lo in {path}: {exc}") from exc

    _run_in_thread(make, f"netns-create-{name}")
    return path


def remove_netns(path: str | os.PathLike[str]) -> None:
    """Unpin and delete a namespace made by :func:`create_netns` (or :func:`pin_namespace`).

    Idempotent: a missing path, or a pin file that is no longer mounted, is fine.  The
    namespace itself is freed by the kernel once no process, socket or other mount
    holds it.
    """
    p = Path(path)
    ret = _libc.umount2(os.fsencode(p), _MNT_DETACH)
    if ret != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (already unmounted); ENOENT: already removed.
        if err not in (errno.EINVAL, errno.ENOENT):
            raise NetnsError(err, f"umount {p}: {os.strerror(err)}")
    try:
        p.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetnsError(exc.errno or errno.EIO, f"removing {p}: {exc.strerror}") from exc


def _enter(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(exc.errno or errno.EIO, f"opening netns {path}: {exc.strerror}") from exc
    try:
        ret = _libc.setns(fd, _CLONE_NEWNET)
        if ret != 0:
            err = ctypes.get_errno()
            hint = " (not a network namespace)" if err == errno.EINVAL else ""
            raise NetnsError(err, f"setns into {path}: {os.strerror(err)}{hint}")
    finally:
        os.close(fd)


def run_in_netns(path: str | os.PathLike[str], fn: Callable[[], _T]) -> _T:
    """Call ``fn()`` in a thread that has entered the network namespace at ``path``.

    Blocks until ``fn`` returns; its result is returned and its exception re-raised.
    The thread exits afterwards, so no other thread's namespace ever changes.
    """

    def body() -> _T:
        _enter(path)
        return fn()

    return _run_in_thread(body, "netns-run")


async def run_in_netns_async(path: str | os.PathLike[str], fn: Callable[[], _T]) -> _T:
    """Like :func:`run_in_netns`, without blocking the event loop.

    If the awaiting task is cancelled, ``fn`` still runs to completion in its thread
    (a thread cannot be interrupted); its result is then discarded.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def deliver(result: _T | None, exc: BaseException | None) -> None:
        if future.cancelled():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        try:
            _enter(path)
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=body, name="netns-run-async", daemon=True).start()
    return await future


def netns_id(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(device, inode) identifying the namespace at ``path`` (a pin or /proc/.../ns/net)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def current_netns_id() -> tuple[int, int]:
    """(device, inode) of the calling thread's network namespace."""
    return netns_id(f"/proc/self/task/{threading.get_native_id()}/ns/net")


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def is_netns_pinned(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is currently a mount point (as a pinned namespace is)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                return True
    return False


@dataclass(frozen=True, slots=True)
class InterfaceCounters:
    """One interface's line of ``/proc/net/dev``: what the kernel counted both ways."""

    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> dict[str, InterfaceCounters]:
    """Counters by interface from a ``/proc/net/dev`` text (two header lines, then one
    ``name: rx bytes packets errs drop fifo frame compressed multicast tx bytes packets
    errs drop …`` line per interface)."""
    out: dict[str, InterfaceCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        columns = rest.split()
        if not sep or len(columns) < 12 or not all(c.isdigit() for c in columns[:12]):
            continue
        n = [int(c) for c in columns[:12]]
        out[name.strip()] = InterfaceCounters(n[0], n[1], n[2], n[3], n[8], n[9], n[10], n[11])
    return out


def interface_counters(path: str | os.PathLike[str]) -> dict[str, InterfaceCounters]:
    """:func:`parse_net_dev` of the network namespace pinned at ``path``."""

    def read() -> str:
        # thread-self: /proc/self/net shows the process's namespace, not this thread's.
        with open("/proc/thread-self/net/dev", encoding="ascii") as f:
            return f.read()

    return parse_net_dev(run_in_netns(path, read))


def interface_counters_via(path: str | os.PathLike[str], pid: int) -> dict[str, InterfaceCounters]:
    """:func:`interface_counters`, read from ``/proc/<pid>/net/dev`` if ``pid`` is in it.

    A pod's stats are polled every few seconds; entering its namespace takes a
    thread and a ``setns`` each time, while a process of the pod (its infra) shows the
    same counters in /proc.  The process must be in the namespace pinned at ``path``
    before and after the read (same namespace inode), else the namespace is entered.
    """
    if pid > 0:
        try:
            pinned = os.stat(path)
            ns = f"/proc/{pid}/ns/net"
            before = os.stat(ns)
            with open(f"/proc/{pid}/net/dev", encoding="ascii") as f:
                text = f.read()
            after = os.stat(ns)
        except OSError:
            pass
        else:
            same = (pinned.st_dev, pinned.st_ino)
            if (before.st_dev, before.st_ino) == same == (after.st_dev, after.st_ino):
                return parse_net_dev(text)
    return interface_counters(path)
