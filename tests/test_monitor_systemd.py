"""The monitor as a systemd service: readiness by sd_notify, and the systemd-run command.

This machine's PID 1 is not systemd, so the transient-unit path itself
(``systemd-run`` + ``systemctl show``) cannot run here; the notify protocol it relies
on is exercised for real with a datagram socket standing where systemd's would.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from iottymux.control import ControlClient
from iottymux.monitor_cmd import monitor_command, systemd_run_command
from tests.conftest import kill_tree


def test_foreground_monitor_tells_the_service_manager_it_is_ready(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(notify_path)
        listener.settimeout(30)
        argv, env = monitor_command(str(tmp_path / "run"))
        argv = [a for a in argv if a != "--detach"]
        env["NOTIFY_SOCKET"] = notify_path
        monitor = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            message = listener.recv(4096).decode()
            assert message == f"READY=1\nMAINPID={monitor.pid}"
            # READY means the control socket already answers.
            with ControlClient(str(tmp_path / "run" / "control.sock")) as client:
                assert client.request("ping")["pid"] == monitor.pid
                client.request("shutdown")
            assert monitor.wait(timeout=30) == 0
        finally:
            kill_tree(monitor.pid)
            monitor.wait()


def test_systemd_run_command_runs_the_monitor_in_the_foreground(tmp_path: Path) -> None:
    argv, env = systemd_run_command(str(tmp_path), "rktlet-pod-0123456789abcdef")
    assert argv[0] == "systemd-run"
    assert "--unit=rktlet-pod-0123456789abcdef" in argv
    assert "--service-type=notify" in argv and "--property=KillMode=process" in argv
    assert "--detach" not in argv
    assert f"--setenv=PYTHONPATH={env['PYTHONPATH']}" in argv
    python = argv.index("-S") - 1
    assert os.path.isabs(argv[python])
    assert argv[python + 1 :] == ["-S", "-m", "iottymux", "monitor", "--run-dir", str(tmp_path)]
