"""Per-container root filesystems: overlayfs over an image's layers.

Each container gets ``<dir>/<container id>/`` with ``upper/`` (its private writes),
``work/`` (overlayfs scratch) and ``merged/`` (the mount the OCI runtime uses as
``root.path``).  The image's unpacked layers are the lower dirs, top layer first.  The
store records which layers each root filesystem uses, so that removing the image
while the container exists keeps them; they go with the container.

Mounting uses mount(2) directly: overlayfs options (every lower dir) must fit in one
page, which is why layer directories have short, numeric names.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
from pathlib import Path

from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.images.store import ImageStore

__all__ = ["RootfsManager", "is_mounted", "mount_overlay", "unmount"]

_MS_RDONLY = 1
_MNT_DETACH = 2
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check_option_path(path: Path) -> str:
    text = str(path)
    # overlayfs splits its options on ',' and lowerdir on ':'; escaping is fragile.
    if any(c in text for c in ",:\\"):
        raise FailedPrecondition(f"path {text!r} contains a character overlayfs cannot take")
    return text


def mount_overlay(
    target: Path, lower: list[Path], upper: Path, work: Path, readonly: bool = False
) -> None:
    """Mount overlayfs at ``target``; ``lower`` is ordered top layer first."""
    options = (
        f"lowerdir={':'.join(_check_option_path(p) for p in lower)},"
        f"upperdir={_check_option_path(upper)},workdir={_check_option_path(work)}"
    )
    if len(options) >= _PAGE:
        raise FailedPrecondition(
            f"image has too many layers for one overlay mount ({len(lower)} layers, "
            f"{len(options)} bytes of options)"
        )
    flags = _MS_RDONLY if readonly else 0
    rc = _libc.mount(b"overlay", str(target).encode(), b"overlay", flags, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay on {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Unmount ``target``; lazily if it is busy.  Not mounted is not an error."""
    path = str(target).encode()
    if _libc.umount2(path, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(path, _MNT_DETACH) == 0:
        return
    err = ctypes.get_errno() if err == errno.EBUSY else err
    if err in (errno.EINVAL, errno.ENOENT):
        return
    raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def is_mounted(target: Path) -> bool:
    wanted = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # The mount point is octal-escaped in mountinfo.
            point = fields[4].encode().decode("unicode_escape")
            if point == wanted:
                return True
    return False


class RootfsManager:
    """Creates and removes container root filesystems from images in a store."""

    def __init__(self, store: ImageStore, directory: Path | None = None) -> None:
        self.store = store
        self.dir = Path(directory) if directory is not None else store.root / "rootfs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _check_id(self, container_id: str) -> None:
        if _CONTAINER_ID.fullmatch(container_id) is None:
            raise InvalidArgument(
                f"container_id: {container_id!r} is not a valid id "
                "(letters, digits, '.', '_', '-'; at most 128)"
            )

    def path(self, container_id: str) -> Path:
        """The merged root (the OCI runtime's ``root.path``) of a container."""
        self._check_id(container_id)
        return self.dir / container_id / "merged"

    def create(self, container_id: str, image: str, readonly: bool = False) -> Path:
        """Mount a fresh root filesystem for ``container_id`` from ``image`` (id or ref)."""
        self._check_id(container_id)
        found = self.store.lookup(image, "image")
        if found is None:
            raise NotFound(f"image: {image!r} not found")
        record = found[0]
        layers = self.store.layers_for(record.diff_ids)
        # Recorded before mounting, so that a concurrent gc cannot take the layers.
        try:
            self.store.add_rootfs(container_id, record.id, [la.id for la in layers], readonly)
        except Exception as exc:
            if self.store.rootfs_exists(container_id):
                raise FailedPrecondition(
                    f"container_id: {container_id!r} already has a root filesystem"
                ) from exc
            raise
        base = self.dir / container_id
        try:
            base.mkdir(mode=0o700, exist_ok=True)
            upper, work, merged = base / "upper", base / "work", base / "merged"
            for d in (upper, work, merged):
                d.mkdir(mode=0o755, exist_ok=True)
            lower = [la.path for la in reversed(layers)]
            if not lower:
                empty = base / "empty"
                empty.mkdir(exist_ok=True)
                lower = [empty]
            mount_overlay(merged, lower, upper, work, readonly=readonly)
        except BaseException:
            unmount(base / "merged")
            shutil.rmtree(base, ignore_errors=True)
            self.store.remove_rootfs(container_id)
            raise
        return merged

    def remove(self, container_id: str) -> None:
        """Unmount and delete a container's root filesystem.  Idempotent."""
        self._check_id(container_id)
        base = self.dir / container_id
        merged = base / "merged"
        if merged.exists():
            unmount(merged)
            if is_mounted(merged):
                raise FailedPrecondition(f"root filesystem of {container_id} is still mounted")
        shutil.rmtree(base, ignore_errors=True)
        self.store.remove_rootfs(container_id)
        # The image may have been removed while the container ran; its layers go now.
        self.store.gc()

    def list_ids(self) -> list[str]:
        return self.store.rootfs_ids()

    def cleanup_orphans(self) -> list[str]:
        """Remove root filesystems on disk that the store has no record of (after a crash)."""
        known = set(self.store.rootfs_ids())
        removed = []
        for entry in self.dir.iterdir():
            if entry.name not in known and entry.is_dir():
                with contextlib.suppress(OSError):
                    unmount(entry / "merged")
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed
