"""The ``rktlet pod|app|image`` CRI client against a real daemon, as a subprocess."""

from __future__ import annotations

import importlib
import json
import select
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.cri.conftest import REPO, Daemon

BUSYBOX = "docker.io/rktlet/busybox:latest"


def rktlet(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cri.cli",
            *args[:2],
            "--runtime-endpoint",
            daemon.socket,
            "--run-dir",
            str(daemon.run_dir),
            *args[2:],
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rktlet {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
    return proc


def _yaml() -> Any:
    try:  # PyYAML, when present, only cross-checks our own emitter
        return importlib.import_module("yaml")
    except ImportError:
        return None


def wait_state(daemon: Daemon, app: str, state: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(rktlet(daemon, "app", "status", app, "-o", "json").stdout)["status"]
        if status["state"] == state:
            return dict(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"{app} is {status['state']}, not {state}")
        time.sleep(0.1)  # the CLI is the thing under test: poll it, not an event stream


@pytest.mark.timeout(120)
def test_pod_and_app_lifecycle(daemon: Daemon) -> None:
    log_root = str(daemon.log_dir)
    pod_id = rktlet(
        daemon, "pod", "create", "--name", "web", "--label", "tier=front", "--log-root", log_root
    ).stdout.strip()
    assert len(pod_id) == 64

    listing = rktlet(daemon, "pod", "list").stdout.splitlines()
    assert listing[0].split()[:3] == ["POD", "ID", "NAME"]
    assert any(line.startswith(pod_id[:13]) and " web " in line for line in listing[1:])
    pods = json.loads(rktlet(daemon, "pod", "list", "-o", "json").stdout)
    assert [p["id"] for p in pods] == [pod_id] and pods[0]["labels"] == {"tier": "front"}
    assert rktlet(daemon, "pod", "list", "-q").stdout.split() == [pod_id]
    status = rktlet(daemon, "pod", "status", "web").stdout
    assert f"ID:        {pod_id}" in status and "State:     ready" in status
    yaml_out = rktlet(daemon, "pod", "status", pod_id[:8], "-o", "yaml").stdout
    assert pod_id in yaml_out and "\n  state: SANDBOX_READY\n" in yaml_out
    yaml = _yaml()
    if yaml is not None:
        parsed = yaml.safe_load(yaml_out)
        as_json = json.loads(rktlet(daemon, "pod", "status", pod_id, "-o", "json").stdout)
        assert parsed["status"] == as_json["status"]

    # An app that logs and stays up; exec into it; read its logs.
    app_id = rktlet(
        daemon,
        "app",
        "add",
        "web",
        BUSYBOX,
        "--name",
        "talker",
        "--env",
        "GREETING=hello",
        "--",
        "sh",
        "-c",
        'for i in 1 2 3; do echo "$GREETING $i"; done; echo oops >&2; exec sleep 300',
    ).stdout.strip()
    assert len(app_id) == 64
    assert wait_state(daemon, "web/talker", "CONTAINER_CREATED")["id"] == app_id
    assert rktlet(daemon, "app", "start", app_id[:10]).stdout.strip() == app_id
    wait_state(daemon, "web/talker", "CONTAINER_RUNNING")

    apps = rktlet(daemon, "app", "list", "web").stdout.splitlines()
    assert apps[0].split()[:3] == ["APP", "ID", "NAME"]
    assert any(app_id[:13] in line and "talker" in line and "running" in line for line in apps)
    listed = json.loads(rktlet(daemon, "app", "list", "-o", "json").stdout)
    assert [c["id"] for c in listed] == [app_id]
    assert "State:     running" in rktlet(daemon, "app", "status", "web/talker").stdout

    done = rktlet(
        daemon, "app", "exec", "web/talker", "--", "sh", "-c", "echo $GREETING; exit 3", check=False
    )
    assert done.returncode == 3 and done.stdout == "hello\n"

    deadline = time.monotonic() + 20
    while True:
        logs = rktlet(daemon, "app", "logs", "web/talker").stdout
        if "oops" in logs:
            break
        assert time.monotonic() < deadline, logs
        time.sleep(0.1)  # the app writes asynchronously
    assert logs.splitlines() == ["hello 1", "hello 2", "hello 3", "oops"]
    only_err = rktlet(daemon, "app", "logs", app_id[:12], "--stream", "stderr").stdout
    assert only_err == "oops\n"
    tail = rktlet(daemon, "app", "logs", "web/talker", "--tail", "1", "-t").stdout
    assert tail.rstrip().endswith("oops") and tail[:4].isdigit()

    # Removing a running app needs --force; stop then rm works.
    refused = rktlet(daemon, "app", "rm", "web/talker", check=False)
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert rktlet(daemon, "app", "stop", "web/talker", "--grace", "1").stdout.strip() == app_id
    wait_state(daemon, app_id, "CONTAINER_EXITED")
    assert rktlet(daemon, "app", "rm", "web/talker").stdout.strip() == app_id
    assert json.loads(rktlet(daemon, "app", "list", "-o", "json").stdout) == []

    assert rktlet(daemon, "pod", "stop", "web").stdout.strip() == pod_id
    assert "State:     notready" in rktlet(daemon, "pod", "status", pod_id).stdout
    assert rktlet(daemon, "pod", "rm", pod_id[:12]).stdout.strip() == pod_id
    assert rktlet(daemon, "pod", "list", "-q").stdout == ""


@pytest.mark.timeout(60)
def test_images_and_errors(daemon: Daemon) -> None:
    images = json.loads(rktlet(daemon, "image", "list", "-o", "json").stdout)
    assert any(BUSYBOX in image.get("repo_tags", []) for image in images)
    table = rktlet(daemon, "image", "list").stdout.splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert any(line.startswith("docker.io/rktlet/busybox ") for line in table)
    assert rktlet(daemon, "image", "rm", "docker.io/rktlet/httpd:latest").stdout.startswith(
        "removed"
    )
    gone = rktlet(daemon, "image", "rm", "docker.io/rktlet/httpd:latest", check=False)
    assert gone.returncode == 4 and "no such image" in gone.stderr

    missing = rktlet(daemon, "pod", "status", "nope", check=False)
    assert missing.returncode == 4 and "POD: no pod with id, id prefix or name 'nope'" in (
        missing.stderr
    )
    missing = rktlet(daemon, "app", "status", "nope/app", check=False)
    assert missing.returncode == 4 and "'nope'" in missing.stderr
    bad = rktlet(daemon, "pod", "create", "--name", "p", "--port", "80", check=False)
    assert bad.returncode == 2 and "--port: '80'" in bad.stderr
    usage = rktlet(daemon, "app", "add", check=False)
    assert usage.returncode == 2 and "required" in usage.stderr
    pod_id = rktlet(
        daemon, "pod", "create", "--name", "errs", "--log-root", str(daemon.log_dir)
    ).stdout.strip()
    rktlet(
        daemon, "app", "add", pod_id, BUSYBOX, "--name", "sleeper", "--start", "--", "sleep", "300"
    )
    refused = rktlet(daemon, "app", "add", pod_id, "docker.io/rktlet/absent:1", check=False)
    assert refused.returncode != 0 and "app add" in refused.stderr and "absent" in refused.stderr
    pull = rktlet(daemon, "image", "pull", "127.0.0.1:1/absent:1", check=False)
    assert pull.returncode == 1 and "image pull 127.0.0.1:1/absent:1:" in pull.stderr
    assert "cannot reach the runtime" not in pull.stderr

    # Streaming exec (-i): the URL is on 127.0.0.1 in the daemon's netns, so run there.
    piped = subprocess.run(
        [
            "nsenter",
            f"--net={daemon.netns}",
            sys.executable,
            "-m",
            "cri.cli",
            "app",
            "exec",
            "--runtime-endpoint",
            daemon.socket,
            "-i",
            f"{pod_id}/sleeper",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; exit 4",
        ],
        input="piped data\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert (piped.returncode, piped.stdout) == (4, "PIPED DATA\n"), piped.stderr

    # A terminal (-it): our side is a pty, so is the command's.
    import ptyprocess

    term = ptyprocess.PtyProcess.spawn(
        [
            "nsenter",
            f"--net={daemon.netns}",
            sys.executable,
            "-m",
            "cri.cli",
            "app",
            "exec",
            "--runtime-endpoint",
            daemon.socket,
            "-it",
            f"{pod_id}/sleeper",
            "--",
            "sh",
            "-c",
            "read line; echo got:$line; tty; exit 6",
        ],
        cwd=str(REPO),
        dimensions=(33, 101),
    )
    term.write(b"hello\r")
    seen = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if select.select([term.fd], [], [], 0.5)[0]:
            try:
                seen += term.read(4096)
            except EOFError:
                break
    if term.isalive():
        term.kill(9)
        raise AssertionError(f"rktlet app exec -it did not end: {seen!r}")
    term.wait()
    assert b"got:hello" in seen and b"/dev/pts/" in seen, seen
    assert term.exitstatus == 6

    down = subprocess.run(
        [sys.executable, "-m", "cri.cli", "pod", "list", "--runtime-endpoint", "/nonexistent.sock"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert down.returncode == 3 and "--runtime-endpoint: no CRI socket at /nonexistent.sock" in (
        down.stderr
    )
    helped = subprocess.run(
        [sys.executable, "-m", "cri.cli", "app", "exec", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert helped.returncode == 0 and "examples:" in helped.stdout
    assert "exit codes:" in helped.stdout
