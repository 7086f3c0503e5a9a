"""Shared fixtures: real monitors in temporary run directories."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iottymux.control import ControlClient
from iottymux.monitor_cmd import start_detached

REPO = Path(__file__).resolve().parent.parent


def start_monitor(run_dir: Path) -> int:
    """Start a detached monitor the way rktlet does; return its pid."""
    return start_detached(str(run_dir))


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    result: list[int] = []

    def walk(p: int) -> None:
        for child in children.get(p, []):
            walk(child)
        result.append(p)

    walk(pid)
    return result


def kill_tree(pid: int) -> None:
    for p in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@pytest.fixture
def monitors() -> Iterator[list[int]]:
    """Pids of monitors a test started; each is shut down (or killed) at the end."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            kill_tree(pid)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


class MonitorHandle:
    """A running monitor, its run dir and a control client."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        self.run_dir = run_dir
        self.pid = pid
        self.control_path = str(run_dir / "control.sock")
        self.client = ControlClient(self.control_path)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.client.request(op, **fields)

    def new_client(self) -> ControlClient:
        return ControlClient(self.control_path)

    def run_app(self, name: str, command: list[str], **fields: Any) -> dict[str, Any]:
        """Add, start and wait for an app; return its final status."""
        self.request("add", app=name, command=command, **fields)
        self.request("start", app=name)
        return self.request("wait", app=name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.request("shutdown")
        self.client.close()
        kill_tree(self.pid)


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[MonitorHandle]:
    run_dir = tmp_path / "run"
    handle = MonitorHandle(run_dir, start_monitor(run_dir))
    try:
        yield handle
    finally:
        handle.stop()
