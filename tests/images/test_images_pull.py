"""Pulls from a real docker-registry on 127.0.0.1: auth, mirrors, platforms, failures."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cri.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from cri.images.auth import Credentials
from cri.images.config import ImagesConfig
from cri.images.manager import ImageManager, ProgressEvent
from cri.images.store import DigestMismatch, ImageRecord, ImageStore
from fixtures.build_images import host_arch
from fixtures.registry import FaultProxy, Registry, TokenServer, free_port, push_layout
from tests.images.images_helpers import (
    BASIC_USER,
    IDENTITY_TOKEN,
    TOKEN_USER,
    insecure_config,
    mirror_config,
    run,
    store_is_empty,
    with_manager,
)

MakeManager = Callable[..., ImageManager]


def pull(
    manager: ImageManager,
    image: str,
    credentials: Credentials | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> ImageRecord:
    return run(with_manager(manager, lambda m: m.pull(image, credentials, progress)))


def _layer_file(store: ImageStore, record: ImageRecord, path: str) -> bytes:
    layer = store.get_layer(record.diff_ids[-1])
    assert layer is not None
    return (layer.path / path).read_bytes()


def test_anonymous_pull_records_the_image(
    registry: Registry, make_manager: MakeManager, store: ImageStore
) -> None:
    events: list[ProgressEvent] = []
    ref = f"{registry.host}/rktlet/busybox"
    record = pull(make_manager(insecure_config(registry.host)), ref, progress=events.append)

    config = json.loads(store.read_blob(record.id))
    assert (
        record.id
        == "sha256:" + __import__("hashlib").sha256(store.read_blob(record.id)).hexdigest()
    )
    assert record.repo_tags == (f"{ref}:latest",)
    assert record.repo_digests == (f"{ref}@{record.manifest_digest}",)
    assert record.diff_ids == tuple(config["rootfs"]["diff_ids"])
    assert record.uid is None and record.username == ""
    layer = store.get_layer(record.diff_ids[0])
    assert layer is not None
    busybox = os.lstat(layer.path / "bin/busybox")
    sh = os.lstat(layer.path / "bin/sh")
    assert busybox.st_ino == sh.st_ino, "applets are hard links to busybox"
    assert stat_mode(busybox.st_mode) == 0o755
    assert events[0].kind == "resolved" and events[-1].kind == "done"
    assert events[-1].bytes_done == events[-1].bytes_total > 0
    assert events[-1].layers_done == events[-1].layers_total == 1
    assert store.lookup(ref) is not None and store.lookup(record.id) is not None


def stat_mode(mode: int) -> int:
    return mode & 0o7777


@pytest.mark.parametrize(
    ("image", "uid", "username"),
    [
        ("user-uid", 1234, ""),
        ("user-name", None, "app"),
        ("user-uid-gid", 1234, ""),
        ("user-name-gid", None, "app"),
    ],
)
def test_user_from_config(
    registry: Registry,
    make_manager: MakeManager,
    image: str,
    uid: int | None,
    username: str,
) -> None:
    record = pull(make_manager(insecure_config(registry.host)), f"{registry.host}/rktlet/{image}")
    assert (record.uid, record.username) == (uid, username)


def test_layers_are_unpacked_once_per_diff_id(
    registry: Registry, store: ImageStore, make_manager: MakeManager
) -> None:
    config = insecure_config(registry.host)

    async def body(m: ImageManager) -> list[ImageRecord]:
        # busybox (gzip) and user-uid (uncompressed) carry the same diff id.
        a = await m.pull(f"{registry.host}/rktlet/busybox")
        events: list[ProgressEvent] = []
        b = await m.pull(f"{registry.host}/rktlet/user-uid", progress=events.append)
        assert [e.kind for e in events if e.kind in ("cached", "unpacked")] == ["cached"]
        c = await m.pull(f"{registry.host}/rktlet/httpd")
        return [a, b, c]

    a, b, c = run(with_manager(make_manager(config), body))
    assert a.diff_ids == b.diff_ids == c.diff_ids[:1]
    assert sorted(p.name for p in store.layers_dir.iterdir()) == ["1", "2"]
    assert _layer_file(store, c, "www/index.html") == b"hello from rktlet httpd\n"


def test_pull_by_digest_and_unknown_names(registry: Registry, make_manager: MakeManager) -> None:
    config = insecure_config(registry.host)
    name = f"{registry.host}/rktlet/pause"

    async def body(m: ImageManager) -> ImageRecord:
        first = await m.pull(name)
        by_digest = await m.pull(f"{name}@{first.manifest_digest}")
        assert by_digest.id == first.id
        with pytest.raises(NotFound, match="not found"):
            await m.pull(f"{name}:no-such-tag")
        with pytest.raises(NotFound):
            await m.pull(f"{registry.host}/rktlet/no-such-repo")
        with pytest.raises(NotFound):
            await m.pull(f"{name}@sha256:{'0' * 64}")
        return by_digest

    record = run(with_manager(make_manager(config), body))
    assert f"{name}@{record.manifest_digest}" in record.repo_digests


@pytest.mark.parametrize(
    ("platform", "expected"),
    [(None, None), ("linux/arm64/v8", b"linux/arm64/v8\n"), ("linux/s390x", b"linux/s390x\n")],
)
def test_manifest_list_picks_the_platform(
    registry: Registry,
    store: ImageStore,
    make_manager: MakeManager,
    platform: str | None,
    expected: bytes | None,
) -> None:
    extra = {"platform": platform} if platform else {}
    record = pull(
        make_manager(insecure_config(registry.host, **extra)),
        f"{registry.host}/rktlet/multiarch",
    )
    if expected is None:
        arch, variant = host_arch()
        expected = f"linux/{arch}{'/' + variant if variant else ''}\n".encode()
    assert _layer_file(store, record, "platform") == expected
    # The repo digest is the index's, as docker and containerd report it.
    index_digest = record.repo_digests[0].split("@", 1)[1]
    assert index_digest != record.manifest_digest
    assert json.loads(store.read_blob(index_digest))["mediaType"].endswith("index.v1+json")


def test_manifest_list_without_the_platform(registry: Registry, make_manager: MakeManager) -> None:
    config = insecure_config(registry.host, platform="linux/riscv64")
    with pytest.raises(NotFound, match="no image for platform linux/riscv64"):
        pull(make_manager(config), f"{registry.host}/rktlet/multiarch")


def test_plain_http_only_when_configured(
    registry: Registry, make_manager: MakeManager, store: ImageStore
) -> None:
    # Without `insecure`, the client speaks TLS to the plain-HTTP registry and fails.
    with pytest.raises(Unavailable, match=registry.host):
        pull(make_manager(ImagesConfig()), f"{registry.host}/rktlet/pause")
    assert store_is_empty(store) == []
    assert pull(make_manager(insecure_config(registry.host)), f"{registry.host}/rktlet/pause").id


def test_basic_auth(basic_registry: Registry, make_manager: MakeManager, store: ImageStore) -> None:
    config = insecure_config(basic_registry.host)
    name = f"{basic_registry.host}/rktlet/busybox"
    with pytest.raises(PermissionDenied, match="requires credentials"):
        pull(make_manager(config), name)
    with pytest.raises(PermissionDenied, match="HTTP 401"):
        pull(make_manager(config), name, Credentials(BASIC_USER[0], "wrong"))
    assert store_is_empty(store) == []
    record = pull(make_manager(config), name, Credentials(*BASIC_USER))
    assert record.repo_tags == (f"{name}:latest",)
    auth = base64.b64encode(f"{BASIC_USER[0]}:{BASIC_USER[1]}".encode()).decode()
    again = pull(make_manager(config), name, Credentials.from_auth_config(auth=auth))
    assert again.id == record.id


def test_bearer_token_auth(
    token_registry: Registry,
    token_server: TokenServer,
    make_manager: MakeManager,
) -> None:
    config = insecure_config(token_registry.host)
    name = f"{token_registry.host}/rktlet/busybox"
    scope = "repository:rktlet/busybox:pull"

    # Anonymous: the token server grants nothing, the registry refuses the token.
    with pytest.raises(PermissionDenied):
        pull(make_manager(config), name)

    token_server.requests.clear()
    record = pull(make_manager(config), name, Credentials(*TOKEN_USER))
    gets = [r for r in token_server.requests if r["method"] == "GET"]
    assert gets and gets[0]["user"] == TOKEN_USER[0] and scope in gets[0]["scope"]
    # One token serves the manifest, config and layer requests.
    assert len(gets) == 1

    token_server.requests.clear()
    by_identity = pull(make_manager(config), name, Credentials(identity_token=IDENTITY_TOKEN))
    assert by_identity.id == record.id
    assert [(r["method"], r["grant"], r["user"]) for r in token_server.requests] == [
        ("POST", "refresh_token", TOKEN_USER[0])
    ]

    with pytest.raises(PermissionDenied, match="refused"):
        pull(make_manager(config), name, Credentials(TOKEN_USER[0], "bad-password"))

    token_server.requests.clear()
    registry_token = token_server.issue(TOKEN_USER[0], [scope])
    by_token = pull(make_manager(config), name, Credentials(registry_token=registry_token))
    assert by_token.id == record.id
    assert token_server.requests == [], "a registry token is used as is"


def test_mirrors_are_tried_in_order_then_upstream(
    registry: Registry, tmp_path: Path, layout: Path, make_manager: MakeManager
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with (
        Registry(tmp_path / "empty") as empty,
        FaultProxy(empty.port) as empty_proxy,
        FaultProxy(registry.port) as full_proxy,
    ):
        # The image is named after an upstream that is down; the first mirror lacks
        # it; the second has it.
        config = mirror_config(
            dead,
            [f"http://{empty_proxy.host}", full_proxy.host],
            insecure=[dead, full_proxy.host],
        )
        record = pull(make_manager(config), f"{dead}/rktlet/busybox")
        assert record.repo_tags == (f"{dead}/rktlet/busybox:latest",)
        assert empty_proxy.requests["/v2/rktlet/busybox/manifests/latest"] == 1
        assert full_proxy.requests["/v2/rktlet/busybox/manifests/latest"] == 1
        assert len(full_proxy.blob_requests()) == 2, "config and layer came from the mirror"
        assert empty_proxy.blob_requests() == {}


def test_mirror_down_falls_back_to_upstream(registry: Registry, make_manager: MakeManager) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = mirror_config(registry.host, [f"http://{dead}"], [registry.host], retries=0)
    record = pull(make_manager(config), f"{registry.host}/rktlet/pause")
    assert record.repo_tags == (f"{registry.host}/rktlet/pause:latest",)


def test_digest_mismatch_is_rejected_and_nothing_is_kept(
    layout: Path, tmp_path: Path, make_manager: MakeManager, store: ImageStore
) -> None:
    with Registry(tmp_path / "corrupt") as reg:
        push_layout(layout, reg.url, only={"rktlet/busybox:latest"})
        manifest = json.loads(
            __import__("httpx")
            .get(
                f"{reg.url}/v2/rktlet/busybox/manifests/latest",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            )
            .content
        )
        blob = reg.blob_data_path(manifest["layers"][0]["digest"])
        data = bytearray(blob.read_bytes())
        data[1000] ^= 0xFF  # same size, different content
        blob.write_bytes(bytes(data))
        with pytest.raises(DigestMismatch, match="digest mismatch") as info:
            pull(make_manager(insecure_config(reg.host)), f"{reg.host}/rktlet/busybox")
        assert isinstance(info.value, FailedPrecondition)
    assert store_is_empty(store) == []


def test_interrupted_download_resumes(
    registry: Registry, make_manager: MakeManager, store: ImageStore
) -> None:
    with FaultProxy(registry.port, cut_after=100_000, cuts=1) as proxy:
        record = pull(make_manager(insecure_config(proxy.host)), f"{proxy.host}/rktlet/busybox")
        assert proxy.cuts_done == 1
    layer_path = [p for p in proxy.blob_requests() if p.endswith(record.diff_ids[0])]
    assert layer_path == [], "blob requests are by blob digest, not diff id"
    layer_requests = [n for p, n in proxy.blob_requests().items() if n > 1]
    assert layer_requests == [2], "the cut layer was requested again"
    ranges = [r for p, r in proxy.gets if "/blobs/" in p and r is not None]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and ranges[0].endswith("-")
    assert int(ranges[0][6:-1]) > 0, "the retry resumed where the cut left off"
    assert store.get_layer(record.diff_ids[0]) is not None


def test_failed_pull_leaves_nothing_and_can_be_retried(
    registry: Registry, make_manager: MakeManager, store: ImageStore
) -> None:
    with FaultProxy(registry.port, cut_after=100_000, cuts=1) as proxy:
        config = insecure_config(proxy.host, retries=0)
        name = f"{proxy.host}/rktlet/busybox"
        with pytest.raises(Unavailable):
            pull(make_manager(config), name)
        assert store_is_empty(store) == []
        record = pull(make_manager(config), name)
    assert store.lookup(name) is not None and record.repo_tags == (f"{name}:latest",)


def test_concurrent_pulls_share_the_work(
    registry: Registry, make_manager: MakeManager, store: ImageStore
) -> None:
    with FaultProxy(registry.port) as proxy:
        config = insecure_config(proxy.host)

        async def body(m: ImageManager) -> list[ImageRecord]:
            names = ["busybox", "busybox", "busybox", "httpd", "whiteout"]
            return await asyncio.gather(*(m.pull(f"{proxy.host}/rktlet/{n}") for n in names))

        records = run(with_manager(make_manager(config), body))
        blob_counts = proxy.blob_requests()
    assert len({r.id for r in records[:3]}) == 1
    # busybox, httpd and whiteout share the base layer blob: fetched once in all.
    assert set(blob_counts.values()) == {1}, blob_counts
    assert proxy.requests["/v2/rktlet/busybox/manifests/latest"] == 1
    base = records[0].diff_ids[0]
    assert all(r.diff_ids[0] == base for r in records)
    assert len(list(store.layers_dir.iterdir())) == 1 + 1 + 2


def test_a_token_the_registry_refuses_is_fetched_again(
    token_registry: Registry, token_server: TokenServer, make_manager: MakeManager
) -> None:
    name = f"{token_registry.host}/rktlet/busybox"
    creds = Credentials(*TOKEN_USER)

    async def body(m: ImageManager) -> ImageRecord:
        first = await m.pull(name, creds)
        # Swap each cached token for a validly signed one for another repository.
        cache = m.client.tokens._tokens
        assert cache, "the token was cached"
        for key in list(cache):
            m.client.tokens.put(key, token_server.issue(TOKEN_USER[0], ["repository:x:pull"]), 300)
        assert await m.remove(first.id)
        token_server.requests.clear()
        return await m.pull(name, creds)

    record = run(with_manager(make_manager(insecure_config(token_registry.host)), body))
    assert record.repo_tags == (f"{name}:latest",)
    assert [r["method"] for r in token_server.requests] == ["GET"], "one fresh token"


def test_pin(registry: Registry, make_manager: MakeManager, store: ImageStore) -> None:
    async def body(m: ImageManager) -> ImageRecord:
        await m.pull(f"{registry.host}/rktlet/pause")
        with pytest.raises(NotFound, match=r"^image: "):
            m.pin("sha256:" + "2" * 64)
        return m.pin(f"{registry.host}/rktlet/pause")

    record = run(with_manager(make_manager(insecure_config(registry.host)), body))
    assert record.pinned and store.list_images()[0].pinned
