"""The CRI ImageService over a real grpc.aio server on a unix socket."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2, api_pb2_grpc
from cri.images.config import ImagesConfig
from cri.images.manager import ImageManager
from cri.images.rootfs import RootfsManager
from cri.images.service import ImageService
from cri.images.store import ImageStore
from fixtures.registry import Registry
from tests.images.images_helpers import BASIC_USER, insecure_config, run


def serve(
    store: ImageStore,
    tmp_path: Path,
    config: ImagesConfig,
    body: Callable[[Any], Awaitable[None]],
    service: list[ImageService] | None = None,
) -> None:
    """Run ``body`` with a stub of a served ImageService (appended to ``service`` if given)."""

    async def main() -> None:
        manager = ImageManager(store, config)
        server = grpc.aio.server()
        servicer = ImageService(manager)
        if service is not None:
            service.append(servicer)
        api_pb2_grpc.add_ImageServiceServicer_to_server(servicer, server)
        socket = tmp_path / "cri.sock"
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
                await body(api_pb2_grpc.ImageServiceStub(channel))
        finally:
            await server.stop(None)
            await manager.aclose()

    run(main())


def spec(image: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image)


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert fragment in (info.value.details() or "")


def test_pull_list_status_remove(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/rktlet/user-name-gid"

    async def body(stub: Any) -> None:
        pulled = await stub.PullImage(api_pb2.PullImageRequest(image=spec(name)))
        assert pulled.image_ref.startswith("sha256:")

        listed = await stub.ListImages(api_pb2.ListImagesRequest())
        (image,) = listed.images
        assert image.id == pulled.image_ref
        assert list(image.repo_tags) == [f"{name}:latest"]
        assert image.repo_digests[0].startswith(f"{name}@sha256:")
        assert image.username == "app" and not image.HasField("uid")
        assert image.size > 1_000_000

        filtered = await stub.ListImages(
            api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=spec("busybox")))
        )
        assert list(filtered.images) == []

        status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(name), verbose=True))
        assert status.image.id == pulled.image_ref
        info = json.loads(status.info["info"])
        assert info["config"]["config"]["User"] == "app:5678"
        assert info["diffIDs"] == list(store.get_image(pulled.image_ref).diff_ids)  # type: ignore[union-attr]

        by_id = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(pulled.image_ref)))
        assert by_id.image.id == pulled.image_ref and dict(by_id.info) == {}

        missing = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec("nothere")))
        assert not missing.HasField("image")

        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(f"{name}:latest")))
        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(f"{name}:latest")))
        assert list((await stub.ListImages(api_pb2.ListImagesRequest())).images) == []

    serve(store, tmp_path, insecure_config(registry.host), body)


def test_uid_is_reported(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    async def body(stub: Any) -> None:
        await stub.PullImage(
            api_pb2.PullImageRequest(image=spec(f"{registry.host}/rktlet/user-uid-gid"))
        )
        (image,) = (await stub.ListImages(api_pb2.ListImagesRequest())).images
        assert image.HasField("uid") and image.uid.value == 1234 and image.username == ""

    serve(store, tmp_path, insecure_config(registry.host), body)


def test_bad_input_and_failures_map_to_status_codes(
    registry: Registry, basic_registry: Registry, store: ImageStore, tmp_path: Path
) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    async def body(stub: Any) -> None:
        await expect_error(stub.PullImage(api_pb2.PullImageRequest()), invalid, "image.image:")
        await expect_error(
            stub.PullImage(api_pb2.PullImageRequest(image=spec("library/Case"))),
            invalid,
            "image.image: invalid repository name component 'Case'",
        )
        await expect_error(
            stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec("a@sha256:12"))),
            invalid,
            "image.image: sha256 digest must be 64",
        )
        await expect_error(stub.RemoveImage(api_pb2.RemoveImageRequest()), invalid, "image.image")
        await expect_error(
            stub.ListImages(
                api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=spec("x y")))
            ),
            invalid,
            "filter.image.image: ",
        )
        await expect_error(
            stub.PullImage(
                api_pb2.PullImageRequest(
                    image=spec(f"{registry.host}/rktlet/busybox"),
                    auth=api_pb2.AuthConfig(auth="%%%"),
                )
            ),
            invalid,
            "auth.auth: not base64",
        )
        await expect_error(
            stub.PullImage(
                api_pb2.PullImageRequest(image=spec(f"{registry.host}/rktlet/absent:1"))
            ),
            grpc.StatusCode.NOT_FOUND,
            "not found",
        )
        protected = f"{basic_registry.host}/rktlet/busybox"
        await expect_error(
            stub.PullImage(api_pb2.PullImageRequest(image=spec(protected))),
            grpc.StatusCode.PERMISSION_DENIED,
            "requires credentials",
        )
        auth = base64.b64encode(f"{BASIC_USER[0]}:{BASIC_USER[1]}".encode()).decode()
        ok = await stub.PullImage(
            api_pb2.PullImageRequest(image=spec(protected), auth=api_pb2.AuthConfig(auth=auth))
        )
        assert ok.image_ref.startswith("sha256:")

    serve(store, tmp_path, insecure_config(registry.host, basic_registry.host), body)


def test_image_fs_info(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    served: list[ImageService] = []

    async def body(stub: Any) -> None:
        before = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
        await stub.PullImage(
            api_pb2.PullImageRequest(image=spec(f"{registry.host}/rktlet/busybox"))
        )
        image_id = (await stub.ListImages(api_pb2.ListImagesRequest())).images[0].id
        rootfs = RootfsManager(store)
        root = rootfs.create("c", image_id)
        try:
            (root / "tmp/data").write_bytes(b"z" * 4096)
            # The pull is seen at once; a container's writes at the next measurement.
            pulled = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
            assert pulled.container_filesystems[0].used_bytes.value == 0
            await served[0].usage.refresh()
            after = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
        finally:
            rootfs.remove("c")
        (img_before,) = before.image_filesystems
        (img,) = after.image_filesystems
        assert pulled.image_filesystems[0].used_bytes.value == img.used_bytes.value
        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(image_id)))
        removed = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
        assert removed.image_filesystems[0].used_bytes.value < img.used_bytes.value
        (ctr,) = after.container_filesystems
        assert img.fs_id.mountpoint == str(store.root)
        assert img.used_bytes.value > img_before.used_bytes.value + 1_000_000
        assert img.inodes_used.value > img_before.inodes_used.value + 200
        assert ctr.fs_id.mountpoint == str(store.root / "rootfs")
        assert ctr.used_bytes.value >= 4096 and ctr.inodes_used.value >= 2
        assert img.timestamp > 0

    serve(store, tmp_path, insecure_config(registry.host), body, served)
