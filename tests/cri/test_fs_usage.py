"""The runtime's usage cache: container stats read it, the daemon starts and stops it.

A real :class:`cri.runtime.Runtime` in this process (its store, image store and
root filesystem directory in a temp dir); no pods are run: the cache reads only
``<rootfs>/<id>/upper``, which the test writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cri.api import api_pb2
from cri.config import Config, load
from cri.errors import InvalidArgument
from cri.runtime import Runtime
from cri.stats import writable_layer_usage
from cri.store import ContainerRecord


def record(container_id: str) -> ContainerRecord:
    return ContainerRecord(
        id=container_id,
        sandbox_id="p" * 64,
        name="c",
        attempt=0,
        state="running",
        created_at=1,
        image="busybox",
        image_id="sha256:" + "1" * 64,
        image_ref="sha256:" + "1" * 64,
        config=api_pb2.ContainerConfig().SerializeToString(),
        log_path="c/0.log",
        info={"rootfs": "x"},
    )


def with_runtime(
    tmp_path: Path, body: Callable[[Runtime], Awaitable[None]], period: float = 10.0
) -> None:
    async def main() -> None:
        config = Config(root=str(tmp_path / "root"), run_dir=str(tmp_path / "run"))
        config.fs_usage_period = period
        rt = Runtime(config)
        try:
            await body(rt)
        finally:
            await rt.close()

    asyncio.run(main())


def write(rt: Runtime, container_id: str, name: str, size: int) -> None:
    upper = rt.rootfs.dir / container_id / "upper"
    upper.mkdir(parents=True, exist_ok=True)
    (upper / name).write_bytes(b"x" * size)


def test_container_stats_take_the_writable_layer_from_the_cache(tmp_path: Path) -> None:
    cid = "c" * 64

    async def body(rt: Runtime) -> None:
        write(rt, cid, "f", 100)
        first = writable_layer_usage(rt, record(cid))  # never measured: measured now
        assert (first.used_bytes.value, first.inodes_used.value) == (100, 1)
        assert first.fs_id.mountpoint == str(rt.rootfs.dir)
        write(rt, cid, "g", 20)
        assert writable_layer_usage(rt, record(cid)) == first
        await rt.fs_usage.refresh()
        after = writable_layer_usage(rt, record(cid))
        assert (after.used_bytes.value, after.inodes_used.value) == (120, 2)
        assert after.timestamp > first.timestamp
        # The same figures as ImageFsInfo's.
        info = await rt.image_service.ImageFsInfo(api_pb2.ImageFsInfoRequest(), None)
        assert info.container_filesystems[0].used_bytes.value == 120
        # A removed container's entry goes with the rest of what was kept about it.
        assert rt.fs_usage.layers_kept == 1
        rt.forget_container(cid)
        assert rt.fs_usage.layers_kept == 0
        info = await rt.image_service.ImageFsInfo(api_pb2.ImageFsInfoRequest(), None)
        assert info.container_filesystems[0].used_bytes.value == 0

    with_runtime(tmp_path, body)


def test_stopping_the_daemon_stops_the_refresh(tmp_path: Path) -> None:
    async def body(rt: Runtime) -> None:
        rt.start()
        assert rt.fs_usage.running
        await rt.fs_usage.next_sweep()
        await rt.fs_usage.next_sweep()  # periodic: a second one comes
        await rt.close()
        assert not rt.fs_usage.running
        left = [t for t in asyncio.all_tasks() if t.get_name() == "fs-usage-refresh"]
        assert left == []

    with_runtime(tmp_path, body, period=0.01)


def test_the_period_is_a_setting(tmp_path: Path) -> None:
    assert load([]).fs_usage_period == 10.0
    assert load(["--fs-usage-period", "2.5"]).fs_usage_period == 2.5
    config_file = tmp_path / "rktlet.toml"
    config_file.write_text("fs_usage_period = 30\n")
    assert load(["--config", str(config_file)]).fs_usage_period == 30.0
    for bad in ("0", "-1", "nan"):
        with pytest.raises(InvalidArgument, match="fs_usage_period: must be a number of seconds"):
            load(["--fs-usage-period", bad])
    config_file.write_text('fs_usage_period = "10s"\n')
    with pytest.raises(InvalidArgument, match="fs_usage_period: must be a number"):
        load(["--config", str(config_file)])
