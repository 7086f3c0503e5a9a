"""Driving an OCI runtime (runc, crun) from the monitor.

The monitor plays the part of rkt's stage1 for OCI containers: it owns the
container's stdio and runs ``<runtime> create`` with the app's pipes as the
runtime's own stdio, which the runtime passes on to the container's init.  For
a tty container the runtime creates the pty and sends its master back over a
console socket (SCM_RIGHTS) that the monitor listens on.  When ``create``
exits, the container's init is re-parented to the monitor (a subreaper), which
then reaps it like any app.

Runtime errors go to a JSON log file (``--log --log-format json``), not to the
container's stdio, so they never end up in the container's CRI log.
"""

from __future__ import annotations

import json
import os
import socket

from iottymux.control import invalid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class OciSpec:
    """Where a container's bundle is and how to reach its runtime."""

    __slots__ = ("bundle", "id", "log", "root", "runtime")

    def __init__(self, runtime: str, root: str, bundle: str, container_id: str, log: str) -> None:
        self.runtime = runtime
        self.root = root
        self.bundle = bundle
        self.id = container_id
        self.log = log

    @classmethod
    def from_request(cls, value: Any) -> OciSpec:
        """Validate the ``oci`` object of an ``add`` request."""
        if not isinstance(value, dict):
            raise invalid("oci: must be an object with runtime, root, bundle and id")
        runtime = value.get("runtime")
        if not isinstance(runtime, str) or not runtime:
            raise invalid("oci.runtime: the OCI runtime binary (runc, crun) is required")
        fields: dict[str, str] = {}
        for name in ("root", "bundle"):
            path = value.get(name)
            if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
                raise invalid(f"oci.{name}: must be an absolute path")
            fields[name] = os.path.normpath(path)
        if not os.path.isfile(os.path.join(fields["bundle"], "config.json")):
            raise invalid(f"oci.bundle: {fields['bundle']!r} holds no config.json")
        container_id = value.get("id")
        if (
            not isinstance(container_id, str)
            or not 0 < len(container_id) <= 1024
            or not set(container_id) <= _ID_CHARS
        ):
            raise invalid("oci.id: must be 1-1024 characters of [A-Za-z0-9_.-]")
        log = value.get("log") or os.path.join(fields["bundle"], "runtime.log")
        if not isinstance(log, str) or not log.startswith("/"):
            raise invalid("oci.log: must be an absolute path")
        return cls(runtime, fields["root"], fields["bundle"], container_id, log)

    def as_dict(self) -> dict[str, str]:
        return {
            "runtime": self.runtime,
            "root": self.root,
            "bundle": self.bundle,
            "id": self.id,
            "log": self.log,
        }

    @property
    def pid_file(self) -> str:
        return os.path.join(self.bundle, "init.pid")

    def _base(self) -> list[str]:
        return [self.runtime, "--root", self.root, "--log", self.log, "--log-format", "json"]

    def create_argv(self, console_socket: str | None) -> list[str]:
        argv = [*self._base(), "create", "--bundle", self.bundle, "--pid-file", self.pid_file]
        if console_socket is not None:
            argv += ["--console-socket", console_socket]
        return [*argv, self.id]

    def start_argv(self) -> list[str]:
        return [*self._base(), "start", self.id]

    def delete_argv(self) -> list[str]:
        return [*self._base(), "delete", "--force", self.id]

    def read_pid(self) -> int:
        with open(self.pid_file, "rb") as f:
            return int(f.read().strip())

    def last_error(self, since: int = 0) -> str:
        """The runtime's last error message from its JSON log (from offset ``since``)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(since)
                lines = f.read().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                return str(entry.get("msg", ""))
        return ""

    def log_size(self) -> int:
        try:
            return os.stat(self.log).st_size
        except OSError:
            return 0


def receive_console(listener: socket.socket) -> int | None:
    """Take the pty master a runtime sends over the console socket, if it has."""
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return None
    with conn:
        conn.setblocking(True)
        conn.settimeout(5.0)
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    if not fds:
        return None
    master = fds[0]
    os.set_inheritable(master, False)
    os.set_blocking(master, False)
    return master
