"""Idmapped bind mounts through the new mount API (open_tree, mount_setattr, move_mount).

runc 1.1 cannot make idmapped mounts itself, so the daemon makes them on the host: a
detached copy of a directory tree (``open_tree(OPEN_TREE_CLONE)``) gets the ID mapping of
a user namespace (``mount_setattr(MOUNT_ATTR_IDMAP)``) and is attached under the
container's directory (``move_mount``), where the overlay takes it as a lower layer or
runc bind-mounts it as a volume.  A bind mount of an idmapped mount keeps its mapping.

Through such a mount a file whose owner is ``k`` on disk appears owned by the host id
that ``k`` maps to in the namespace -- inside the namespace, by ``k`` again -- and a file
created through it by the namespace's ``k`` is stored as ``k``.  Linux 5.12 brought the
calls; each filesystem opts in (ext4, xfs, btrfs: 5.12; tmpfs: 6.3); overlayfs accepts
idmapped lower layers from 5.19.  Where one is missing the calls fail and the error
says which.

The same calls give recursive read-only mounts (``MOUNT_ATTR_RDONLY`` with
``AT_RECURSIVE``), which runc offers as the ``rro`` mount option.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from pathlib import Path

from cri.errors import FailedPrecondition

__all__ = ["bind_idmapped", "has_mount_api", "probe_idmap"]

# The new mount API has the same numbers on every architecture (asm-generic).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x100000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    # struct mount_attr (MOUNT_ATTR_SIZE_VER0 = 32 bytes)
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _call(number: int, *args: object) -> int:
    ret = int(_libc.syscall(number, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _clone_tree(source: str | os.PathLike[str], recursive: bool) -> int:
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    return _call(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), flags)


def _set_attr(tree: int, attr_set: int, userns_fd: int, recursive: bool) -> None:
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    _call(_SYS_MOUNT_SETATTR, tree, b"", flags, ctypes.byref(attr), ctypes.sizeof(attr))


def has_mount_api() -> bool:
    """Whether the kernel has mount_setattr (Linux 5.12+)."""
    try:
        # An invalid descriptor: EBADF if the call exists, ENOSYS if it does not.
        _call(_SYS_MOUNT_SETATTR, -1, b"", 0, None, 0)
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    return True


def _explain(exc: OSError, source: str | os.PathLike[str]) -> str:
    if exc.errno == errno.ENOSYS:
        return f"the kernel ({platform.release()}) has no mount_setattr (Linux 5.12+ has)"
    if exc.errno == errno.EINVAL:
        return (
            f"the filesystem of {source} does not support idmapped mounts on this kernel "
            f"({platform.release()})"
        )
    return f"{exc.strerror}"


def bind_idmapped(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    userns_path: str | os.PathLike[str],
    *,
    recursive: bool = True,
    readonly: bool = False,
) -> None:
    """Attach an idmapped copy of the tree at ``source`` on ``target``.

    The mapping is that of the user namespace whose nsfs file is ``userns_path``.
    ``target`` must exist (a directory for a directory, a file for a file).  Raises
    FailedPrecondition naming what is missing when the kernel or filesystem refuses.
    """
    try:
        userns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise FailedPrecondition(f"user namespace {userns_path}: {exc.strerror}") from exc
    tree = -1
    try:
        tree = _clone_tree(source, recursive)
        _set_attr(
            tree,
            _MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if readonly else 0),
            userns_fd,
            recursive,
        )
        _call(
            _SYS_MOVE_MOUNT,
            tree,
            b"",
            _AT_FDCWD,
            os.fsencode(target),
            _MOVE_MOUNT_F_EMPTY_PATH,
        )
    except OSError as exc:
        raise FailedPrecondition(f"idmapped mount of {source}: {_explain(exc, source)}") from exc
    finally:
        if tree >= 0:
            os.close(tree)
        os.close(userns_fd)


def probe_idmap(directory: str | os.PathLike[str], userns_path: str | os.PathLike[str]) -> str:
    """Why ``directory`` cannot be idmapped with that namespace; "" when it can.

    The copy is never attached, so the probe leaves nothing behind.
    """
    try:
        userns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"user namespace {userns_path}: {exc.strerror}"
    try:
        tree = _clone_tree(Path(directory), False)
    except OSError as exc:
        os.close(userns_fd)
        return _explain(exc, directory)
    try:
        _set_attr(tree, _MOUNT_ATTR_IDMAP, userns_fd, False)
    except OSError as exc:
        return _explain(exc, directory)
    finally:
        os.close(tree)
        os.close(userns_fd)
    return ""
