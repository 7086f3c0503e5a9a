"""Static pods on the real kubelet: several containers, restart policies, teardown."""

from __future__ import annotations

import os
from pathlib import Path

from bench._cri_peer import pids_with_cmdline
from tests.e2e.cluster import Node, wait_until
from tests.e2e.logclients import container_logs
from tests.e2e.pods import shell, static_pod


def test_pod_with_several_containers_runs(node: Node) -> None:
    busybox = node.image("busybox")
    containers = [shell(n, busybox, f"echo I am {n}; exec sleep 3600") for n in ("a", "b", "c")]
    with static_pod(node, "multi", containers) as pod:
        ids = {pod.container_id(n) for n in ("a", "b", "c")}
        assert len(ids) == 3
        for name in ("a", "b", "c"):
            line = f"I am {name}\n".encode()

            def printed(n: str = name, line: bytes = line) -> bool:
                return container_logs(pod, n) == line

            wait_until(f"{name}'s line", printed, 30)
        # One sandbox holds them all: the same network namespace in each container.
        netns = {node.crictl("exec", i, "readlink", "/proc/self/ns/net").strip() for i in ids}
        assert len(netns) == 1


def test_restart_policy_always_restarts_even_a_clean_exit(node: Node) -> None:
    with static_pod(
        node,
        "always",
        [shell("c", node.image("busybox"), "echo ran; exit 0")],
        running=False,
        restartPolicy="Always",
    ) as pod:
        status = pod.wait_container("c", lambda s: s.get("restartCount", 0) >= 2, "restarted twice")
        assert status["lastState"]["terminated"]["exitCode"] == 0


def test_restart_policy_on_failure_restarts_only_failures(node: Node) -> None:
    busybox = node.image("busybox")
    containers = [shell("ok", busybox, "exit 0"), shell("bad", busybox, "exit 3")]
    with static_pod(node, "onfail", containers, running=False, restartPolicy="OnFailure") as pod:
        bad = pod.wait_container("bad", lambda s: s.get("restartCount", 0) >= 2, "restarted")
        assert bad["lastState"]["terminated"]["exitCode"] == 3
        ok = pod.wait_container("ok", lambda s: "terminated" in s["state"], "completed")
        assert ok["state"]["terminated"]["exitCode"] == 0
        assert ok["state"]["terminated"]["reason"] == "Completed"
        assert ok.get("restartCount", 0) == 0


def test_restart_policy_never_leaves_a_failed_pod(node: Node) -> None:
    with static_pod(
        node,
        "never",
        [shell("c", node.image("busybox"), "echo bye; exit 7")],
        running=False,
        restartPolicy="Never",
    ) as pod:
        status = wait_until(
            "phase Failed", lambda: (s := pod.status()).get("phase") == "Failed" and s, 60
        )
        (container,) = status["containerStatuses"]
        assert container["state"]["terminated"]["exitCode"] == 7
        assert container.get("restartCount", 0) == 0
        # The runtime ran it once: one container, attempt 0.
        listed = node.crictl_json("ps", "-a", "--label", f"io.kubernetes.pod.uid={pod.uid}")
        assert [c["metadata"]["attempt"] for c in listed["containers"]] == [0]
        assert container_logs(pod, "c") == b"bye\n"


def _net_inode(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _cgroup_dirs(pid: int) -> list[Path]:
    """The directories of ``pid``'s cgroups, in every hierarchy mounted here."""
    from bench._cri_peer import cgroup_mounts

    dirs = []
    mounts = cgroup_mounts()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for mount in mounts:
            names = set(Path(mount).name.split(","))
            if (controllers == "" and mount.endswith("unified")) or (
                controllers and set(controllers.replace("name=", "").split(",")) & names
            ):
                candidate = Path(mount) / path.lstrip("/")
                if candidate.is_dir():
                    dirs.append(candidate)
    return dirs


def _leftovers(
    node: Node,
    ids: set[str],
    uid: str,
    pids: list[int],
    netns: set[str],
    cgroups: list[Path],
    roots: list[Path],
) -> list[str]:
    """What of the pod is still there."""
    found: list[str] = []
    found += [f"process {p}" for p in pids if Path(f"/proc/{p}").exists()]
    for needle in (*ids, uid):
        found += [f"process {p} ({needle[:12]})" for p in pids_with_cmdline(needle)]
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if any(n in line for n in (*ids, uid)) or any(n in line for n in netns):
                found.append("mount " + line.split()[4])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") in netns:
                    found.append(f"process {entry} in the pod's netns")
            except OSError:
                pass
    found += [f"cgroup {c}" for c in cgroups if c.exists()]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                if any(n in name for n in (*ids, uid)):
                    found.append(f"file {Path(dirpath) / name}")
    listed = node.crictl_json("pods", "--label", f"io.kubernetes.pod.uid={uid}")
    found += [f"sandbox {p['id'][:12]} ({p['state']})" for p in listed["items"]]
    return found


def test_removed_manifest_leaves_nothing_behind(node: Node) -> None:
    busybox = node.image("busybox")
    containers = [shell(n, busybox, "echo up; exec sleep 3600") for n in ("a", "b")]
    with static_pod(node, "gone", containers) as pod:
        uid = pod.uid
        ids = {pod.container_id("a"), pod.container_id("b")}
        sandboxes = node.crictl_json("pods", "--label", f"io.kubernetes.pod.uid={uid}")["items"]
        ids |= {s["id"] for s in sandboxes}
        pids = [
            int(node.crictl_json("inspect", i)["info"]["pid"])
            for i in ids - {s["id"] for s in sandboxes}
        ]
        netns = {_net_inode(p) for p in pids}
        cgroups = [d for p in pids for d in _cgroup_dirs(p)]
        assert cgroups and all(uid.replace("-", "_") in str(d) or uid in str(d) for d in cgroups)
        log_dir = next(node.kubelet.pod_logs_dir.glob(f"*_{uid}"))
        assert log_dir.is_dir()
        pod.remove()
        roots = [node.runtime.base, node.kubelet.root_dir, node.kubelet.pod_logs_dir]
        roots += [Path(p) for p in [getattr(node.runtime, "run_dir", None)] if p]
        # The kubelet stops the pod at once; it removes the sandbox, its log directory and
        # its own pod directory in its garbage collection, which runs once a minute.
        wait_until(
            "nothing of the pod left",
            lambda: not _leftovers(node, ids, uid, pids, netns, cgroups, roots),
            150,
            step=1,
        )
        assert not log_dir.exists()
