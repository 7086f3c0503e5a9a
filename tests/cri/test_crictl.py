"""The real crictl against a real daemon: what differed from containerd, byte for byte.

crictl is found through ``$RKTLET_E2E_BIN`` (a directory of the Kubernetes node
binaries) or PATH; without it these tests skip, saying so.  It runs inside the
daemon's network namespace, where the streaming server listens on 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import time
import uuid

from ptyprocess import PtyProcess

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


def in_a_terminal(argv: list[str], typed: bytes, timeout: float = 60) -> bytes:
    """Run ``argv`` on a new pty, type ``typed`` at once, and return all it printed."""
    proc = PtyProcess.spawn(argv, dimensions=(24, 80))
    try:
        proc.write(typed)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                out += proc.read(65536)
            except EOFError:
                return out
        raise AssertionError(f"{argv} did not end: {out!r}")
    finally:
        proc.close(force=True)


def test_exec_it_echoes_no_nul_of_crictls_own(crictl: Crictl) -> None:
    # An EOF typed before crictl puts its terminal in raw mode reaches crictl as a NUL
    # (the kernel's doing), which it sends on; fed to the container's terminal before
    # the process ran, it came back as "^@" ahead of the output.
    _, container_id = run_container(
        crictl, pod_document(crictl, "tty"), container_document(crictl, "c", ["sleep", "600"])
    )
    never_ran = in_a_terminal(crictl.argv("exec", "-it", container_id, "/no/such/binary"), b"\x04")
    assert b"^@" not in never_ran
    assert b"/no/such/binary" in never_ran
    assert in_a_terminal(crictl.argv("exec", "-it", container_id, "echo", "hello"), b"") == (
        b"hello\r\n"
    )


def test_attach_with_piped_input_ends_and_the_container_runs_on(crictl: Crictl) -> None:
    _, container_id = run_container(
        crictl,
        pod_document(crictl, "attach"),
        container_document(crictl, "sh", ["sh"], stdin=True, stdin_once=False),
    )
    for word in (b"first", b"second"):
        out = crictl.run("attach", "-i", container_id, input=b"echo " + word + b"\n", timeout=60)
        assert out.stdout == word + b"\n"
    state = crictl.run(
        "inspect", "-o", "go-template", "--template", "{{.status.state}}", container_id
    )
    assert state.stdout.strip() == b"CONTAINER_RUNNING"
