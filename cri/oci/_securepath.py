"""Read files inside a container root filesystem without ever leaving it.

An image is untrusted input: its ``/etc/passwd`` may be a symlink to ``/etc/shadow`` of
the host, or ``/etc`` may be ``../../..``.  Paths are therefore resolved one component at
a time with ``O_PATH | O_NOFOLLOW`` relative to a descriptor of the root, and symlinks are
expanded by hand as if the rootfs were ``/`` (an absolute target restarts at the root,
``..`` never climbs above it) — the semantics of ``openat2(RESOLVE_IN_ROOT)``, done with
calls the standard library exposes.  Opening the final file goes through its O_PATH
descriptor, so a concurrent rename cannot swap it for something outside the root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

__all__ = ["MAX_FILE_BYTES", "read_file_in_root", "resolve_in_root"]

MAX_FILE_BYTES = 4 << 20
# Linux's own limit on symlinks followed in one lookup (MAXSYMLINKS).
_MAX_SYMLINKS = 40
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_in_root(root_fd: int, path: str) -> int:
    """An O_PATH descriptor of ``path`` resolved inside the tree of ``root_fd``."""
    parts: deque[str] = deque(path.split("/"))
    stack: list[int] = []  # descriptors of the directories walked so far, root excluded
    links = 0
    try:
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if stack:
                    os.close(stack.pop())
                continue
            here = stack[-1] if stack else root_fd
            fd = os.open(name, _PATH_FLAGS, dir_fd=here)
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                os.close(fd)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                target = os.readlink(name, dir_fd=here)
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop())
                parts.extendleft(reversed(target.split("/")))
                continue
            if parts and any(p not in ("", ".") for p in parts) and not stat.S_ISDIR(mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, "not a directory", path)
            stack.append(fd)
        result = stack.pop() if stack else os.dup(root_fd)
        return result
    finally:
        for fd in stack:
            os.close(fd)


def read_file_in_root(root: str | os.PathLike[str], path: str) -> bytes | None:
    """The contents of the regular file ``path`` inside ``root``; None if it does not exist.

    Raises OSError when the file is not a regular file, is larger than MAX_FILE_BYTES,
    or cannot be read; a missing root is also an OSError.
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _open_in_root(root_fd, path)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            # Opening a FIFO or a device node could block or have side effects.
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if st.st_size > MAX_FILE_BYTES:
                raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes", path)
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        with os.fdopen(rfd, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes", path)
        return data
    finally:
        os.close(root_fd)


def resolve_in_root(root: str | os.PathLike[str], path: str) -> str:
    """The host path that ``path`` names inside ``root``, symlinks resolved within it.

    For trees nobody writes to while it runs (a read-only image): the answer is a plain
    path, which a concurrent rename could redirect.  Raises FileNotFoundError (or
    another OSError) when ``path`` does not exist there.
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_in_root(root_fd, path)
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)
