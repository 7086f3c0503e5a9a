"""A client's mistakes get a clear answer and leave no traceback in the daemon's log."""

from __future__ import annotations

import grpc
import pytest

from cri.api import api_pb2
from tests.cri.conftest import Daemon


def _no_traceback(daemon: Daemon) -> None:
    text = daemon.log_file.read_text()
    assert "Traceback" not in text, text[text.index("Traceback") - 500 :][:3000]


@pytest.mark.timeout(120)
def test_exec_sync_of_a_missing_or_unrunnable_binary(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("execs")
    ctr = daemon.run_container(
        pod_id, pod_config, daemon.container_config("app", "busybox", ["sleep", "3600"])
    )
    missing = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=ctr, cmd=["no-such-command"], timeout=10)
    )
    assert missing.exit_code == 127
    assert b"executable file not found" in missing.stderr
    not_executable = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=ctr, cmd=["/etc/passwd"], timeout=10)
    )
    assert not_executable.exit_code == 126
    assert b"permission denied" in not_executable.stderr
    # A command that runs keeps its own exit code.
    ok = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", "exit 3"], timeout=10)
    )
    assert ok.exit_code == 3
    _no_traceback(daemon)


def _id_calls(bad: str) -> list[tuple[str, object]]:
    return [
        ("ContainerStatus", api_pb2.ContainerStatusRequest(container_id=bad)),
        ("StartContainer", api_pb2.StartContainerRequest(container_id=bad)),
        ("StopContainer", api_pb2.StopContainerRequest(container_id=bad)),
        ("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=bad)),
        ("ReopenContainerLog", api_pb2.ReopenContainerLogRequest(container_id=bad)),
        ("ContainerStats", api_pb2.ContainerStatsRequest(container_id=bad)),
        ("ExecSync", api_pb2.ExecSyncRequest(container_id=bad, cmd=["true"])),
        ("Exec", api_pb2.ExecRequest(container_id=bad, cmd=["true"], stdout=True)),
        ("Attach", api_pb2.AttachRequest(container_id=bad, stdout=True)),
        (
            "UpdateContainerResources",
            api_pb2.UpdateContainerResourcesRequest(container_id=bad),
        ),
        ("PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=bad)),
        ("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=bad)),
        ("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=bad)),
        ("PodSandboxStats", api_pb2.PodSandboxStatsRequest(pod_sandbox_id=bad)),
        ("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id=bad, port=[80])),
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bad", ["x" * 10_000, "%", "a/b", "ab\ncd"])
def test_bad_ids_are_invalid_in_every_rpc_with_a_short_message(daemon: Daemon, bad: str) -> None:
    for method, request in _id_calls(bad):
        with pytest.raises(grpc.RpcError) as err:
            getattr(daemon.runtime, method)(request, timeout=10)
        code, details = err.value.code(), err.value.details()
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details[:200])
        assert len(details) < 300, (method, len(details))
        assert details.endswith("is not a valid id"), (method, details)
    _no_traceback(daemon)


@pytest.mark.timeout(60)
def test_huge_echoed_values_are_cut(daemon: Daemon) -> None:
    config = daemon.pod_config("handler")
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config, runtime_handler="h" * 10_000)
        )
    # Not RESOURCE_EXHAUSTED (the client's 8 KiB metadata limit): the real error, cut.
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("runtime_handler: unknown runtime handler")
    assert len(err.value.details()) <= 2048
