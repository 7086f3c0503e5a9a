"""Offline import (OCI layout and docker save archives) and the `rktlet image` commands."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from cri import cli
from cri.client.image_store import main as image_main
from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.images.config import host_platform
from cri.images.importer import import_archive
from cri.images.store import DigestMismatch, ImageStore
from fixtures.build_images import write_docker_archive, write_oci_archive
from fixtures.registry import Registry
from tests.images.images_helpers import run


def test_import_oci_archive_with_a_bare_tag_and_a_name(
    layout: Path, tmp_path: Path, store: ImageStore
) -> None:
    archive = write_oci_archive(layout, "rktlet/httpd:latest", tmp_path / "httpd.tar", "v1")
    (record,) = import_archive(store, archive, host_platform(), "example.test/web/httpd")
    assert record.repo_tags == ("example.test/web/httpd:v1",)
    assert record.repo_digests == ()
    top = store.get_layer(record.diff_ids[-1])
    assert top is not None and (top.path / "www/index.html").read_bytes().startswith(b"hello")
    # Without a name the image is kept, untagged, reachable by id.
    store2 = ImageStore(tmp_path / "store2")
    (untagged,) = import_archive(store2, archive, host_platform())
    assert untagged.id == record.id and untagged.repo_tags == ()
    store2.close()


def test_import_oci_archive_with_full_name_and_index(
    layout: Path, tmp_path: Path, store: ImageStore
) -> None:
    archive = write_oci_archive(
        layout,
        "rktlet/multiarch:latest",
        tmp_path / "multi.tar",
        image_name="registry.test/multi:2",
    )
    (record,) = import_archive(store, archive, host_platform())
    assert record.repo_tags == ("registry.test/multi:2",)
    layer = store.get_layer(record.diff_ids[0])
    assert layer is not None and (layer.path / "platform").read_bytes().startswith(b"linux/")


def test_import_docker_save_archive(layout: Path, tmp_path: Path, store: ImageStore) -> None:
    archive = write_docker_archive(
        layout, "rktlet/busybox:latest", "busybox:offline", tmp_path / "busybox.tar"
    )
    (record,) = import_archive(store, archive, host_platform())
    assert record.repo_tags == ("docker.io/library/busybox:offline",)
    assert store.lookup("busybox:offline") is not None
    layer = store.get_layer(record.diff_ids[0])
    assert layer is not None and (layer.path / "bin/busybox").exists()
    manifest = json.loads(store.read_blob(record.manifest_digest))
    assert manifest["layers"][0]["mediaType"].endswith("rootfs.diff.tar")
    assert manifest["config"]["digest"] == record.id


def test_import_rejects_bad_archives(layout: Path, tmp_path: Path, store: ImageStore) -> None:
    with pytest.raises(NotFound):
        import_archive(store, tmp_path / "missing.tar", host_platform())
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidArgument, match="not a tar archive"):
        import_archive(store, junk, host_platform())
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tf:
        tf.addfile(tarfile.TarInfo("README"), io.BytesIO(b""))
    with pytest.raises(InvalidArgument, match="neither an OCI image layout"):
        import_archive(store, empty, host_platform())

    # A blob whose bytes do not match its name is refused, and nothing is kept.
    good = write_oci_archive(layout, "rktlet/pause:latest", tmp_path / "pause.tar")
    bad = tmp_path / "tampered.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            content = data.read() if data else b""
            if member.name.startswith("blobs/") and member.size > 100_000:
                content = content[:-1] + bytes([content[-1] ^ 1])
            dst.addfile(member, io.BytesIO(content))
    with pytest.raises(DigestMismatch) as info:
        import_archive(store, bad, host_platform())
    assert isinstance(info.value, FailedPrecondition)
    assert store.list_images() == []
    assert [p for p in store.blobs_dir.rglob("*") if p.is_file()] == []


def test_cli_import_pull_list_rm(
    layout: Path,
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config.toml"
    config.write_text(f'[images.registries."{registry.host}"]\ninsecure = true\n')
    base = ["image", "--root", str(root), "--config", str(config)]

    archive = write_docker_archive(
        layout, "rktlet/pause:latest", "example.test/pause:3", tmp_path / "pause.tar"
    )
    assert image_main([*base, "import", str(archive)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("imported sha256:") and "example.test/pause:3" in out

    ref = f"{registry.host}/rktlet/busybox"
    assert image_main([*base, "pull", ref]) == 0
    captured = capsys.readouterr()
    image_id = captured.out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert "resolved sha256:" in captured.err and "done: 1/1 layers" in captured.err

    assert image_main([*base, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert any(line.startswith(ref) and image_id[7:19] in line for line in listing)
    assert any(line.startswith("example.test/pause") for line in listing)

    assert image_main([*base, "list", "-q", ref]) == 0
    assert capsys.readouterr().out.strip() == image_id

    assert image_main([*base, "rm", ref, "nothing-here"]) == 1
    captured = capsys.readouterr()
    assert f"removed {ref}" in captured.out and "no such image: nothing-here" in captured.err
    assert image_main([*base, "list", "-q"]) == 0
    assert image_id not in capsys.readouterr().out

    assert image_main([*base, "pull", "Bad/Name"]) == 1
    assert "image: invalid repository name component" in capsys.readouterr().err
    config.write_text("[images]\nretries = -1\n")
    assert image_main([*base, "list"]) == 1
    assert "images.retries" in capsys.readouterr().err


def test_cli_store_options_after_the_verb(
    layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rktlet image import --root DIR FILE`, through the one `rktlet` entry point."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    archive = write_docker_archive(
        layout, "rktlet/pause:latest", "example.test/pause:3", tmp_path / "pause.tar"
    )
    assert cli.main(["image", "import", "--root", str(root), str(archive)]) == 0
    image_id = capsys.readouterr().out.split()[1]
    assert image_id.startswith("sha256:")
    assert cli.main(["image", "list", "-q", f"--root={root}"]) == 0
    assert capsys.readouterr().out.split() == [image_id]
    # Given twice, the verb's value wins, as argparse does for any option.
    assert cli.main(["image", "--root", str(elsewhere), "list", "--root", str(root), "-q"]) == 0
    assert capsys.readouterr().out.split() == [image_id]
    assert cli.main(["image", "--root", str(elsewhere), "list", "-q"]) == 0
    assert capsys.readouterr().out.split() == []
    assert cli.main(["image", "rm", "example.test/pause:3", "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip() == "removed example.test/pause:3"


def test_manager_import_runs_off_the_loop(layout: Path, tmp_path: Path, store: ImageStore) -> None:
    from cri.images.manager import ImageManager

    archive = write_oci_archive(layout, "rktlet/pause:latest", tmp_path / "p.tar", "1")
    manager = ImageManager(store)

    async def body() -> list[str]:
        try:
            records = await manager.import_archive(archive, "pause")
            return [t for r in records for t in r.repo_tags]
        finally:
            await manager.aclose()

    assert run(body()) == ["docker.io/library/pause:1"]


def test_an_import_by_another_process_is_seen_at_once(
    layout: Path, tmp_path: Path, store: ImageStore
) -> None:
    # The daemon keeps its answers to ImageStatus and ListImages until its store
    # changes; `rktlet image import` writes the same database from another process.
    assert store.lookup("busybox:offline") is None
    assert store.list_images() == []
    archive = write_docker_archive(
        layout, "rktlet/busybox:latest", "busybox:offline", tmp_path / "busybox.tar"
    )
    other = ImageStore(store.root)
    try:
        (record,) = import_archive(other, archive, host_platform())
        found = store.lookup("busybox:offline")
        assert found is not None and found[0] == record
        assert store.list_images() == [record]
        assert other.remove_ref("docker.io/library/busybox:offline", "tag")
    finally:
        other.close()
    assert store.lookup("busybox:offline") is None
    assert store.list_images() == []
