"""Recursive read-only mounts with real runc, and CheckpointContainer's answer on this node."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2
from cri.oci.features import criu_unavailable
from tests.cri.conftest import Daemon


@pytest.fixture
def dir_with_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted inside it (``inner``)."""
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "rro-test", str(inner)], check=True)
    try:
        yield outer
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=False)


def _run(daemon: Daemon, name: str, mount: api_pb2.Mount) -> str:
    pod_id, pod_config = daemon.run_pod(name)
    config = daemon.container_config(name, "busybox", ["sleep", "3600"])
    config.mounts.append(mount)
    return daemon.run_container(pod_id, pod_config, config)


def _writes(daemon: Daemon, container: str) -> str:
    script = "touch /v/top 2>/dev/null; echo top=$?; touch /v/inner/file 2>/dev/null; echo in=$?"
    reply = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=container, cmd=["sh", "-c", script], timeout=30)
    )
    return str(reply.stdout.decode())


def test_rro_makes_submounts_read_only(daemon: Daemon, dir_with_tmpfs: Path) -> None:
    ro = api_pb2.Mount(container_path="/v", host_path=str(dir_with_tmpfs), readonly=True)
    plain = _run(daemon, "ro", ro)
    # A plain read-only bind leaves the tmpfs inside it writable...
    assert _writes(daemon, plain).split() == ["top=1", "in=0"]
    rro = api_pb2.Mount()
    rro.CopyFrom(ro)
    rro.recursive_read_only = True
    # ...a recursive one does not.
    assert _writes(daemon, _run(daemon, "rro", rro)).split() == ["top=1", "in=1"]
    status = daemon.runtime.Status(api_pb2.StatusRequest())
    assert all(h.features.recursive_read_only_mounts for h in status.runtime_handlers)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"readonly": True, "propagation": api_pb2.PROPAGATION_HOST_TO_CONTAINER},
            "needs propagation PROPAGATION_PRIVATE, not PROPAGATION_HOST_TO_CONTAINER",
            id="propagation",
        ),
        pytest.param({"readonly": False}, "needs readonly to be set too", id="not-readonly"),
    ],
)
def test_rro_invalid(
    daemon: Daemon, dir_with_tmpfs: Path, fields: dict[str, Any], message: str
) -> None:
    mount = api_pb2.Mount(
        container_path="/v", host_path=str(dir_with_tmpfs), recursive_read_only=True, **fields
    )
    with pytest.raises(grpc.RpcError) as info:
        _run(daemon, "rro-bad", mount)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"mounts[0].recursive_read_only: {message}" in str(info.value.details())
    assert not daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers


def test_checkpoint_says_why_criu_cannot(daemon: Daemon) -> None:
    container = _run(daemon, "ckpt", api_pb2.Mount(container_path="/v", host_path="/tmp"))
    reason = criu_unavailable()
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.CheckpointContainer(
            api_pb2.CheckpointContainerRequest(container_id=container, location="/tmp/x.tar")
        )
    if not reason:
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        return
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason in str(info.value.details())
    if shutil.which("criu") is None:
        assert "criu is not installed" in reason
    else:
        # Debian 12's criu 3.17 on a 6.x kernel: its own first error, word for word.
        done = subprocess.run(["criu", "check"], capture_output=True, text=True, check=False)
        assert done.returncode != 0
        assert reason.removeprefix("criu check failed: ") in done.stderr + done.stdout
