"""Helpers for the image tests (imported by module name: tests/images is on sys.path)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from cri.images.config import ImagesConfig, load_images_config
from cri.images.manager import ImageManager
from cri.images.store import ImageStore

T = TypeVar("T")

BASIC_USER = ("alice", "s3cret-pw")
TOKEN_USER = ("bob", "t0ken-pw")
IDENTITY_TOKEN = "refresh-token-for-bob"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def mirror_config(
    host: str, mirrors: list[str], insecure: list[str], **images: Any
) -> ImagesConfig:
    registries: dict[str, Any] = {h: {"insecure": True} for h in insecure}
    registries.setdefault(host, {})["mirrors"] = mirrors
    return load_images_config({"images": {"registries": registries, **images}})


def insecure_config(*hosts: str, **images: Any) -> ImagesConfig:
    return load_images_config(
        {"images": {"registries": {h: {"insecure": True} for h in hosts}, **images}}
    )


async def with_manager(
    manager: ImageManager, body: Callable[[ImageManager], Coroutine[Any, Any, T]]
) -> T:
    try:
        return await body(manager)
    finally:
        await manager.aclose()


def store_is_empty(store: ImageStore) -> list[str]:
    """What a failed pull left behind: blobs, ingest files, layer dirs, records."""
    left = [str(p) for p in store.blobs_dir.rglob("*") if p.is_file()]
    left += [str(p) for p in store.ingest_dir.iterdir()]
    left += [str(p) for p in store.layers_dir.iterdir()]
    left += [r.id for r in store.list_images()]
    return left
