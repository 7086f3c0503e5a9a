"""The usage cache behind ImageFsInfo and the writable-layer figure of container stats.

A real image store and real directories; writable layers are plain ``<id>/upper``
directories, which is all the cache reads of them.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc

from cri.api import api_pb2, api_pb2_grpc
from cri.images.manager import ImageManager
from cri.images.service import ImageService
from cri.images.store import ImageStore
from cri.images.usage import LayerUsage, UsageCache
from tests.images.images_helpers import run


def write(rootfs: Path, container_id: str, name: str, size: int) -> None:
    upper = rootfs / container_id / "upper"
    upper.mkdir(parents=True, exist_ok=True)
    (upper / name).write_bytes(b"x" * size)


def refresh_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "fs-usage-refresh"]


def test_a_write_in_a_writable_layer_shows_after_a_refresh(
    store: ImageStore, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs"

    async def main() -> None:
        cache = UsageCache(store, rootfs)
        write(rootfs, "a", "f", 100)
        first = await cache.container_usage()  # never measured: measured now
        assert (first.used_bytes, first.inodes_used) == (100, 1)
        write(rootfs, "a", "g", 50)
        assert await cache.container_usage() == first
        assert cache.layer("a").used_bytes == 100
        await cache.refresh()
        after = await cache.container_usage()
        assert (after.used_bytes, after.inodes_used) == (150, 2)
        assert (cache.layer("a").used_bytes, cache.layer("a").inodes_used) == (150, 2)

    run(main())


def test_timestamps_are_when_measured(store: ImageStore, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"

    async def main() -> None:
        cache = UsageCache(store, rootfs)
        write(rootfs, "a", "f", 10)
        before = time.time_ns()
        await cache.refresh()
        after = time.time_ns()
        images = await cache.image_usage()
        containers = await cache.container_usage()
        layer = cache.layer("a")
        for stamp in (images.timestamp_ns, containers.timestamp_ns, layer.timestamp_ns):
            assert before <= stamp <= after
        # Asked again later: the same measurement and its time, not the time of asking.
        await asyncio.sleep(0.01)
        assert await cache.image_usage() == images
        assert await cache.container_usage() == containers
        assert cache.layer("a") == layer
        # A layer first asked for later is measured then; the total is as old as its
        # oldest part.
        write(rootfs, "b", "f", 5)
        asked = time.time_ns()
        assert cache.layer("b").timestamp_ns >= asked
        total = await cache.container_usage()
        assert total.timestamp_ns == layer.timestamp_ns
        assert total.used_bytes == 15

    run(main())


def test_an_empty_node_is_stamped_with_its_sweep(store: ImageStore, tmp_path: Path) -> None:
    async def main() -> None:
        cache = UsageCache(store, tmp_path / "no-rootfs-yet")
        before = time.time_ns()
        usage = await cache.container_usage()
        assert (usage.used_bytes, usage.inodes_used) == (0, 0)
        assert before <= usage.timestamp_ns <= time.time_ns()

    run(main())


def test_a_removed_container_goes(store: ImageStore, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"

    async def main() -> None:
        cache = UsageCache(store, rootfs)
        for name, size in (("a", 100), ("b", 20), ("c", 3)):
            write(rootfs, name, "f", size)
        assert (await cache.container_usage()).used_bytes == 123
        # Told: gone at once.
        shutil.rmtree(rootfs / "a")
        cache.forget("a")
        assert (await cache.container_usage()).used_bytes == 23
        # Not told (removed by another process): gone at the next sweep.
        shutil.rmtree(rootfs / "b")
        await cache.refresh()
        assert (await cache.container_usage()).used_bytes == 3
        assert cache.layer("b") == LayerUsage(0, 0, cache.layer("b").timestamp_ns)

    run(main())


def test_a_container_removed_during_a_sweep_does_not_come_back(
    store: ImageStore, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs"
    names = [f"c{n:02d}" for n in range(30)]

    async def main() -> None:
        cache = UsageCache(store, rootfs)
        for name in names:
            write(rootfs, name, "f", 1)
        sweep = asyncio.create_task(cache.refresh())
        while not cache._sweep_lock.locked():
            await asyncio.sleep(0)
        for name in names[::2]:
            shutil.rmtree(rootfs / name)
            cache.forget(name)
        await sweep
        assert (await cache.container_usage()).used_bytes == 15
        assert sorted(cache._layers) == names[1::2]

    run(main())


def test_image_changes_are_measured_at_the_next_answer(store: ImageStore, tmp_path: Path) -> None:
    async def main() -> None:
        cache = UsageCache(store, tmp_path / "rootfs")
        first = await cache.image_usage()
        store.put_blob(b"a" * 1000)
        assert await cache.image_usage() == first  # not told: the last measurement
        cache.images_changed()
        changed = await cache.image_usage()
        assert changed.used_bytes == first.used_bytes + 1000
        assert changed.inodes_used == first.inodes_used + 1

    run(main())


def test_the_sweep_lets_other_calls_through(store: ImageStore, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    for n in range(300):
        for k in range(20):
            write(rootfs, f"c{n:03d}", f"f{k}", 10)

    async def main() -> None:
        manager = ImageManager(store)
        cache = UsageCache(store, rootfs)
        server = grpc.aio.server()
        api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(manager, usage=cache), server)
        socket = tmp_path / "cri.sock"
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
                stub = api_pb2_grpc.ImageServiceStub(channel)
                await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())  # the first sweep
                sweep = asyncio.create_task(cache.refresh())
                while not cache._sweep_lock.locked():
                    await asyncio.sleep(0)
                for _ in range(3):
                    await stub.ListImages(api_pb2.ListImagesRequest())
                    await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
                assert not sweep.done()  # answered while the sweep went on
                await sweep
                usage = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
                assert usage.container_filesystems[0].used_bytes.value == 300 * 20 * 10
        finally:
            await server.stop(None)
            await manager.aclose()

    run(main())


def test_the_periodic_task_measures_and_stops(store: ImageStore, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"

    async def main() -> None:
        cache = UsageCache(store, rootfs, period=0.01)
        cache.start()
        try:
            assert cache.running
            await cache.next_sweep()
            write(rootfs, "a", "f", 7)
            await cache.next_sweep()
            assert (await cache.container_usage()).used_bytes == 7
            write(rootfs, "a", "g", 3)
            await cache.next_sweep()
            assert cache.layer("a").used_bytes == 10
        finally:
            await cache.stop()
        assert not cache.running
        assert refresh_tasks() == []

    run(main())
