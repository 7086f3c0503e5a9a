"""The monitor driving a real OCI runtime (runc): stdio pipes, console socket, reaping."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from iottymux.attachclient import AttachClient, endpoint_path
from iottymux.control import ControlError
from tests.conftest import MonitorHandle

RUNC = shutil.which("runc") or "runc"
pytestmark = pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")


@pytest.fixture
def bundle_factory(tmp_path: Path):
    """Busybox bundles; every container created is force-deleted afterwards."""
    root = tmp_path / "runc-root"
    made: list[str] = []
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/usr/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "echo", "cat", "sleep", "stty", "tty", "seq"):
        os.link(rootfs / "bin" / "busybox", rootfs / "bin" / applet)

    def make(container_id: str, args: list[str], *, terminal: bool = False) -> dict[str, Any]:
        bundle = tmp_path / f"bundle-{container_id}"
        bundle.mkdir()
        subprocess.run(
            [RUNC, "spec", "--rootless"] if False else [RUNC, "spec"], cwd=bundle, check=True
        )
        config = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": str(rootfs), "readonly": True}
        config["process"]["args"] = args
        config["process"]["terminal"] = terminal
        config["process"]["env"] = ["PATH=/bin"]
        (bundle / "config.json").write_text(json.dumps(config))
        made.append(container_id)
        return {"runtime": RUNC, "root": str(root), "bundle": str(bundle), "id": container_id}

    yield make
    for container_id in made:
        subprocess.run(
            [RUNC, "--root", str(root), "delete", "--force", container_id],
            capture_output=True,
            check=False,
        )


def test_container_output_is_logged_and_exit_recorded(
    monitor: MonitorHandle, tmp_path: Path, bundle_factory
) -> None:
    oci = bundle_factory("ctr-out", ["sh", "-c", "echo to stdout; echo to stderr >&2; exit 5"])
    log = tmp_path / "ctr" / "0.log"
    created = monitor.request(
        "add", app="ctr", oci=oci, stdout="stream", stderr="stream", log_path=str(log)
    )
    assert created["pid"] > 0
    # Created, not started: the init exists but has not run the command.
    assert log.read_bytes() == b""
    monitor.request("start", app="ctr")
    status = monitor.request("wait", app="ctr")
    assert (status["exit_code"], status["reason"]) == (5, "Error")
    lines = log.read_bytes().split(b"\n")[:-1]
    assert sorted(line.split(b" ", 1)[1] for line in lines) == [
        b"stderr F to stderr",
        b"stdout F to stdout",
    ]
    monitor.request("remove", app="ctr")
    state = subprocess.run(
        [RUNC, "--root", oci["root"], "state", "ctr-out"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert state.returncode != 0, "remove must delete the runtime's container"


def test_tty_container_gets_its_pty_through_the_console_socket(
    monitor: MonitorHandle, tmp_path: Path, bundle_factory
) -> None:
    oci = bundle_factory("ctr-tty", ["sh", "-c", "read line; echo got $line; tty"], terminal=True)
    log = tmp_path / "tty.log"
    monitor.request(
        "add", app="tty", oci=oci, stdin="tty", stdout="tty", stderr="tty", log_path=str(log)
    )
    monitor.request("start", app="tty")
    with AttachClient(endpoint_path(str(monitor.run_dir), "tty")) as client:
        assert client.ready["tty"] is True
        client.send_stdin(b"hello\r")
        out, _, exit_body, _ = client.collect()
    assert b"got hello" in out
    assert exit_body is not None and exit_body["exit_code"] == 0
    records = log.read_bytes()
    assert b" stdout F got hello\n" in records and b"\r" not in records
    assert b" stdout F /dev/pts/0\n" in records


def test_signal_and_stdin_once_reach_the_container(
    monitor: MonitorHandle, tmp_path: Path, bundle_factory
) -> None:
    oci = bundle_factory("ctr-cat", ["cat"])
    monitor.request(
        "add",
        app="cat",
        oci=oci,
        stdin="stream",
        stdout="stream",
        stderr="stream",
        stdin_once=True,
        log_path=str(tmp_path / "cat.log"),
    )
    monitor.request("start", app="cat")
    with AttachClient(endpoint_path(str(monitor.run_dir), "cat")) as client:
        client.send_stdin(b"through the container\n")
        client.close_stdin()
        out, _, exit_body, _ = client.collect()
    assert out == b"through the container\n"
    assert exit_body is not None and exit_body["exit_code"] == 0
    oci2 = bundle_factory("ctr-sleep", ["sleep", "600"])
    monitor.request("add", app="sleep", oci=oci2, log_path=str(tmp_path / "s.log"))
    monitor.request("start", app="sleep")
    monitor.request("signal", app="sleep", signal="KILL")
    status = monitor.request("wait", app="sleep")
    assert (status["signal"], status["exit_code"]) == (9, 137)


def test_runtime_failure_leaves_nothing_behind(
    monitor: MonitorHandle, tmp_path: Path, bundle_factory
) -> None:
    oci = bundle_factory("ctr-bad", ["/no/such/binary"])
    # runc create fails for a missing executable: the error names the cause.
    with pytest.raises(ControlError) as err:
        monitor.request("add", app="bad", oci=oci, log_path=str(tmp_path / "bad.log"))
    assert err.value.code == "Internal"
    assert "no such file" in err.value.message.lower() or "not found" in err.value.message
    assert monitor.request("status")["apps"] == []
    assert not (monitor.run_dir / "apps" / "bad").exists()
    # The kubelet counts N.log files for restart counts: a container that never ran
    # has none, and the runtime's words went to the caller, not into a log.
    assert not (tmp_path / "bad.log").exists()


def test_failed_create_takes_back_the_log_directories_it_made(
    monitor: MonitorHandle, tmp_path: Path, bundle_factory
) -> None:
    kept = tmp_path / "pod-logs" / "other.log"
    kept.parent.mkdir()
    kept.write_bytes(b"not ours\n")
    oci = bundle_factory("ctr-bad2", ["/no/such/binary"])
    with pytest.raises(ControlError):
        monitor.request(
            "add", app="bad", oci=oci, log_path=str(tmp_path / "pod-logs" / "ctr" / "0.log")
        )
    assert sorted(p.name for p in (tmp_path / "pod-logs").iterdir()) == ["other.log"]
    assert kept.read_bytes() == b"not ours\n"
    # A log file that existed before the create is the caller's: it stays, untouched.
    existing = tmp_path / "pod-logs" / "1.log"
    existing.write_bytes(b"earlier\n")
    oci = bundle_factory("ctr-bad3", ["/no/such/binary"])
    with pytest.raises(ControlError):
        monitor.request("add", app="bad", oci=oci, log_path=str(existing))
    assert existing.read_bytes() == b"earlier\n"


def test_oci_request_errors_name_the_field(monitor: MonitorHandle, tmp_path: Path) -> None:
    for oci, field in (
        ("runc", "oci:"),
        ({"runtime": "", "root": "/r", "bundle": "/b", "id": "x"}, "oci.runtime:"),
        ({"runtime": "runc", "root": "rel", "bundle": "/b", "id": "x"}, "oci.root:"),
        ({"runtime": "runc", "root": "/r", "bundle": str(tmp_path), "id": "x"}, "oci.bundle:"),
    ):
        with pytest.raises(ControlError) as err:
            monitor.request("add", app="x", oci=oci, log_path=str(tmp_path / "x.log"))
        assert err.value.code == "InvalidArgument"
        assert err.value.message.startswith(field)
