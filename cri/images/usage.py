"""What the image store and the containers' writable layers use, measured in the background.

The kubelet asks ImageFsInfo every few seconds, and every container's writable layer
with its stats; walking each container's overlay upper dir for every answer cost
15 ms a call at 300 containers (bench/node.py), most of it on the loop that serves
the other calls.  As containerd's snapshot syncer does, one task measures every
``period`` seconds (10 by default) and the calls answer from the last measurement,
with its time: ``FilesystemUsage.timestamp`` says when the figures were taken.

What is cheap to know is applied at once: a removed container's entry goes, and an
image pulled, imported or removed makes the next answer measure the store again.  A
layer nobody has measured yet (a new container's, before the next sweep) is measured
when first asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cri.images.store import ImageStore

__all__ = ["DEFAULT_PERIOD", "FsUsage", "LayerUsage", "UsageCache", "tree_usage"]

log = logging.getLogger(__name__)

#: Seconds between two measurements, as containerd's snapshot syncer.
DEFAULT_PERIOD = 10.0


@dataclass(frozen=True, slots=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class LayerUsage:
    """One container's writable layer, as measured at ``timestamp_ns``."""

    used_bytes: int
    inodes_used: int
    timestamp_ns: int


class UsageCache:
    """The image store's usage and each container's writable layer (``<rootfs_dir>/<id>/upper``).

    Loop thread only.  :meth:`start` runs the periodic measurement, :meth:`stop` ends it;
    without it, figures are measured when first asked for and then only by :meth:`refresh`.
    """

    def __init__(self, store: ImageStore, rootfs_dir: Path, period: float = DEFAULT_PERIOD) -> None:
        self.store = store
        self.rootfs_dir = Path(rootfs_dir)
        self.period = period
        self._images: FsUsage | None = None
        self._images_stale = True
        self._layers: dict[str, LayerUsage] = {}
        #: Containers forgotten while a sweep runs: it must not bring their entries back.
        self._forgotten: set[str] = set()
        self._sweep_lock = asyncio.Lock()
        self._sweeps = asyncio.Condition()
        self._sweeps_started = 0
        self._sweeps_done = 0
        self._swept_at = 0
        self._task: asyncio.Task[None] | None = None

    # -- answers ---------------------------------------------------------------------

    async def image_usage(self) -> FsUsage:
        """The image store's last measurement (measured now if stale or never taken)."""
        if self._images is None or self._images_stale:
            await self._measure_images()
        assert self._images is not None
        return self._images

    async def container_usage(self) -> FsUsage:
        """All writable layers together; the timestamp is the oldest of their measurements."""
        if self._sweeps_done == 0:
            await self._sweep(unless_swept=True)
        used = inodes = 0
        oldest = self._swept_at  # no layers: when the sweep found none
        for layer in self._layers.values():
            used += layer.used_bytes
            inodes += layer.inodes_used
            oldest = min(oldest, layer.timestamp_ns)
        return FsUsage(str(self.rootfs_dir), used, inodes, oldest)

    def layer(self, container_id: str) -> LayerUsage:
        """A container's writable layer, measured now if it never was."""
        found = self._layers.get(container_id)
        if found is None:
            found = self._layers[container_id] = _measure_layer(self.rootfs_dir / container_id)
        return found

    # -- changes ---------------------------------------------------------------------

    def forget(self, container_id: str) -> None:
        """A container (and its root filesystem) is gone."""
        self._layers.pop(container_id, None)
        if self._sweep_lock.locked():
            self._forgotten.add(container_id)

    def images_changed(self) -> None:
        """An image was pulled, imported or removed: the next answer measures the store."""
        self._images_stale = True

    # -- measuring -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Measure everything now: the image store, then every writable layer."""
        await self._measure_images()
        await self._sweep()

    async def next_sweep(self) -> None:
        """Wait for a sweep of the writable layers that starts after this call to end."""
        target = self._sweeps_started + 1
        async with self._sweeps:
            await self._sweeps.wait_for(lambda: self._sweeps_done >= target)

    async def _measure_images(self) -> None:
        # Cleared first: a change made while the store is being measured marks it again.
        self._images_stale = False
        used, inodes = await asyncio.to_thread(self.store.image_fs_usage)
        self._images = FsUsage(str(self.store.root), used, inodes, time.time_ns())

    async def _sweep(self, unless_swept: bool = False) -> None:
        async with self._sweep_lock:
            if unless_swept and self._sweeps_done:
                return  # another caller's sweep ended while this one waited
            self._sweeps_started += 1
            self._forgotten.clear()
            started = time.time_ns()
            seen: set[str] = set()
            try:
                names = [e.name for e in os.scandir(self.rootfs_dir) if e.is_dir()]
            except (FileNotFoundError, NotADirectoryError):
                names = []
            for name in names:
                # On the loop, one container at a time with the loop's other work in
                # between: a worker thread walking hundreds of small directories waits
                # for the GIL at every system call while the loop serves the kubelet,
                # and took several times longer than the walk itself.
                layer = _measure_layer(self.rootfs_dir / name)
                if name not in self._forgotten:
                    self._layers[name] = layer
                    seen.add(name)
                await asyncio.sleep(0)
            # Gone from disk since measured; a layer measured on demand during this
            # sweep (a container created meanwhile) stays.
            for name in [n for n, u in self._layers.items() if n not in seen]:
                if self._layers[name].timestamp_ns < started:
                    del self._layers[name]
            self._swept_at = time.time_ns()
            self._sweeps_done += 1
        async with self._sweeps:
            self._sweeps.notify_all()

    # -- the periodic task -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="fs-usage-refresh"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def layers_kept(self) -> int:
        """How many writable layers' figures are kept (one per container on disk)."""
        return len(self._layers)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                # A disk error now may be gone next time; the last figures stay.
                log.exception("measuring the image and container filesystems failed")
            await asyncio.sleep(self.period)


def _measure_layer(container_dir: Path) -> LayerUsage:
    used, inodes = tree_usage(container_dir / "upper")
    return LayerUsage(used, inodes, time.time_ns())


def tree_usage(top: str | os.PathLike[str]) -> tuple[int, int]:
    """Bytes of the files and number of entries below ``top`` (0, 0 if it is no directory).

    What ``os.walk`` counts (entries that cannot be read are skipped; a symlink to a
    directory counts, and is not followed), in one ``scandir`` per directory, with
    the sizes from the entries' own ``lstat``.
    """
    size = 0
    inodes = 0
    pending = [os.fspath(top)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                inodes += 1
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if not entry.is_symlink():
                        pending.append(entry.path)
                    continue
                with contextlib.suppress(OSError):
                    size += entry.stat(follow_symlinks=False).st_size
    return size, inodes
