"""Writing the monitor's state file atomically.

The file is the durable record of each app's life (pid, start, exit): a daemon
that restarts, or an operator, reads it even when the monitor is gone.  It is
replaced with write + fsync + rename + directory fsync, so a reader sees either
the old or the new version, never a torn one, and a crash right after an exit
was reported cannot lose that exit.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


STATE_VERSION = 1


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_state(path: str, state: dict[str, Any]) -> None:
    payload = {"version": STATE_VERSION, **state}
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n")


def read_state(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        state: dict[str, Any] = json.load(f)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: unknown state version {state.get('version')!r}")
    return state
