"""Exec probes: the kubelet runs them through the runtime's ExecSync."""

from __future__ import annotations

from tests.e2e.cluster import Node
from tests.e2e.pods import shell, static_pod


def _probe(*command: str) -> dict[str, object]:
    return {
        "exec": {"command": list(command)},
        "periodSeconds": 1,
        "timeoutSeconds": 5,
        "failureThreshold": 1,
        "successThreshold": 1,
    }


def test_readiness_probe_follows_the_command(node: Node) -> None:
    container = shell(
        "c",
        node.image("busybox"),
        "exec sleep 3600",
        readinessProbe=_probe("test", "-e", "/tmp/ready"),
    )
    with static_pod(node, "ready", [container]) as pod:
        container_id = pod.container_id("c")
        assert pod.container_status("c").get("ready") is False
        node.crictl("exec", container_id, "touch", "/tmp/ready")
        pod.wait_container("c", lambda s: s.get("ready") is True, "ready", 60)
        node.crictl("exec", container_id, "rm", "/tmp/ready")
        status = pod.wait_container("c", lambda s: s.get("ready") is False, "unready", 60)
        # Readiness never restarts anything.
        assert status.get("restartCount", 0) == 0 and pod.container_id("c") == container_id


def test_failing_liveness_probe_restarts_the_container(node: Node) -> None:
    container = shell(
        "c",
        node.image("busybox"),
        "touch /tmp/healthy; exec sleep 3600",
        livenessProbe=_probe("cat", "/tmp/healthy"),
    )
    with static_pod(node, "live", [container]) as pod:
        first = pod.container_id("c")
        node.crictl("exec", first, "rm", "/tmp/healthy")
        status = pod.wait_container(
            "c",
            lambda s: s.get("restartCount", 0) >= 1 and "running" in s["state"],
            "restarted and running",
            90,
        )
        assert status["lastState"]["terminated"]["containerID"].endswith(first)
        assert pod.container_id("c") != first
