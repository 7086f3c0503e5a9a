"""The daemon is SIGKILLed half-way through each RPC of a pod's life; the next one finishes.

The daemon's fault hook (``RKTLET_FAULT_KILL_AT``) kills it at a named point
inside the RPC -- after the monitor started, after runc created the infra, after
the monitor added a container, and so on.  The test then does what the kubelet
does: starts a daemon, retries the failed call, and goes on with the life cycle.
At the end nothing is left, and the container's log is whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cri.api import api_pb2
from tests.faults import crilog
from tests.faults.conftest import FaultDaemon, assert_no_leaks, counting_script

POINTS = [
    "RunPodSandbox:monitor-started",
    "RunPodSandbox:infra-created",
    "RunPodSandbox:after",
    "CreateContainer:added",
    "CreateContainer:after",
    "StartContainer:started",
    "StopContainer:signalled",
    "RemoveContainer:removed-from-monitor",
    "StopPodSandbox:containers-stopped",
    "RemovePodSandbox:mid",
    "RemovePodSandbox:monitor-shut-down",
]


class Lifecycle:
    """The kubelet's side: each step retried once on a fresh daemon if the first died."""

    def __init__(self, daemon: FaultDaemon) -> None:
        self.d = daemon
        self.kills = 0
        self.config = daemon.pod_config("lifecycle")
        self.pod_id = ""
        self.ctr = ""

    def call(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        assert self.d.wait_daemon_dead() == -9
        self.kills += 1
        self.d.start()
        return step()

    def run(self) -> None:
        def run_pod() -> str:
            # As the kubelet's next sync: a pod the lost call made is found and used
            # when ready; a half-made one must have been rolled back, not met here.
            for pod in rt_now().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
                if pod.metadata.uid == self.config.metadata.uid:
                    assert pod.state == api_pb2.PodSandboxState.SANDBOX_READY
                    return str(pod.id)
            reply = rt_now().RunPodSandbox(api_pb2.RunPodSandboxRequest(config=self.config))
            return str(reply.pod_sandbox_id)

        def rt_now() -> Any:
            return self.d.runtime

        self.pod_id = self.call(run_pod)
        self.d.ids.add(self.pod_id)
        ctr_config = self.d.container_config("counter", "busybox", counting_script(delay="0.01"))

        def create() -> str:
            for ctr in rt_now().ListContainers(api_pb2.ListContainersRequest()).containers:
                if ctr.metadata.name == "counter":
                    assert ctr.state == api_pb2.ContainerState.CONTAINER_CREATED
                    return str(ctr.id)
            reply = self.d.runtime.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=self.pod_id, config=ctr_config, sandbox_config=self.config
                )
            )
            return str(reply.container_id)

        self.ctr = self.call(create)
        self.d.ids.add(self.ctr)

        def start() -> None:
            # The kubelet starts only what its next sync still sees as created.
            if self.d.status(self.ctr).state == api_pb2.ContainerState.CONTAINER_CREATED:
                rt_now().StartContainer(api_pb2.StartContainerRequest(container_id=self.ctr))

        self.call(start)
        log_path = self.d.log_path(self.ctr)
        self.call(
            lambda: self.d.runtime.StopContainer(
                api_pb2.StopContainerRequest(container_id=self.ctr, timeout=10)
            )
        )
        status = self.d.status(self.ctr)
        assert status.state == api_pb2.ContainerState.CONTAINER_EXITED
        lines = crilog.read_lines(log_path)
        crilog.check_sequence(crilog.terminated(lines))
        self.call(
            lambda: self.d.runtime.RemoveContainer(
                api_pb2.RemoveContainerRequest(container_id=self.ctr)
            )
        )
        self.call(
            lambda: self.d.runtime.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=self.pod_id)
            )
        )
        self.call(
            lambda: self.d.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=self.pod_id)
            )
        )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", POINTS)
def test_daemon_killed_during_rpc(fdaemon: FaultDaemon, point: str) -> None:
    fdaemon.stop()
    fdaemon.start(RKTLET_FAULT_KILL_AT=point)
    life = Lifecycle(fdaemon)
    life.run()
    assert life.kills == 1, f"the daemon never reached {point}"
    assert fdaemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(60)
def test_clean_shutdown_leaves_no_sockets(fdaemon: FaultDaemon) -> None:
    pod_id, pod_config = fdaemon.run_pod("shutdown")
    ctr = fdaemon.run_container(
        pod_id, pod_config, fdaemon.container_config("app", "busybox", ["sleep", "3600"])
    )
    reply = fdaemon.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=ctr, cmd=["true"]))
    assert reply.exit_code == 0
    assert (fdaemon.run_dir / "exec-helper.sock").exists()
    fdaemon.stop()  # SIGTERM: pods keep running, the daemon's own sockets go
    left = sorted(p.name for p in fdaemon.run_dir.iterdir() if p.is_socket())
    assert left == []
    fdaemon.start()
    assert fdaemon.status(ctr).state == api_pb2.ContainerState.CONTAINER_RUNNING
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)
