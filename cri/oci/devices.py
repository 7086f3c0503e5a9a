"""Host device nodes as OCI ``linux.devices`` entries and cgroup device rules."""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any

from cri.errors import InvalidArgument

__all__ = ["DeviceNode", "device_nodes", "host_devices"]

_PERMISSIONS = frozenset("rwm")
# runc creates these itself for every container (and allows them in the device cgroup).
RUNTIME_DEFAULT_DEVICES = frozenset(
    {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
)
# Filesystems of their own inside every container's /dev, never copied from the host.
_SKIP_DIRS = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages")


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str  # inside the container
    kind: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    access: str

    def spec_entry(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.kind,
            "major": self.major,
            "minor": self.minor,
            "fileMode": self.file_mode,
            "uid": self.uid,
            "gid": self.gid,
        }

    def cgroup_rule(self) -> dict[str, Any]:
        return {
            "allow": True,
            "type": self.kind,
            "major": self.major,
            "minor": self.minor,
            "access": self.access,
        }


def _node(path: str, st: os.stat_result, container_path: str, access: str) -> DeviceNode | None:
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(
        path=container_path,
        kind=kind,
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
        file_mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        access=access,
    )


def _check_permissions(permissions: str, field: str) -> str:
    if not permissions:
        return "rwm"
    if not set(permissions) <= _PERMISSIONS or len(set(permissions)) != len(permissions):
        raise InvalidArgument(f"{field}: {permissions!r} must be a combination of r, w and m")
    return permissions


def device_nodes(
    host_path: str, container_path: str, permissions: str, field: str
) -> list[DeviceNode]:
    """The device(s) a CRI ``Device`` names: one node, or every node under a directory.

    A directory is mapped recursively with its layout kept under ``container_path``
    (``/dev/snd`` → ``/dev/snd/*``), as GPU and sound setups expect.
    """
    access = _check_permissions(permissions, f"{field}.permissions")
    if not host_path or not posixpath.isabs(host_path):
        raise InvalidArgument(f"{field}.host_path: {host_path!r} must be an absolute path")
    target = container_path or host_path
    if not posixpath.isabs(target) or ".." in target.split("/"):
        raise InvalidArgument(f"{field}.container_path: {target!r} must be an absolute path")
    target = posixpath.normpath(target)
    try:
        st = os.stat(host_path)
    except OSError as exc:
        raise InvalidArgument(f"{field}.host_path: {host_path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        nodes = []
        for dirpath, dirnames, filenames in os.walk(host_path):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    sub = os.lstat(full)
                except OSError:
                    continue
                rel = os.path.relpath(full, host_path)
                node = _node(full, sub, posixpath.join(target, rel), access)
                if node is not None:
                    nodes.append(node)
        return nodes
    node = _node(host_path, st, target, access)
    if node is None:
        raise InvalidArgument(f"{field}.host_path: {host_path} is not a device node")
    return [node]


def host_devices(root: str = "/dev") -> list[DeviceNode]:
    """Every device node of the host (for privileged containers), runc's own excluded."""
    nodes = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in _SKIP_DIRS)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if full in RUNTIME_DEFAULT_DEVICES or full in ("/dev/console", "/dev/ptmx"):
                continue
            try:
                st = os.lstat(full)
            except OSError:
                continue
            node = _node(full, st, full, "rwm")
            if node is not None:
                nodes.append(node)
    return nodes
