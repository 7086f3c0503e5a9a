"""Per-container root filesystems: overlayfs over an image's layers.

Each container gets ``<dir>/<container id>/`` with ``upper/`` (its private writes),
``work/`` (overlayfs scratch) and ``merged/`` (the mount the OCI runtime uses as
``root.path``).  The image's unpacked layers are the lower dirs, top layer first.  The
store records which layers each root filesystem uses, so that removing the image
while the container exists keeps them; they go with the container.

The same directory holds what else the container mounts from the daemon: image volumes
(``images/<i>``, a read-only overlay of another image's layers) and, in a pod with a
user namespace, idmapped views of the layers (``lower/<n>``) and of volumes
(``volumes/<i>``).  Removal unmounts everything below the directory before deleting it,
and deletes nothing while any mount is left there (a mounted layer or volume would
otherwise be deleted through it).

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
from cri.images.store import ImageStore, LayerRecord
from cri.oci import idmap

__all__ = ["RootfsManager", "is_mounted", "mount_overlay", "mounts_under", "unmount"]

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


def mount_overlay_readonly(target: Path, lower: list[Path]) -> None:
    """A read-only overlay of ``lower`` (top first; at least two) with no upper dir."""
    options = f"lowerdir={':'.join(_check_option_path(p) for p in lower)}"
    if len(options) >= _PAGE:
        raise FailedPrecondition(f"image has too many layers for one overlay ({len(lower)})")
    rc = _libc.mount(b"overlay", str(target).encode(), b"overlay", _MS_RDONLY, options.encode())
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


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        # The mount point is octal-escaped in mountinfo.
        return [line.split()[4].encode().decode("unicode_escape") for line in f]


def is_mounted(target: Path) -> bool:
    wanted = os.path.realpath(target)
    return wanted in _mount_points()


def mounts_under(directory: Path) -> list[str]:
    """Mount points strictly below ``directory``, the most recent first."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    return [p for p in reversed(_mount_points()) if p.startswith(prefix)]


def _unmount_all(directory: Path) -> None:
    """Unmount everything below ``directory``; FailedPrecondition if anything stays."""
    for point in mounts_under(directory):
        unmount(Path(point))
    left = mounts_under(directory)
    if left:
        raise FailedPrecondition(f"{directory}: still mounted: {', '.join(left)}")


def _chown_tree_root(paths: list[Path], owner: tuple[int, int] | None) -> None:
    if owner is not None:
        for p in paths:
            os.chown(p, *owner)


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

    def _image_layers(self, image: str, field: str) -> tuple[str, list[LayerRecord]]:
        found = self.store.lookup(image, field)
        if found is None:
            raise NotFound(f"{field}: image {image!r} not found")
        record = found[0]
        return record.id, self.store.layers_for(record.diff_ids)

    def _lowers(
        self, base: Path, layers: list[LayerRecord], userns: str | None, name: str
    ) -> list[Path]:
        """The overlay's lower dirs, top first: the layers, or idmapped views of them."""
        lower = [la.path for la in reversed(layers)]
        if userns is None:
            return lower
        views = []
        for n, path in enumerate(lower):
            view = base / name / str(n)
            view.mkdir(parents=True, exist_ok=True)
            idmap.bind_idmapped(path, view, userns, recursive=False)
            views.append(view)
        return views

    def create(
        self,
        container_id: str,
        image: str,
        readonly: bool = False,
        *,
        userns: str | None = None,
        owner: tuple[int, int] | None = None,
    ) -> Path:
        """Mount a fresh root filesystem for ``container_id`` from ``image`` (id or ref).

        With ``userns`` (the pinned user namespace of the container's pod) the layers
        are idmapped with its maps, and ``owner`` (the host uid and gid of the
        namespace's root) gets the upper dir, so that the pod's root owns its writes.
        """
        self._check_id(container_id)
        image_id, layers = self._image_layers(image, "image")
        # Recorded before mounting, so that a concurrent gc cannot take the layers.
        try:
            self.store.add_rootfs(container_id, image_id, [la.id for la in layers], readonly)
        except Exception as exc:
            if self.store.rootfs_exists(container_id):
                raise FailedPrecondition(
                    f"container_id: {container_id!r} already has a root filesystem"
                ) from exc
            raise
        base = self.dir / container_id
        try:
            # Traversable by a namespace's root, which is nobody here (runc's init, in
            # the user namespace, resolves the root and volume paths below it).
            base.mkdir(mode=0o711 if userns else 0o700, exist_ok=True)
            upper, work, merged = base / "upper", base / "work", base / "merged"
            for d in (upper, work, merged):
                d.mkdir(mode=0o755, exist_ok=True)
            _chown_tree_root([upper, work], owner)
            lower = self._lowers(base, layers, userns, "lower")
            if not lower:
                empty = base / "empty"
                empty.mkdir(exist_ok=True)
                lower = [empty]
            mount_overlay(merged, lower, upper, work, readonly=readonly)
        except BaseException:
            self._discard(base)
            self.store.remove_rootfs(container_id)
            raise
        return merged

    def mount_image(
        self, container_id: str, index: int, image: str, *, userns: str | None = None
    ) -> tuple[Path, str]:
        """Mount ``image`` read-only for the container's image volume ``index``.

        Returns the mount point and the image's id.  The layers are recorded against
        the container (``<id>/image<i>``) so that no gc takes them while it exists.
        """
        self._check_id(container_id)
        field = f"mounts[{index}].image.image"
        image_id, layers = self._image_layers(image, field)
        base = self.dir / container_id
        if not base.is_dir():
            raise FailedPrecondition(f"container_id: {container_id} has no root filesystem")
        key = f"{container_id}/image{index}"
        self.store.add_rootfs(key, image_id, [la.id for la in layers], True)
        try:
            target = base / "images" / str(index)
            target.mkdir(parents=True, exist_ok=True)
            lower = self._lowers(base, layers, userns, f"images-lower/{index}")
            # overlayfs wants two lower dirs when there is no upper one.
            empty = base / "images-empty"
            empty.mkdir(exist_ok=True)
            mount_overlay_readonly(target, [*lower, empty])
        except BaseException:
            self.store.remove_rootfs(key)
            raise
        return target, image_id

    def idmapped_volume(self, container_id: str, index: int, source: str, userns: str) -> Path:
        """An idmapped view of the host path ``source`` for the container's volume ``index``."""
        self._check_id(container_id)
        base = self.dir / container_id
        target = base / "volumes" / str(index)
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(source):
            target.mkdir(exist_ok=True)
        else:
            target.touch(exist_ok=True)
        idmap.bind_idmapped(source, target, userns, recursive=True)
        return target

    def _discard(self, base: Path) -> None:
        _unmount_all(base)
        shutil.rmtree(base, ignore_errors=True)

    def remove(self, container_id: str) -> None:
        """Unmount and delete a container's root filesystem and its mounts.  Idempotent."""
        self._check_id(container_id)
        base = self.dir / container_id
        if base.exists():
            try:
                self._discard(base)
            except FailedPrecondition as exc:
                raise FailedPrecondition(f"root filesystem of {container_id}: {exc}") from exc
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
                with contextlib.suppress(OSError, FailedPrecondition):
                    self._discard(entry)
                    removed.append(entry.name)
        return removed
