"""Opening a file beneath a directory without following symbolic links.

A pod's log directory is writable by whoever can write into the pod's log
tree; a symlink planted there must not make the monitor (root) create or append
to a file elsewhere.  :func:`open_beneath` resolves a relative path inside a
directory file descriptor with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
(Linux 5.6+), and on older kernels walks the path one component at a time with
``O_NOFOLLOW``.  Missing intermediate directories are created on the way, each
checked the same way.  Only the standard library: the monitor imports this.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SYS_OPENAT2 = 437  # the same number on every architecture (added after the unification)
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_openat2: Any = None  # the ctypes call, or False once the kernel said ENOSYS


def _load_openat2() -> Any:
    global _openat2
    if _openat2 is None:
        import ctypes

        class OpenHow(ctypes.Structure):
            _fields_ = [
                ("flags", ctypes.c_uint64),
                ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64),
            ]

        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long

        def call(dir_fd: int, path: str, flags: int, mode: int) -> int:
            how = OpenHow(flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            fd = syscall(
                ctypes.c_long(SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(os.fsencode(path)),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
            return int(fd)

        _openat2 = call
    return _openat2


def _open_one(dir_fd: int, name: str, flags: int, mode: int) -> int:
    """Open one component (no slash) under ``dir_fd``, refusing a symlink."""
    global _openat2
    opener = _load_openat2() if _openat2 is not False else None
    if opener is not None:
        try:
            return int(opener(dir_fd, name, flags | os.O_CLOEXEC, mode))
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            _openat2 = False  # an old kernel: O_NOFOLLOW from now on
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def split_beneath(path: str) -> list[str]:
    """The components of a relative path; ValueError for anything that could climb out."""
    if not path or path.startswith("/") or path.endswith("/") or "\0" in path:
        raise ValueError(f"{path!r} is not a relative path to a file")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{path!r} may not contain empty, '.' or '..' components")
    return parts


def open_beneath(
    root: str, path: str, flags: int, mode: int, dir_mode: int = 0o755
) -> tuple[int, list[str]]:
    """Open ``path`` (relative) beneath the directory ``root``; no symlink is followed.

    ``root`` itself is trusted (the kubelet made it; it is created if missing).
    A symlink at any component below it fails with ELOOP (or ENOTDIR); a missing
    directory is created with ``dir_mode``.  Returns the fd and what this call
    created (with ``O_CREAT``: the file, then new directories), deepest first.
    """
    parts = split_beneath(path)
    made: list[str] = []
    missing = root
    while missing and not os.path.isdir(missing):
        made.append(missing)
        missing = os.path.dirname(missing)
    os.makedirs(root, mode=dir_mode, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where = root
    try:
        for name in parts[:-1]:
            where = os.path.join(where, name)
            try:
                os.mkdir(name, dir_mode, dir_fd=fd)
                made.insert(0, where)
            except FileExistsError:
                pass
            next_fd = _open_one(fd, name, os.O_RDONLY | os.O_DIRECTORY, 0)
            os.close(fd)
            fd = next_fd
        target = os.path.join(where, parts[-1])
        if flags & os.O_CREAT:
            try:
                return _open_one(fd, parts[-1], flags | os.O_EXCL, mode), [target, *made]
            except FileExistsError:
                pass
        return _open_one(fd, parts[-1], flags, mode), made
    finally:
        os.close(fd)
