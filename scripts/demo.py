"""The main job, as far as it has landed: a pod monitor logging its apps.

Starts a detached iottymux monitor, runs an app that prints on stdout and
stderr (one line longer than the CRI maximum) and a tty app, shows the CRI log
files the monitor wrote, their status, then shuts the monitor down and removes
everything it created.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from iottymux.control import ControlClient


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="rktlet-demo-"))
    run_dir = base / "run"
    log_root = base / "pods" / "default_demo_0001"
    pid = int(
        subprocess.run(
            [sys.executable, "-m", "iottymux", "monitor", "--run-dir", str(run_dir), "--detach"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    print(f"== monitor started, pid {pid}, run dir {run_dir}")
    client = ControlClient(str(run_dir / "control.sock"))
    try:
        script = (
            "echo hello from the app; echo a warning >&2; "
            "head -c 20000 /dev/zero | tr '\\0' x; echo; printf 'no newline at the end'"
        )
        app_log = log_root / "app" / "0.log"
        client.request("add", app="app", command=["sh", "-c", script], log_path=str(app_log))
        client.request("start", app="app")
        client.request("wait", app="app")
        tty_log = log_root / "shell" / "0.log"
        client.request(
            "add",
            app="shell",
            command=["sh", "-c", "echo on a tty: $(tty); exit 3"],
            stdin="tty",
            stdout="tty",
            stderr="tty",
            log_path=str(tty_log),
        )
        client.request("start", app="shell")
        client.request("wait", app="shell")
        for path in (app_log, tty_log):
            print(f"== {path}")
            for line in path.read_bytes().splitlines():
                print(line[:110].decode(errors="replace") + (" ..." if len(line) > 110 else ""))
        print("== status")
        for app in client.request("status")["apps"]:
            print(json.dumps({k: app[k] for k in ("app", "state", "exit_code", "reason", "log")}))
        client.request("shutdown")
        print("== monitor shut down")
    finally:
        client.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
