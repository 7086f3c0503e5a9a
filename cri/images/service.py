"""The CRI ImageService (``runtime.v1``) over the image manager.

Handlers are thin: check the request, look up, delegate, convert.  Errors are the
domain errors of :mod:`cri.errors`, turned into gRPC statuses by ``grpc_errors``.
Register with ``api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(...), server)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cri.api import api_pb2
from cri.errors import InvalidArgument, grpc_errors
from cri.images.auth import Credentials
from cri.images.manager import ImageManager
from cri.images.store import ImageRecord
from cri.images.usage import FsUsage, UsageCache

__all__ = ["ImageService", "image_to_proto"]


def image_to_proto(record: ImageRecord) -> api_pb2.Image:
    image = api_pb2.Image(
        id=record.id,
        repo_tags=list(record.repo_tags),
        repo_digests=list(record.repo_digests),
        size=record.size,
        username=record.username,
        spec=api_pb2.ImageSpec(image=record.id),
        pinned=record.pinned,
    )
    if record.uid is not None:
        image.uid.value = record.uid
    return image


def _usage_to_proto(usage: FsUsage) -> api_pb2.FilesystemUsage:
    return api_pb2.FilesystemUsage(
        timestamp=usage.timestamp_ns,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
        inodes_used=api_pb2.UInt64Value(value=usage.inodes_used),
    )


def _required_image(request: Any, field: str = "image") -> str:
    if not request.HasField("image") or not request.image.image:
        raise InvalidArgument(f"{field}.image: an image reference or id is required")
    value: str = request.image.image
    return value


class ImageService:
    """Implements ``runtime.v1.ImageService`` for grpc.aio."""

    def __init__(
        self,
        manager: ImageManager,
        rootfs_dir: Path | None = None,
        usage: UsageCache | None = None,
    ) -> None:
        self.manager = manager
        self.rootfs_dir = rootfs_dir or manager.store.root / "rootfs"
        if usage is None:
            usage = UsageCache(manager.store, self.rootfs_dir)
            manager.on_change = usage.images_changed
        #: ImageFsInfo's figures (the runtime's, which it refreshes in the background).
        self.usage = usage

    @grpc_errors
    async def ListImages(
        self, request: api_pb2.ListImagesRequest, context: Any
    ) -> api_pb2.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        records = self.manager.list_images(wanted, "filter.image.image")
        return api_pb2.ListImagesResponse(images=[image_to_proto(r) for r in records])

    @grpc_errors
    async def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: Any
    ) -> api_pb2.ImageStatusResponse:
        record = self.manager.lookup(_required_image(request), "image.image")
        if record is None:
            # CRI: an absent image is an empty response, not an error.
            return api_pb2.ImageStatusResponse()
        response = api_pb2.ImageStatusResponse(image=image_to_proto(record))
        if request.verbose:
            response.info["info"] = json.dumps(self._verbose_info(record), sort_keys=True)
        return response

    def _verbose_info(self, record: ImageRecord) -> dict[str, Any]:
        config = json.loads(self.manager.store.read_blob(record.id))
        return {
            "id": record.id,
            "manifestDigest": record.manifest_digest,
            "repoTags": list(record.repo_tags),
            "repoDigests": list(record.repo_digests),
            "size": record.size,
            "user": record.user,
            "pinned": record.pinned,
            "created": record.created,
            "diffIDs": list(record.diff_ids),
            "config": config,
        }

    @grpc_errors
    async def PullImage(
        self, request: api_pb2.PullImageRequest, context: Any
    ) -> api_pb2.PullImageResponse:
        image = _required_image(request)
        credentials = Credentials()
        if request.HasField("auth"):
            auth = request.auth
            credentials = Credentials.from_auth_config(
                username=auth.username,
                password=auth.password,
                auth=auth.auth,
                identity_token=auth.identity_token,
                registry_token=auth.registry_token,
            )
        record = await self.manager.pull(image, credentials, field_name="image.image")
        return api_pb2.PullImageResponse(image_ref=record.id)

    @grpc_errors
    async def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: Any
    ) -> api_pb2.RemoveImageResponse:
        await self.manager.remove(_required_image(request), "image.image")
        return api_pb2.RemoveImageResponse()

    @grpc_errors
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: Any
    ) -> api_pb2.ImageFsInfoResponse:
        # As containerd: the last background measurement, with its time, not a walk of
        # every writable layer per call.
        images = await self.usage.image_usage()
        containers = await self.usage.container_usage()
        return api_pb2.ImageFsInfoResponse(
            image_filesystems=[_usage_to_proto(images)],
            container_filesystems=[_usage_to_proto(containers)],
        )
