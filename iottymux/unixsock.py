"""Unix socket helpers: private sockets, and paths longer than ``sun_path``.

``sun_path`` holds 108 bytes, and pod run directories nest deep.  Like
conmon-rs, we reach a long path through ``/proc/self/fd/<dirfd>/<name>``, which
is short whatever the directory's depth.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

_SUN_PATH_MAX = 100  # leave room for the NUL and be conservative


def _via_dirfd(path: str, action: Callable[[str], None]) -> None:
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        action(path)
        return
    directory, name = os.path.split(path)
    dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        action(f"/proc/self/fd/{dir_fd}/{name}")
    finally:
        os.close(dir_fd)


def listen_unix(path: str, *, mode: int = 0o600, backlog: int = 64) -> socket.socket:
    """A listening, non-blocking stream socket at ``path`` with ``mode``.

    A stale socket file (left by a monitor that died) is replaced.  The umask
    is narrowed around ``bind`` so the socket is never reachable with wider
    permissions, not even for an instant.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o777 & ~mode)
    try:
        _via_dirfd(path, sock.bind)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def connect_unix(path: str, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        _via_dirfd(path, sock.connect)
    except BaseException:
        sock.close()
        raise
    return sock
