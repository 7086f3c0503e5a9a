"""The kubelet and the runtime restarted while pods run: nothing recreated, no line lost."""

from __future__ import annotations

from tests.e2e.cluster import Node, wait_until
from tests.e2e.logclients import container_logs
from tests.e2e.pods import StaticPod, shell, static_pod

TICKER = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"


#: What the kubelet answers while its gRPC channel to a restarted runtime is still in
#: reconnect backoff (it redials after 1 s, then later and later).
UNREACHABLE = "unable to retrieve container logs for "


def _ticks(pod: StaticPod) -> list[int]:
    lines = container_logs(pod, "c").decode().splitlines()
    if len(lines) == 1 and lines[0].startswith(UNREACHABLE):
        return []
    assert all(line.startswith("tick ") for line in lines), lines
    return [int(line.split()[1]) for line in lines]


def _more_ticks(pod: StaticPod, than: int) -> list[int]:
    def check() -> list[int] | None:
        ticks = _ticks(pod)
        return ticks if ticks and ticks[-1] > than else None

    return wait_until(f"ticks past {than}", check, 30)


def _same_pod_runs_on(pod: StaticPod, container_id: str, sandboxes: list[str], before: int) -> None:
    node = pod.node
    pod.wait_running()
    assert pod.container_id("c") == container_id
    # Every line is there, in order, also those written while a daemon was down; and
    # the kubelet has had time to act on what it found after its first sync.
    ticks = _more_ticks(pod, before + 10)
    assert ticks == list(range(1, len(ticks) + 1))
    assert pod.container_status("c").get("restartCount", 0) == 0
    # The runtime holds the same sandbox and container, still at attempt 0.
    uid = pod.uid
    listed = node.crictl_json("pods", "--label", f"io.kubernetes.pod.uid={uid}")["items"]
    assert [p["id"] for p in listed] == sandboxes
    containers = node.crictl_json("ps", "-a", "--label", f"io.kubernetes.pod.uid={uid}")
    assert [(c["id"], c["metadata"]["attempt"]) for c in containers["containers"]] == [
        (container_id, 0)
    ]


def _sandboxes(pod: StaticPod) -> list[str]:
    return [
        p["id"]
        for p in pod.node.crictl_json("pods", "--label", f"io.kubernetes.pod.uid={pod.uid}")[
            "items"
        ]
    ]


def test_kubelet_restart_recreates_nothing(node: Node) -> None:
    with static_pod(node, "kubelet-restart", [shell("c", node.image("busybox"), TICKER)]) as pod:
        container_id = pod.container_id("c")
        sandboxes = _sandboxes(pod)
        before = _more_ticks(pod, 3)[-1]
        node.restart_kubelet()
        _same_pod_runs_on(pod, container_id, sandboxes, before)


def test_runtime_restart_recreates_nothing(node: Node) -> None:
    with static_pod(node, "runtime-restart", [shell("c", node.image("busybox"), TICKER)]) as pod:
        container_id = pod.container_id("c")
        sandboxes = _sandboxes(pod)
        before = _more_ticks(pod, 3)[-1]
        node.restart_runtime()
        _same_pod_runs_on(pod, container_id, sandboxes, before)
