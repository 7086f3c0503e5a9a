"""``iottymux logs -f`` over a node whose pods a real rktlet creates and deletes meanwhile.

The daemon runs real containers (runc, busybox) in a network namespace of the test's;
their monitors write the CRI logs under the pod log directories, as on a kubelet
node.  The follower selects pods by label through the daemon's ``ListPodSandbox``,
picks up pods and containers created after it started, from their first line,
reports a restart (the kubelet's ``<name>/<attempt>.log``) and a removed pod, and
prints every line once.  What the kubelet does on top of the runtime (its log
directory layout, removing a deleted pod's log directory) the test does itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri.api import api_pb2
from tests.cri.conftest import REPO, Daemon
from tests.test_logs_cmd import Follower


@pytest.fixture
def follower_of(daemon: Daemon) -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.stop()


def shown(follower: Follower, line: str) -> None:
    want = line.encode()
    follower.wait_for(lambda lines: want in lines, timeout=60)


def run_pod(daemon: Daemon, name: str, **labels: str) -> tuple[str, api_pb2.PodSandboxConfig]:
    config = daemon.pod_config(name)
    config.labels.update(labels)
    reply = daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    return reply.pod_sandbox_id, config


def counter(name: str, count: int, then: str = "") -> list[str]:
    script = f'i=0; while [ $i -lt {count} ]; do echo "{name} $i"; i=$((i+1)); done{then}'
    return ["sh", "-c", script]


def start(
    daemon: Daemon,
    pod: tuple[str, api_pb2.PodSandboxConfig],
    name: str,
    command: list[str],
    attempt: int = 0,
) -> str:
    config = daemon.container_config(name, "busybox", command, log_path=f"{name}/{attempt}.log")
    config.metadata.attempt = attempt
    return daemon.run_container(pod[0], pod[1], config)


def test_follow_pods_by_label_as_the_daemon_creates_and_deletes_them(
    daemon: Daemon, follower_of: list[Follower]
) -> None:
    daemon.log_dir.mkdir(exist_ok=True)
    web_a = run_pod(daemon, "web-a", app="web", tier="front")
    db_a = run_pod(daemon, "db-a", app="db")
    daemon.wait_exited(start(daemon, web_a, "server", counter("web-a/server", 50)))
    daemon.wait_exited(start(daemon, db_a, "postgres", counter("db-a/postgres", 5)))

    follower = Follower(
        "--log-root",
        str(daemon.log_dir),
        "--rktlet-socket",
        daemon.socket,
        "-l",
        "app=web",
        "--merge-window",
        "50ms",
        "--no-prefix",
    )
    follower_of.append(follower)
    shown(follower, "web-a/server 49")

    # New pods while following: one that matches, one that does not.
    web_b = run_pod(daemon, "web-b", app="web")
    db_b = run_pod(daemon, "db-b", app="db")
    first = start(daemon, web_b, "worker", counter("web-b/worker", 300, "; exit 3"))
    start(daemon, db_b, "postgres", counter("db-b/postgres", 300))
    shown(follower, "web-b/worker 299")
    assert daemon.wait_exited(first).exit_code == 3
    # The kubelet restarts it as a new container writing the next attempt's file.
    restarted = start(daemon, web_b, "worker", counter("web-b/worker-again", 200), attempt=1)
    shown(follower, "web-b/worker-again 199")
    daemon.wait_exited(restarted)
    # A sidecar added to the pod later is followed too.
    start(daemon, web_b, "sidecar", counter("web-b/sidecar", 100))
    shown(follower, "web-b/sidecar 99")

    # Deleting web-a: the daemon removes the pod, the kubelet its log directory.
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=web_a[0]))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=web_a[0]))
    shutil.rmtree(web_a[1].log_directory)
    follower.wait_notice("pod default/web-a removed")

    code, err = follower.stop()
    assert code == 0
    lines = [line.decode() for line in follower.lines]
    assert not any(line.startswith("db-") for line in lines), "db pods are not app=web"
    for name, count in (
        ("web-a/server", 50),
        ("web-b/worker", 300),
        ("web-b/worker-again", 200),
        ("web-b/sidecar", 100),
    ):
        numbers = [int(line.split()[1]) for line in lines if line.split()[0] == name]
        assert numbers == list(range(count)), f"{name}: lost, repeated or reordered lines"
    assert len(lines) == 650
    notices = err.decode().splitlines()
    assert "iottymux logs: following new container default/web-b/worker" in notices
    assert "iottymux logs: following new container default/web-b/sidecar" in notices
    assert "iottymux logs: default/web-b/worker restarted (1.log)" in notices
    assert not any("db-" in notice for notice in notices)


def test_selector_without_a_daemon_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iottymux",
            "logs",
            "--log-root",
            str(tmp_path),
            "--rktlet-socket",
            str(tmp_path / "gone.sock"),
            "-f",
            "-l",
            "app=web",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert "pod labels (-l) come from the rktlet daemon, and none answers at" in done.stderr
    assert "Traceback" not in done.stderr
