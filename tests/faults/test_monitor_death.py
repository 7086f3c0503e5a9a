"""A pod monitor dies (kill -9): noticed at once, reported, and cleaned up without it."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest

from cri.api import api_pb2
from tests.faults import crilog
from tests.faults.conftest import (
    FaultDaemon,
    assert_no_leaks,
    counting_script,
    run_logged,
    snapshot,
    wait_for,
    wait_stopped_event,
)

EXITED = api_pb2.ContainerState.CONTAINER_EXITED
NOTREADY = api_pb2.PodSandboxState.SANDBOX_NOTREADY


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _check_monitor_death(daemon: FaultDaemon, pod_id: str, containers: list[str]) -> None:
    """After the kill: statuses, metrics, and that the apps are gone."""
    for ctr in containers:
        status = daemon.status(ctr)
        assert status.state == EXITED
        assert status.reason == "MonitorDied"
        assert status.exit_code == 255
        assert "monitor" in status.message and "died" in status.message
    assert daemon.pod_status(pod_id).state == NOTREADY
    assert daemon.metric("rktlet_monitors", state="failed") == 1
    assert daemon.metric("rktlet_monitor_deaths_total") >= 1


@pytest.mark.timeout(120)
def test_monitor_killed_idle_pod(fdaemon: FaultDaemon) -> None:
    before = snapshot(fdaemon)
    pod_id, ctr = run_logged(fdaemon, "idle", ["sleep", "3600"])
    state = fdaemon.monitor_state(pod_id)
    app_pid = state["apps"][ctr]["pid"]
    infra_pid = state["apps"]["infra"]["pid"]
    monitor = fdaemon.monitor_pid(pod_id)

    took = wait_stopped_event(fdaemon, [ctr], lambda: os.kill(monitor, signal.SIGKILL))
    print(f"monitor death noticed and recorded in {took * 1000:.0f} ms")
    assert took < 5  # the hook is immediate (pidfd); the bound only catches "never"
    _check_monitor_death(fdaemon, pod_id, [ctr])
    wait_for(lambda: _pid_gone(app_pid) and _pid_gone(infra_pid), 5, "the orphans to die")
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon, before)


@pytest.mark.timeout(120)
def test_monitor_killed_while_logging(fdaemon: FaultDaemon) -> None:
    pod_id, ctr = run_logged(fdaemon, "talker", counting_script(delay="0.001"))
    log_path = fdaemon.log_path(ctr)
    wait_for(lambda: log_path.stat().st_size > 20000, 20, "some output")
    monitor = fdaemon.monitor_pid(pod_id)
    wait_stopped_event(fdaemon, [ctr], lambda: os.kill(monitor, signal.SIGKILL))
    _check_monitor_death(fdaemon, pod_id, [ctr])
    # What the monitor wrote before it died is whole and in order; the kill may cut
    # only the tail (what was in the pipe), never a line in the middle.
    lines = crilog.read_lines(log_path)
    count = crilog.check_sequence(crilog.terminated(lines))
    assert count > 100
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(120)
def test_stop_and_remove_container_without_monitor(fdaemon: FaultDaemon) -> None:
    pod_id, pod_config = fdaemon.run_pod("stoppable")
    ctrs = [
        fdaemon.run_container(
            pod_id, pod_config, fdaemon.container_config(f"c{i}", "busybox", ["sleep", "3600"])
        )
        for i in range(2)
    ]
    monitor = fdaemon.monitor_pid(pod_id)
    wait_stopped_event(fdaemon, ctrs, lambda: os.kill(monitor, signal.SIGKILL))
    # Every retry the kubelet makes succeeds, container by container, then the pod.
    for _ in range(2):
        for ctr in ctrs:
            fdaemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr, timeout=5))
    for ctr in ctrs:
        fdaemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=ctr))
    with pytest.raises(grpc.RpcError) as err:
        fdaemon.status(ctrs[0])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    fdaemon.remove_pod(pod_id)
    fdaemon.remove_pod(pod_id)  # idempotent
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(180)
def test_monitor_dead_across_a_daemon_restart(fdaemon: FaultDaemon) -> None:
    """The monitor dies while no daemon runs: the next one ends and reports its orphans."""
    pod_id, ctr = run_logged(fdaemon, "orphaned", ["sleep", "3600"])
    state = fdaemon.monitor_state(pod_id)
    app_pid = state["apps"][ctr]["pid"]
    infra_pid = state["apps"]["infra"]["pid"]
    fdaemon.stop(signal.SIGKILL)
    os.kill(int(state["monitor"]["pid"]), signal.SIGKILL)
    fdaemon.start()
    status = fdaemon.status(ctr)
    assert status.state == EXITED and status.reason == "MonitorDied"
    assert fdaemon.pod_status(pod_id).state == NOTREADY
    wait_for(lambda: _pid_gone(app_pid) and _pid_gone(infra_pid), 5, "the orphans to die")
    fdaemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(120)
def test_monitor_killed_during_stop(fdaemon: FaultDaemon) -> None:
    """StopContainer waits on a container that ignores SIGTERM; the monitor dies meanwhile."""
    pod_id, ctr = run_logged(fdaemon, "stubborn", ["sh", "-c", "trap '' TERM; sleep 3600"])
    monitor = fdaemon.monitor_pid(pod_id)
    stop = fdaemon.runtime.StopContainer.future(
        api_pb2.StopContainerRequest(container_id=ctr, timeout=30)
    )
    time.sleep(0.5)  # the fault must land while StopContainer waits; there is no event for that
    os.kill(monitor, signal.SIGKILL)
    stop.result(timeout=20)
    status = fdaemon.status(ctr)
    assert status.state == EXITED and status.reason == "MonitorDied"
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)
