"""In-place resize with real runc: container and pod cgroups change live, the app runs on."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import cgroups
from cri.api import api_pb2
from tests.cri.conftest import Daemon

MiB = 1 << 20
LAYOUT = cgroups.detect_layout()


def _file(controller: str, cgroup: str, v1: str, v2: str) -> int | str:
    if LAYOUT.mode is cgroups.CgroupMode.V2:
        path = LAYOUT.unified_path(cgroup)
        name = v2
    else:
        path = LAYOUT.controller_path(controller, cgroup)
        name = v1
    assert path is not None
    text = Path(path, name).read_text().strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _memory_limit(cgroup: str) -> int | str:
    return _file("memory", cgroup, "memory.limit_in_bytes", "memory.max")


def _cpu_quota(cgroup: str) -> int | str:
    if LAYOUT.mode is cgroups.CgroupMode.V2:
        return str(_file("cpu", cgroup, "", "cpu.max")).split()[0]
    return _file("cpu", cgroup, "cpu.cfs_quota_us", "")


def _info(daemon: Daemon, container: str) -> dict[str, object]:
    reply = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container, verbose=True)
    )
    return dict(json.loads(reply.info["info"]))


def _fill_shm(daemon: Daemon, container: str, mib: int) -> None:
    """Make the container hold ``mib`` MiB it cannot give back (tmpfs pages, no swap)."""
    script = f"head -c {mib * MiB} /dev/zero > /dev/shm/fill && stat -c %s /dev/shm/fill"
    reply = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=container, cmd=["sh", "-c", script], timeout=60)
    )
    assert reply.stdout.decode().strip() == str(mib * MiB), reply.stderr


def _resources(shares: int, quota: int, memory: int) -> api_pb2.LinuxContainerResources:
    return api_pb2.LinuxContainerResources(
        cpu_shares=shares, cpu_quota=quota, cpu_period=100000, memory_limit_in_bytes=memory
    )


def test_container_resize_is_live(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("resize")
    config = daemon.container_config("app", "busybox", ["sleep", "3600"])
    config.linux.resources.CopyFrom(_resources(512, 50000, 96 * MiB))
    container = daemon.run_container(pod_id, pod_config, config)
    before = _info(daemon, container)
    cgroup = daemon_cgroup(before)
    assert _memory_limit(cgroup) == 96 * MiB

    daemon.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=container, linux=_resources(1024, 20000, 160 * MiB)
        )
    )
    assert _memory_limit(cgroup) == 160 * MiB
    assert str(_cpu_quota(cgroup)) == "20000"
    if LAYOUT.mode is not cgroups.CgroupMode.V2:
        assert _file("cpu", cgroup, "cpu.shares", "") == 1024
    status = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container)
    ).status
    assert status.state == api_pb2.ContainerState.CONTAINER_RUNNING
    assert status.resources.linux.memory_limit_in_bytes == 160 * MiB
    assert status.resources.linux.cpu_quota == 20000
    assert _info(daemon, container)["pid"] == before["pid"]  # the same process, resized

    # Below what it holds: refused, nothing changed, the app still runs.
    _fill_shm(daemon, container, 48)
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.UpdateContainerResources(
            api_pb2.UpdateContainerResourcesRequest(
                container_id=container, linux=_resources(1024, 20000, 16 * MiB)
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "linux.memory_limit_in_bytes: 16777216 is below the" in str(info.value.details())
    assert _memory_limit(cgroup) == 160 * MiB
    status = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container)
    ).status
    assert status.state == api_pb2.ContainerState.CONTAINER_RUNNING
    assert status.resources.linux.memory_limit_in_bytes == 160 * MiB
    assert _info(daemon, container)["pid"] == before["pid"]


def daemon_cgroup(info: dict[str, object]) -> str:
    return cgroups.cgroup_dir(str(info["cgroups_path"]))


@pytest.fixture
def pod_parent() -> Iterator[str]:
    top = f"/rktlet-t-{secrets.token_hex(4)}"
    yield f"{top}/pod1"
    cgroups.remove_cgroup(f"{top}/pod1")
    cgroups.remove_cgroup(top)


def test_pod_resize_changes_the_pod_cgroup(daemon: Daemon, pod_parent: str) -> None:
    linux = api_pb2.LinuxPodSandboxConfig(cgroup_parent=pod_parent)
    pod_id, pod_config = daemon.run_pod("podresize", linux=linux)
    try:
        config = daemon.container_config("app", "busybox", ["sleep", "3600"])
        container = daemon.run_container(pod_id, pod_config, config)
        pid = _info(daemon, container)["pid"]
        request = api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod_id,
            resources=_resources(2048, 50000, 256 * MiB),
            overhead=api_pb2.LinuxContainerResources(
                cpu_shares=100, memory_limit_in_bytes=16 * MiB
            ),
        )
        daemon.runtime.UpdatePodSandboxResources(request)
        assert _memory_limit(pod_parent) == 272 * MiB
        assert str(_cpu_quota(pod_parent)) == "50000"
        if LAYOUT.mode is not cgroups.CgroupMode.V2:
            assert _file("cpu", pod_parent, "cpu.shares", "") == 2148
        assert _info(daemon, container)["pid"] == pid

        _fill_shm(daemon, container, 48)
        request.resources.memory_limit_in_bytes = 8 * MiB
        request.overhead.memory_limit_in_bytes = 0
        with pytest.raises(grpc.RpcError) as info:
            daemon.runtime.UpdatePodSandboxResources(request)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "resources.memory_limit_in_bytes: 8388608 is below the" in str(info.value.details())
        assert _memory_limit(pod_parent) == 272 * MiB
    finally:
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_pod_resize_errors(daemon: Daemon) -> None:
    request = api_pb2.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id="absent", resources=_resources(1024, 0, 64 * MiB)
    )
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.UpdatePodSandboxResources(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    pod_id, _ = daemon.run_pod("podresize-bad")
    request.pod_sandbox_id = pod_id
    request.resources.cpu_quota = 5  # below the kernel's minimum
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.UpdatePodSandboxResources(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resources.cpu_quota" in str(info.value.details())
    # No cgroup of its own (no parent given): the resources are recorded.
    request.resources.cpu_quota = 0
    daemon.runtime.UpdatePodSandboxResources(request)
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.UpdatePodSandboxResources(request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
