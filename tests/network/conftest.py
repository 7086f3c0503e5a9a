"""Fixtures for the pod-network tests (see helpers.py for the machinery).

Every test that runs CNI plugins does so inside its own network namespace, removed with
everything in it by the ``host_ns`` finalizer, also when the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri.network import CNINetwork, is_netns_pinned
from tests.network.helpers import CNI_BIN, HostNS, mounts_under


@pytest.fixture(autouse=True)
def _root_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, mounts)")


@pytest.fixture
def host_ns(tmp_path: Path) -> Iterator[HostNS]:
    ns = HostNS(tmp_path)
    try:
        yield ns
    finally:
        ns.close()
        assert not mounts_under(ns.run_dir), "a namespace pin was left mounted"
        assert not is_netns_pinned(ns.path)


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "net.d"
    path.mkdir()
    return path


@pytest.fixture
def test_bin(tmp_path: Path) -> Path:
    """A directory for the tests' own CNI plugins, searched before the real ones."""
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def network(tmp_path: Path, conf_dir: Path, test_bin: Path) -> CNINetwork:
    return CNINetwork(state_dir=tmp_path / "state", conf_dir=conf_dir, bin_dirs=[test_bin, CNI_BIN])
