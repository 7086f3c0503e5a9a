"""OCI and Docker schema 2 manifests, indexes and image configs: parsing and validation.

Pure functions over bytes.  Everything a registry or an archive hands us is checked
here before any of it is trusted: media types, digests, sizes, platform entries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.images.config import Platform
from cri.images.reference import parse_digest

__all__ = [
    "CONFIG_TYPES",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "Descriptor",
    "ImageConfig",
    "ImageIndex",
    "ImageManifest",
    "ManifestError",
    "parse_image_config",
    "parse_manifest",
    "select_platform",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
# Manifests are small; anything larger is hostile or broken (containerd uses 4 MiB too).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024


class ManifestError(FailedPrecondition):
    """A manifest, index or config is malformed or unusable."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    diff_ids: tuple[str, ...]
    user: str
    os: str
    architecture: str
    raw: Mapping[str, Any]


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: descriptor is not an object")
    media_type = obj.get("mediaType", "")
    digest = obj.get("digest")
    size = obj.get("size")
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}.mediaType: not a string")
    if not isinstance(digest, str):
        raise ManifestError(f"{where}.digest: missing")
    try:
        parse_digest(digest, f"{where}.digest")
    except InvalidArgument as exc:
        raise ManifestError(str(exc)) from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}.size: missing or negative")
    platform = None
    plat = obj.get("platform")
    if isinstance(plat, dict):
        os_name = plat.get("os")
        arch = plat.get("architecture")
        variant = plat.get("variant", "")
        if isinstance(os_name, str) and isinstance(arch, str) and isinstance(variant, str):
            platform = Platform(os_name, arch, variant)
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ManifestError(f"{where}.annotations: not a string map")
    return Descriptor(media_type, digest, size, platform, annotations)


def parse_manifest(data: bytes, content_type: str | None = None) -> ImageManifest | ImageIndex:
    """Parse an image manifest or index; ``content_type`` is the HTTP header, if any.

    OCI lets ``mediaType`` be omitted, so the header and then the document's shape
    decide what it is.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "config" in doc and "layers" in doc:
            media_type = OCI_MANIFEST
        elif doc.get("schemaVersion") == 1:
            raise ManifestError("Docker schema 1 manifests are not supported")
        else:
            raise ManifestError(f"unsupported manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("index.manifests: not a list")
        return ImageIndex(
            media_type,
            tuple(_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries)),
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ManifestError("manifest.layers: not a list")
    config = _descriptor(doc.get("config"), "config")
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise ManifestError(
            f"config.mediaType: {config.media_type!r} is not a container image config "
            "(an artifact, not an image?)"
        )
    parsed = tuple(_descriptor(e, f"layers[{i}]") for i, e in enumerate(layers))
    for i, layer in enumerate(parsed):
        if layer.media_type not in LAYER_TYPES:
            raise ManifestError(f"layers[{i}].mediaType: unsupported {layer.media_type!r}")
    return ImageManifest(media_type, config, parsed)


def _platform_matches(have: Platform | None, want: Platform) -> bool:
    if have is None or have.os != want.os or have.architecture != want.architecture:
        return False
    if want.architecture == "arm64":
        # arm64 images usually omit the variant; it means v8.
        return (have.variant or "v8") == (want.variant or "v8")
    return not want.variant or not have.variant or have.variant == want.variant


def select_platform(index: ImageIndex, want: Platform) -> Descriptor:
    """Pick the manifest for ``want``; prefer an entry whose variant matches exactly."""
    candidates = [
        d
        for d in index.manifests
        if d.media_type in MANIFEST_TYPES + INDEX_TYPES + ("",)
        and _platform_matches(d.platform, want)
    ]
    if not candidates:
        available = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
        raise NotFound(
            f"no image for platform {want} in the manifest list (has: {', '.join(available)})"
        )
    exact = [d for d in candidates if d.platform is not None and d.platform.variant == want.variant]
    return (exact or candidates)[0]


def parse_image_config(data: bytes) -> ImageConfig:
    if len(data) > MAX_CONFIG_BYTES:
        raise ManifestError(f"image config is {len(data)} bytes, over the limit")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"image config is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("image config is not a JSON object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ManifestError("image config rootfs.type is not 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ManifestError("image config rootfs.diff_ids: not a list of digests")
    for i, d in enumerate(diff_ids):
        try:
            parse_digest(d, f"rootfs.diff_ids[{i}]")
        except InvalidArgument as exc:
            raise ManifestError(str(exc)) from None
    cfg = doc.get("config") or {}
    user = cfg.get("User", "") if isinstance(cfg, dict) else ""
    return ImageConfig(
        diff_ids=tuple(diff_ids),
        user=user if isinstance(user, str) else "",
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        raw=doc,
    )


def split_user(user: str) -> tuple[int | None, str]:
    """The CRI view of a config's ``User``: (uid, "") for numeric, (None, name) otherwise.

    ``uid:gid`` and ``name:group`` report only the user part, as containerd does.
    """
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name
