"""Fixtures for the OCI spec tests: busybox root filesystems and real runc runs.

Root filesystems are built offline from Debian's busybox-static: one copy of the binary
per session, hard-linked under every applet name into each test's rootfs (cheap, and a
fresh rootfs per test means no test sees another's writes).  Every container runs under
a private ``runc --root``, with a unique id and a cgroup under a per-session parent, and
is deleted — cgroups included — even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri import cgroups
from cri.oci.host import HostInfo, detect_host
from tests.oci.oci_helpers import BUSYBOX, Runner, make_rootfs


@pytest.fixture(scope="session")
def busybox_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUSYBOX.exists():
        pytest.fail("busybox-static is not installed (/bin/busybox)")
    target = tmp_path_factory.mktemp("busybox") / "busybox"
    shutil.copy2(BUSYBOX, target)
    return target


@pytest.fixture(scope="session")
def applets(busybox_binary: Path) -> list[str]:
    out = subprocess.run([str(busybox_binary), "--list"], capture_output=True, check=True)
    return [a for a in out.stdout.decode().split() if a and "/" not in a]


@pytest.fixture
def rootfs(tmp_path: Path, busybox_binary: Path, applets: list[str]) -> Path:
    return make_rootfs(tmp_path / "rootfs", busybox_binary, applets)


@pytest.fixture(scope="session")
def host() -> HostInfo:
    return detect_host()


@pytest.fixture(scope="session")
def cgroup_parent() -> Iterator[str]:
    parent = f"/rktlet-test-{os.getpid()}"
    yield parent
    cgroups.remove_cgroup(parent)


@pytest.fixture
def runner(tmp_path: Path, cgroup_parent: str) -> Iterator[Runner]:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed")
    r = Runner(root=tmp_path / "runc-root", work=tmp_path / "bundles", parent=cgroup_parent)
    try:
        yield r
    finally:
        r.cleanup()
