"""Removal semantics, garbage collection and overlay root filesystems, on real pulls."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.images.manager import ImageManager
from cri.images.rootfs import RootfsManager, is_mounted
from cri.images.store import ImageRecord, ImageStore
from fixtures.registry import Registry, free_port
from tests.images.images_helpers import insecure_config, run, with_manager

MakeManager = Callable[..., ImageManager]


def pull_all(manager: ImageManager, *images: str) -> list[ImageRecord]:
    async def body(m: ImageManager) -> list[ImageRecord]:
        return [await m.pull(i) for i in images]

    return run(with_manager(manager, body))


def remove(manager: ImageManager, image: str) -> bool:
    return run(with_manager(manager, lambda m: m.remove(image)))


def _retag(store: ImageStore, record: ImageRecord, tag: str) -> None:
    store.add_image(
        image_id=record.id,
        manifest_digest=record.manifest_digest,
        size=record.size,
        user=record.user,
        uid=record.uid,
        username=record.username,
        diff_ids=record.diff_ids,
        blobs=record.blobs,
        tags=[tag],
    )


def test_remove_by_tag_untags_until_the_last_tag(
    registry: Registry, store: ImageStore, make_manager: MakeManager
) -> None:
    config = insecure_config(registry.host)
    name = f"{registry.host}/rktlet/busybox"
    (record,) = pull_all(make_manager(config), name)
    _retag(store, record, f"{name}:v2")
    assert remove(make_manager(config), f"{name}:latest") is True
    left = store.get_image(record.id)
    assert left is not None and left.repo_tags == (f"{name}:v2",)
    assert store.get_layer(record.diff_ids[0]) is not None
    assert remove(make_manager(config), f"{name}:v2") is True
    assert store.get_image(record.id) is None
    # Nothing uses the layer or the blobs any more.
    assert list(store.layers_dir.iterdir()) == []
    assert [p for p in store.blobs_dir.rglob("*") if p.is_file()] == []
    assert remove(make_manager(config), f"{name}:v2") is False, "idempotent"


def test_remove_by_id_and_by_digest(
    registry: Registry, store: ImageStore, make_manager: MakeManager
) -> None:
    config = insecure_config(registry.host)
    busybox, httpd = pull_all(
        make_manager(config), f"{registry.host}/rktlet/busybox", f"{registry.host}/rktlet/httpd"
    )
    assert remove(make_manager(config), busybox.id) is True
    assert store.get_image(busybox.id) is None
    # httpd shares the base layer: it stays.
    assert store.get_layer(httpd.diff_ids[0]) is not None

    (pause,) = pull_all(make_manager(config), f"{registry.host}/rktlet/pause")
    pinned = f"{registry.host}/rktlet/pause@{pause.manifest_digest}"
    assert remove(make_manager(config), f"{registry.host}/rktlet/pause:latest") is True
    (by_digest,) = pull_all(make_manager(config), pinned)
    assert by_digest.repo_tags == () and by_digest.repo_digests == (pinned,)
    assert remove(make_manager(config), pinned) is True
    assert store.get_image(by_digest.id) is None
    with pytest.raises(InvalidArgument, match=r"^image\.image: "):
        remove(make_manager(config), "Not/A/Valid/Name")
    # A short id prefix works like in `docker rmi`.
    assert remove(make_manager(config), httpd.id.split(":")[1][:12]) is True
    assert store.list_images() == []


@pytest.fixture
def rootfs(store: ImageStore) -> Iterator[RootfsManager]:
    manager = RootfsManager(store)
    try:
        yield manager
    finally:
        # Unmount whatever a failing test left mounted.
        for cid in manager.list_ids():
            manager.remove(cid)
        for entry in manager.dir.iterdir():
            if is_mounted(entry / "merged"):
                subprocess.run(["umount", "-l", str(entry / "merged")], check=False)


def test_overlay_rootfs_shows_the_image_with_whiteouts_applied(
    registry: Registry, store: ImageStore, make_manager: MakeManager, rootfs: RootfsManager
) -> None:
    (record,) = pull_all(
        make_manager(insecure_config(registry.host)), f"{registry.host}/rktlet/whiteout"
    )
    root = rootfs.create("ctr-1", record.id)
    assert is_mounted(root)
    assert (root / "data/keep").read_bytes() == b"keep\n"
    assert not (root / "data/gone").exists(), "whited out by the top layer"
    assert sorted(os.listdir(root / "olddir")) == ["new"], "opaque directory"
    assert not (root / "bin/vi").exists() and (root / "bin/sh").exists()
    assert (root / "bin/busybox").exists(), "masking one applet keeps busybox"
    # The image really runs from it.
    out = subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", "echo hi > /tmp/x; cat /tmp/x /data/keep"],
        capture_output=True,
        check=True,
    ).stdout
    assert out == b"hi\nkeep\n"
    upper = rootfs.dir / "ctr-1" / "upper"
    assert (upper / "tmp/x").read_bytes() == b"hi\n", "writes land in the private upper dir"
    for diff_id in record.diff_ids:
        layer = store.get_layer(diff_id)
        assert layer is not None and not (layer.path / "tmp/x").exists()

    other = rootfs.create("ctr-2", f"{registry.host}/rktlet/whiteout:latest")
    assert not (other / "tmp/x").exists(), "each container has its own upper dir"

    rootfs.remove("ctr-1")
    assert not is_mounted(root) and not (rootfs.dir / "ctr-1").exists()
    rootfs.remove("ctr-1")  # idempotent
    rootfs.remove("ctr-2")
    assert rootfs.list_ids() == []


def test_readonly_rootfs(
    registry: Registry, make_manager: MakeManager, rootfs: RootfsManager
) -> None:
    (record,) = pull_all(
        make_manager(insecure_config(registry.host)), f"{registry.host}/rktlet/busybox"
    )
    root = rootfs.create("ro", record.id, readonly=True)
    with pytest.raises(OSError) as info:
        (root / "tmp/x").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    assert (root / "bin/busybox").exists()


def test_layers_outlive_a_removed_image_until_its_containers_go(
    registry: Registry, store: ImageStore, make_manager: MakeManager, rootfs: RootfsManager
) -> None:
    config = insecure_config(registry.host)
    (record,) = pull_all(make_manager(config), f"{registry.host}/rktlet/pause")
    root = rootfs.create("pod-infra", record.id)
    assert remove(make_manager(config), record.id) is True
    assert (root / "catatonit").exists(), "the mounted container keeps working"
    assert store.get_layer(record.diff_ids[0]) is not None
    rootfs.remove("pod-infra")
    assert store.get_layer(record.diff_ids[0]) is None
    assert list(store.layers_dir.iterdir()) == []


def test_rootfs_bad_input(
    registry: Registry, make_manager: MakeManager, rootfs: RootfsManager
) -> None:
    (record,) = pull_all(
        make_manager(insecure_config(registry.host)), f"{registry.host}/rktlet/pause"
    )
    with pytest.raises(InvalidArgument, match=r"^container_id: "):
        rootfs.create("../evil", record.id)
    with pytest.raises(NotFound, match=r"^image: "):
        rootfs.create("c1", "sha256:" + "1" * 64)
    rootfs.create("c1", record.id)
    with pytest.raises(FailedPrecondition, match="already has a root filesystem"):
        rootfs.create("c1", record.id)


def test_httpd_image_serves_its_page(
    registry: Registry, make_manager: MakeManager, rootfs: RootfsManager
) -> None:
    (record,) = pull_all(
        make_manager(insecure_config(registry.host)), f"{registry.host}/rktlet/httpd"
    )
    root = rootfs.create("web", record.id)
    config = json.loads(rootfs.store.read_blob(record.id))["config"]
    assert config["Cmd"][:2] == ["httpd", "-f"] and "80/tcp" in config["ExposedPorts"]
    port = free_port()
    # The image's own command, on a loopback port instead of :80 in the host namespace.
    cmd = [*config["Cmd"]]
    cmd[cmd.index("80")] = f"127.0.0.1:{port}"
    server = subprocess.Popen(["chroot", str(root), *cmd])
    try:
        body = b""
        for _ in range(100):
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=5).content
                break
            except httpx.ConnectError:
                # httpd has no readiness signal; connect until it listens.
                if server.poll() is not None:
                    raise
                time.sleep(0.05)
        assert body == b"hello from rktlet httpd\n"
    finally:
        server.terminate()
        server.wait(10)
