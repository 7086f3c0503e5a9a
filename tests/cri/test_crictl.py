"""The real crictl against a real daemon: what differed from containerd, byte for byte.

crictl is found through ``$RKTLET_E2E_BIN`` (a directory of the Kubernetes node
binaries) or PATH; without it these tests skip, saying so.  It runs inside the
daemon's network namespace, where the streaming server listens on 127.0.0.1.
"""

from __future__ import annotations

import socket
import uuid

from tests.cri.conftest import Crictl

BUSYBOX = "docker.io/rktlet/busybox:latest"


def pod_document(crictl: Crictl, name: str, **extra: object) -> str:
    uid = uuid.uuid4().hex
    return crictl.json_file(
        f"pod-{uid}.json",
        {
            "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
            "log_directory": str(crictl.daemon.log_dir / uid),
            "linux": {},
            **extra,
        },
    )


def container_document(crictl: Crictl, name: str, command: list[str], **extra: object) -> str:
    return crictl.json_file(
        f"ctr-{uuid.uuid4().hex}.json",
        {
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": command,
            "log_path": f"{name}/0.log",
            "linux": {},
            **extra,
        },
    )


def run_container(crictl: Crictl, pod: str, container: str) -> tuple[str, str]:
    pod_id = crictl.run("runp", pod).stdout.decode().strip()
    container_id = crictl.run("create", pod_id, container, pod).stdout.decode().strip()
    crictl.run("start", container_id)
    return pod_id, container_id


def test_pod_without_hostname_gets_the_nodes_and_any_name(crictl: Crictl) -> None:
    # critest names its pods "create-PodSandbox-for-container-<uuid>": 68 characters.
    name = f"create-PodSandbox-for-container-{uuid.uuid4()}"
    assert len(name) > 64
    _, container_id = run_container(
        crictl, pod_document(crictl, name), container_document(crictl, "c", ["sleep", "600"])
    )
    out = crictl.run("exec", container_id, "sh", "-c", "hostname; cat /etc/hostname")
    assert out.stdout.decode().split() == [socket.gethostname()] * 2
