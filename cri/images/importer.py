"""Offline import of image archives: OCI image-layout tars and ``docker save`` tars.

An OCI layout archive holds ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``;
names come from the index entries' ``io.containerd.image.name`` or
``org.opencontainers.image.ref.name`` annotations (the latter may be a bare tag).  A
``docker save`` archive holds ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``
per image) with configs and layer tars beside it; a Docker schema 2 manifest is
synthesised for it so that every image in the store has one.  Archives that contain
both (docker 25 and later) are read as OCI layouts.

Every blob is hashed on the way into the store; nothing in the archive is extracted
to the file system except through the layer unpacker.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cri.errors import InvalidArgument, NotFound
from cri.images.config import Platform
from cri.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
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
from cri.images.store import ImageRecord, ImageStore, Lease

__all__ = ["import_archive"]

_MAX_JSON = 8 * 1024 * 1024


class _Archive:
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close())
        except FileNotFoundError:
            raise NotFound(f"archive {path} does not exist") from None
        except (tarfile.TarError, OSError) as exc:
            raise InvalidArgument(f"{path}: not a tar archive: {exc}") from None
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in self.tar.getmembers():
            self.members[self._norm(member.name)] = member

    @staticmethod
    def _norm(name: str) -> str:
        return str(PurePosixPath("/", name))[1:]

    def has(self, name: str) -> bool:
        return self._norm(name) in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(self._norm(name))
        if member is None or not (member.isreg() or member.issym() or member.islnk()):
            raise InvalidArgument(f"{self.path}: archive has no file {name!r}")
        try:
            f = self.tar.extractfile(member)
        except (KeyError, tarfile.TarError) as exc:
            raise InvalidArgument(f"{self.path}: cannot read {name!r}: {exc}") from None
        if f is None:
            raise InvalidArgument(f"{self.path}: {name!r} is not a regular file")
        return f

    def read_json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise InvalidArgument(f"{self.path}: {name} is too large")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"{self.path}: {name} is not JSON: {exc}") from None

    def blob_name(self, digest: str) -> str:
        algorithm, _, hexpart = digest.partition(":")
        return f"blobs/{algorithm}/{hexpart}"

    def close(self) -> None:
        self.tar.close()


@dataclass(slots=True)
class _Pending:
    config_digest: str
    config_size: int
    manifest_digest: str
    layers: list[Descriptor]
    tags: list[str]


def import_archive(
    store: ImageStore, path: Path, platform: Platform, name: str | None = None
) -> list[ImageRecord]:
    """Import every image in the archive; ``name`` tags images the archive leaves unnamed.

    Returns the image records, in archive order.
    """
    default_ref = parse_reference(name, "name") if name else None
    archive = _Archive(path)
    try:
        with store.lease() as lease:
            if archive.has("index.json") and archive.has("oci-layout"):
                pending = _read_oci(archive, store, lease, platform, default_ref)
            elif archive.has("manifest.json"):
                pending = _read_docker(archive, store, lease, default_ref)
            else:
                raise InvalidArgument(
                    f"{path}: neither an OCI image layout (oci-layout, index.json) "
                    "nor a docker save archive (manifest.json)"
                )
            records = []
            for item in pending:
                config = parse_image_config(store.read_blob(item.config_digest))
                if len(config.diff_ids) != len(item.layers):
                    raise ManifestError(
                        f"{path}: image {item.config_digest} has {len(item.layers)} layers but "
                        f"its config lists {len(config.diff_ids)}"
                    )
                for desc, diff_id in zip(item.layers, config.diff_ids, strict=True):
                    lease.add(diff_id)
                    store.ensure_layer(desc.digest, diff_id)
                uid, username = split_user(config.user)
                records.append(
                    store.add_image(
                        image_id=item.config_digest,
                        manifest_digest=item.manifest_digest,
                        size=item.config_size + sum(d.size for d in item.layers),
                        user=config.user,
                        uid=uid,
                        username=username,
                        diff_ids=config.diff_ids,
                        blobs=[item.config_digest, item.manifest_digest]
                        + [d.digest for d in item.layers],
                        tags=item.tags,
                    )
                )
            return records
    except BaseException:
        store.gc()
        raise
    finally:
        archive.close()


def _copy_blob(archive: _Archive, store: ImageStore, lease: Lease, desc: Descriptor) -> None:
    lease.add(desc.digest)
    if store.has_blob(desc.digest, desc.size):
        return
    with archive.open(archive.blob_name(desc.digest)) as src:
        store.put_stream(src, desc.digest, desc.size)


def _name_for(annotations: dict[str, str], default_ref: Reference | None) -> list[str]:
    full = annotations.get("io.containerd.image.name")
    short = annotations.get("org.opencontainers.image.ref.name")
    if full:
        tagged = parse_reference(full, "annotations[io.containerd.image.name]").tagged()
        return [tagged] if tagged else []
    if short and ("/" in short or ":" in short):
        tagged = parse_reference(short, "annotations[org.opencontainers.image.ref.name]").tagged()
        return [tagged] if tagged else []
    if default_ref is not None:
        tag = short or default_ref.tag or "latest"
        return [f"{default_ref.name}:{tag}"]
    return []


def _read_oci(
    archive: _Archive,
    store: ImageStore,
    lease: Lease,
    platform: Platform,
    default_ref: Reference | None,
) -> list[_Pending]:
    layout = archive.read_json("oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        raise InvalidArgument(f"{archive.path}: unsupported oci-layout version")
    with archive.open("index.json") as f:
        index = parse_manifest(f.read(_MAX_JSON))
    if not isinstance(index, ImageIndex):
        raise InvalidArgument(f"{archive.path}: index.json is not an image index")
    pending: list[_Pending] = []
    for desc in index.manifests:
        tags = _name_for(dict(desc.annotations), default_ref)
        _copy_blob(archive, store, lease, desc)
        parsed = parse_manifest(store.read_blob(desc.digest), desc.media_type)
        manifest_desc = desc
        if isinstance(parsed, ImageIndex):
            manifest_desc = select_platform(parsed, platform)
            _copy_blob(archive, store, lease, manifest_desc)
            parsed = parse_manifest(store.read_blob(manifest_desc.digest), manifest_desc.media_type)
            if not isinstance(parsed, ImageManifest):
                raise ManifestError(f"{archive.path}: nested index for {platform}")
        manifest = parsed
        _copy_blob(archive, store, lease, manifest.config)
        for layer in manifest.layers:
            _copy_blob(archive, store, lease, layer)
        pending.append(
            _Pending(
                manifest.config.digest,
                manifest.config.size,
                manifest_desc.digest,
                list(manifest.layers),
                tags,
            )
        )
    return pending


def _layer_media_type(store: ImageStore, digest: str) -> str:
    with open(store.blob_path(digest), "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b"):
        return "application/vnd.docker.image.rootfs.diff.tar.gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.docker.image.rootfs.diff.tar"


def _read_docker(
    archive: _Archive, store: ImageStore, lease: Lease, default_ref: Reference | None
) -> list[_Pending]:
    entries = archive.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{archive.path}: manifest.json is not a non-empty list")
    pending: list[_Pending] = []
    for i, entry in enumerate(entries):
        where = f"manifest.json[{i}]"
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{archive.path}: {where} is not an object")
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        repo_tags = entry.get("RepoTags") or []
        if not isinstance(config_name, str):
            raise InvalidArgument(f"{archive.path}: {where}.Config is missing")
        if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
            raise InvalidArgument(f"{archive.path}: {where}.Layers is not a list of names")
        if not isinstance(repo_tags, list) or not all(isinstance(t, str) for t in repo_tags):
            raise InvalidArgument(f"{archive.path}: {where}.RepoTags is not a list of names")
        with archive.open(config_name) as f:
            config_digest, config_size = store.put_stream(f)
        lease.add(config_digest)
        layers = []
        for name in layer_names:
            with archive.open(name) as f:
                digest, size = store.put_stream(f)
            lease.add(digest)
            layers.append(Descriptor(_layer_media_type(store, digest), digest, size))
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [d.to_json() for d in layers],
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        manifest_digest = store.put_blob(manifest_bytes)
        lease.add(manifest_digest)
        tags = []
        for j, tag in enumerate(repo_tags):
            tagged = parse_reference(tag, f"{where}.RepoTags[{j}]").tagged()
            if tagged:
                tags.append(tagged)
        if not tags and default_ref is not None:
            tags.append(f"{default_ref.name}:{default_ref.tag or 'latest'}")
        pending.append(_Pending(config_digest, config_size, manifest_digest, layers, tags))
    return pending
