"""Shared fixtures for the image tests: built images, real registries, stores.

Images are built once per session from Debian's busybox-static and catatonit.  The
plain registry is shared by the session (tests only read from it); tests that damage
a registry (corrupt blobs) start their own.  Every registry, token server and proxy is
stopped, and its storage removed, even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cri.images.config import ImagesConfig  # noqa: E402
from cri.images.manager import ImageManager  # noqa: E402
from cri.images.store import ImageStore  # noqa: E402
from fixtures.build_images import build_all  # noqa: E402
from fixtures.registry import Registry, TokenServer, push_layout  # noqa: E402
from tests.images.images_helpers import BASIC_USER, IDENTITY_TOKEN, TOKEN_USER  # noqa: E402


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed (scripts/install.sh installs it)")


@pytest.fixture(scope="session", autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("image tests need root (mknod whiteouts, chown, overlay mounts)")


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for binary in ("docker-registry", "htpasswd", "openssl"):
        _require(binary)
    return build_all(tmp_path_factory.mktemp("images") / "layout")


@pytest.fixture(scope="session")
def registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous plain-HTTP registry holding every test image."""
    reg = Registry(tmp_path_factory.mktemp("reg"))
    try:
        reg.start()
        push_layout(layout, reg.url)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def basic_registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd basic auth, holding busybox."""
    reg = Registry(tmp_path_factory.mktemp("basic"), htpasswd=BASIC_USER)
    try:
        reg.start()
        push_layout(layout, reg.url, basic=BASIC_USER, only={"rktlet/busybox:latest"})
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(
        tmp_path_factory.mktemp("tok"),
        users=dict([TOKEN_USER]),
        identity_tokens={IDENTITY_TOKEN: TOKEN_USER[0]},
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_registry(
    layout: Path, token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A registry with bearer-token auth from ``token_server``, holding busybox."""
    reg = Registry(tmp_path_factory.mktemp("token"), token=token_server)
    try:
        reg.start()
        push_layout(layout, reg.url, token_user=TOKEN_USER, only={"rktlet/busybox:latest"})
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore(tmp_path / "store")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def make_manager(store: ImageStore) -> Callable[..., ImageManager]:
    """Build a manager over the test's store; closed by its user via ``run_with``."""

    def make(config: ImagesConfig | None = None) -> ImageManager:
        return ImageManager(store, config or ImagesConfig())

    return make
