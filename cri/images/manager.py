"""The image manager: pull, import, look up, remove and account for images.

This is where the parts meet: the registry client fetches, the store keeps, the
unpacker turns layer blobs into overlay lower dirs.  The CRI ImageService and the
``rktlet image`` commands are thin shells over it.

Concurrency: pulls of the same reference with the same credentials share one task (a
second PullImage for ``busybox`` waits for the first instead of downloading again);
downloads of the same blob and unpacks of the same diff id are shared across different
images too.  A pull holds a store lease on every digest it touches, so a concurrent
gc never deletes what it is about to record; if it fails, whatever it stored and no
image uses is collected before the error is returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cri.errors import FailedPrecondition, NotFound, RktletError
from cri.images.auth import Credentials
from cri.images.config import ImagesConfig
from cri.images.importer import import_archive
from cri.images.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    ManifestError,
    parse_image_config,
    parse_manifest,
    select_platform,
    split_user,
)
from cri.images.reference import Reference, parse_reference
from cri.images.registry import RegistryClient, Repository
from cri.images.store import ImageRecord, ImageStore, Lease

__all__ = ["ImageManager", "ProgressEvent", "ProgressFn"]

log = logging.getLogger(__name__)

ProgressKind = Literal["resolved", "downloading", "downloaded", "cached", "unpacked", "done"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A step of a pull.  ``bytes_*`` count compressed layer bytes still to fetch."""

    kind: ProgressKind
    digest: str
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int


ProgressFn = Callable[[ProgressEvent], None]


@dataclass(slots=True)
class _Tracker:
    listeners: list[ProgressFn]
    layers_total: int = 0
    layers_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0

    def emit(self, kind: ProgressKind, digest: str) -> None:
        event = ProgressEvent(
            kind, digest, self.layers_done, self.layers_total, self.bytes_done, self.bytes_total
        )
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                # A broken progress consumer (a CLI whose stdout closed) must not fail the pull.
                log.exception("progress listener failed; removing it")
                self.listeners.remove(listener)


@dataclass(slots=True)
class _PullJob:
    task: asyncio.Task[ImageRecord]
    tracker: _Tracker = field(default_factory=lambda: _Tracker([]))


class ImageManager:
    def __init__(
        self,
        store: ImageStore,
        config: ImagesConfig | None = None,
        client: RegistryClient | None = None,
    ) -> None:
        self.store = store
        self.config = config or ImagesConfig()
        self.client = client or RegistryClient(self.config)
        #: The id of a container that uses an image as a volume, if any (set by the runtime).
        self.in_use: Callable[[str], str | None] = lambda image_id: None
        #: Called after an image is pulled, imported or removed (the usage cache listens).
        self.on_change: Callable[[], None] = lambda: None
        self._pulls: dict[tuple[str, Credentials], _PullJob] = {}
        self._blobs: dict[str, asyncio.Task[None]] = {}
        self._layers: dict[str, asyncio.Task[None]] = {}

    async def aclose(self) -> None:
        for job in list(self._pulls.values()):
            job.task.cancel()
        await self.client.aclose()

    # -- queries -----------------------------------------------------------------------

    def lookup(self, image: str, field_name: str = "image") -> ImageRecord | None:
        """The image an id, tag or digest names, or None (InvalidArgument if malformed)."""
        found = self.store.lookup(image, field_name)
        return None if found is None else found[0]

    def list_images(
        self, image_filter: str = "", field_name: str = "filter.image.image"
    ) -> list[ImageRecord]:
        if not image_filter:
            return self.store.list_images()
        found = self.lookup(image_filter, field_name)
        return [] if found is None else [found]

    def pin(self, image: str, pinned: bool = True, field_name: str = "image") -> ImageRecord:
        """Mark an image pinned (kept by kubelet's image GC), e.g. the pause image."""
        record = self.lookup(image, field_name)
        if record is None:
            raise NotFound(f"{field_name}: image {image!r} not found")
        self.store.set_pinned(record.id, pinned)
        updated = self.store.get_image(record.id)
        assert updated is not None
        return updated

    # -- pull --------------------------------------------------------------------------

    async def pull(
        self,
        image: str,
        credentials: Credentials | None = None,
        progress: ProgressFn | None = None,
        field_name: str = "image.image",
    ) -> ImageRecord:
        """Pull ``image`` (a reference) and return its record once it is usable."""
        ref = parse_reference(image, field_name)
        creds = credentials or Credentials()
        key = (str(ref), creds)
        job = self._pulls.get(key)
        if job is None:
            tracker = _Tracker([])
            task = asyncio.get_running_loop().create_task(self._pull(ref, creds, tracker))
            job = _PullJob(task, tracker)
            self._pulls[key] = job
            task.add_done_callback(lambda _t: self._pulls.pop(key, None))
        if progress is not None:
            job.tracker.listeners.append(progress)
        try:
            # Shielded: one caller giving up (a cancelled RPC) must not fail the others.
            return await asyncio.shield(job.task)
        finally:
            if progress is not None and progress in job.tracker.listeners:
                job.tracker.listeners.remove(progress)

    async def _pull(self, ref: Reference, creds: Credentials, tracker: _Tracker) -> ImageRecord:
        repo = self.client.repository(ref, creds)
        try:
            with self.store.lease() as lease:
                try:
                    return await self._pull_leased(ref, repo, lease, tracker)
                except BaseException:
                    # Nothing half-stored: drop our claim, then collect what no image uses.
                    lease.release()
                    await asyncio.to_thread(self.store.gc)
                    raise
        finally:
            self.on_change()  # a failed pull may leave shared layers it fetched

    async def _pull_leased(
        self, ref: Reference, repo: Repository, lease: Lease, tracker: _Tracker
    ) -> ImageRecord:
        top = await repo.get_manifest(ref.object)
        lease.add(top.digest)
        await asyncio.to_thread(self.store.put_blob, top.data, top.digest)
        blobs = [top.digest]
        parsed = parse_manifest(top.data, top.media_type)
        manifest_digest = top.digest
        if isinstance(parsed, ImageIndex):
            chosen = select_platform(parsed, self.config.platform)
            child = await repo.get_manifest(chosen.digest)
            lease.add(child.digest)
            await asyncio.to_thread(self.store.put_blob, child.data, child.digest)
            blobs.append(child.digest)
            parsed = parse_manifest(child.data, chosen.media_type or child.media_type)
            manifest_digest = child.digest
            if not isinstance(parsed, ImageManifest):
                raise ManifestError(f"{ref}: nested index for platform {self.config.platform}")
        manifest = parsed
        await self._ensure_blob(repo, manifest.config, lease, None)
        config_bytes = await asyncio.to_thread(self.store.read_blob, manifest.config.digest)
        config = parse_image_config(config_bytes)
        if len(config.diff_ids) != len(manifest.layers):
            raise ManifestError(
                f"{ref}: manifest has {len(manifest.layers)} layers but the config lists "
                f"{len(config.diff_ids)} diff ids"
            )
        blobs.append(manifest.config.digest)
        blobs.extend(layer.digest for layer in manifest.layers)

        tracker.layers_total = len(manifest.layers)
        tracker.bytes_total = sum(layer.size for layer in manifest.layers)
        tracker.emit("resolved", manifest_digest)
        limit = asyncio.Semaphore(self.config.max_concurrent_downloads)
        try:
            async with asyncio.TaskGroup() as tg:
                for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
                    tg.create_task(self._ensure_layer(repo, desc, diff_id, lease, tracker, limit))
        except BaseExceptionGroup as group:
            # Callers (and gRPC status mapping) want the one error that sank the pull.
            raise _first_error(group) from None

        uid, username = split_user(config.user)
        record = await asyncio.to_thread(
            self.store.add_image,
            image_id=manifest.config.digest,
            manifest_digest=manifest_digest,
            size=manifest.config.size + sum(layer.size for layer in manifest.layers),
            user=config.user,
            uid=uid,
            username=username,
            diff_ids=config.diff_ids,
            blobs=blobs,
            tags=[t] if (t := ref.tagged()) is not None else [],
            digests=[ref.digested(top.digest)],
        )
        tracker.emit("done", record.id)
        return record

    async def _ensure_layer(
        self,
        repo: Repository,
        desc: Descriptor,
        diff_id: str,
        lease: Lease,
        tracker: _Tracker,
        limit: asyncio.Semaphore,
    ) -> None:
        lease.add(diff_id)
        if self.store.get_layer(diff_id) is not None:
            # Unpacked already (by another image, perhaps from a differently compressed
            # blob): the compressed bytes are not needed.
            tracker.bytes_done += desc.size
            tracker.layers_done += 1
            tracker.emit("cached", desc.digest)
            return
        async with limit:
            await self._ensure_blob(repo, desc, lease, tracker)
        await self._shared(self._layers, diff_id, lambda: self._unpack(desc, diff_id))
        tracker.layers_done += 1
        tracker.emit("unpacked", desc.digest)

    async def _ensure_blob(
        self, repo: Repository, desc: Descriptor, lease: Lease, tracker: _Tracker | None
    ) -> None:
        lease.add(desc.digest)
        if self.store.has_blob(desc.digest, desc.size):
            if tracker is not None:
                tracker.bytes_done += desc.size
                tracker.emit("downloaded", desc.digest)
            return

        def advance(n: int) -> None:
            if tracker is not None:
                tracker.bytes_done += n
                tracker.emit("downloading", desc.digest)

        # A shared download reports progress only to the pull that started it; the
        # others account the layer's bytes when it completes.
        started_here = desc.digest not in self._blobs
        await self._shared(self._blobs, desc.digest, lambda: self._download(repo, desc, advance))
        if tracker is not None:
            if not started_here:
                tracker.bytes_done += desc.size
            tracker.emit("downloaded", desc.digest)

    async def _shared(
        self,
        table: dict[str, asyncio.Task[None]],
        key: str,
        start: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        task = table.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(start())
            table[key] = task
            task.add_done_callback(lambda _t: table.pop(key, None))
        await asyncio.shield(task)

    async def _download(
        self, repo: Repository, desc: Descriptor, advance: Callable[[int], None]
    ) -> None:
        if self.store.has_blob(desc.digest, desc.size):
            return
        ingest = self.store.new_ingest(desc.digest, desc.size)
        try:
            await repo.fetch_blob(desc, ingest, advance)
            await asyncio.to_thread(self.store.commit_ingest, ingest)
        finally:
            await asyncio.to_thread(self.store.discard_ingest, ingest)

    async def _unpack(self, desc: Descriptor, diff_id: str) -> None:
        await asyncio.to_thread(self.store.ensure_layer, desc.digest, diff_id)

    # -- import, remove, usage -----------------------------------------------------------

    async def import_archive(self, path: Path, name: str | None = None) -> list[ImageRecord]:
        """Import an OCI image-layout tar or a ``docker save`` tar (see importer.py)."""
        try:
            return await asyncio.to_thread(
                import_archive, self.store, Path(path), self.config.platform, name
            )
        finally:
            self.on_change()

    async def remove(self, image: str, field_name: str = "image.image") -> bool:
        """Remove by id (the whole image), tag or digest (that ref; see ImageStore.remove_ref).

        Returns False when nothing matched: removal is idempotent, as CRI requires.
        """
        found = self.store.lookup(image, field_name)
        if found is None:
            return False
        record, how = found
        user = self.in_use(record.id)
        if user is not None:
            raise FailedPrecondition(
                f"{field_name}: image {image!r} is mounted as an image volume by container {user}"
            )
        if how == "id":
            await asyncio.to_thread(self.store.delete_image, record.id)
        else:
            ref = parse_reference(image, field_name)
            key = ref.digested() if how == "digest" else ref.tagged()
            assert key is not None
            await asyncio.to_thread(self.store.remove_ref, key, how)
        await asyncio.to_thread(self.store.gc)
        self.on_change()
        return True


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for exc in g.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(group)
    domain = [e for e in leaves if isinstance(e, RktletError)]
    return (domain or leaves)[0]
