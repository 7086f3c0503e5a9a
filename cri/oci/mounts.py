"""Container mounts: the standard pseudo-filesystems, pod files and CRI volume mounts."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_READONLY_PATHS",
    "cri_mounts",
    "mount_propagation",
    "standard_mounts",
]

# Kernel interfaces that leak host information or allow host-wide actions; hidden or made
# read-only in every unprivileged container (the same lists containerd and Docker use).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def _mount(dest: str, mtype: str, source: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": dest, "type": mtype, "source": source, "options": list(options)}


def standard_mounts(
    *,
    privileged: bool,
    shm_path: str | None,
    shm_size: int = 64 << 20,
) -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and /sys/fs/cgroup."""
    ro = [] if privileged else ["ro"]
    mounts = [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
    ]
    if shm_path:
        # The pod's /dev/shm, shared by its containers as their IPC namespace is.
        mounts.append(_mount("/dev/shm", "bind", shm_path, ["rbind", "rprivate", "rw"]))
    else:
        mounts.append(
            _mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"],
            )
        )
    mounts += [
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro]),
    ]
    # runc mounts this as cgroup2, or emulates the v1 hierarchies, to match the host.
    cgroup_opts = ["nosuid", "noexec", "nodev", "relatime", *ro]
    mounts.append(_mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_opts))
    return mounts


def mount_propagation(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """ "shared", "slave" or "private": the propagation of the mount holding ``path``."""
    real = os.path.realpath(path)
    best: tuple[int, str] = (-1, "private")
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, _ = line.partition(" - ")
            fields = left.split()
            if len(fields) < 6:
                continue
            point = fields[4].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/") or point == "/"
            # The last mount at the longest matching point is the one that is visible.
            if inside and len(point) >= best[0]:
                optional = fields[6:]
                kind = "private"
                if any(o.startswith("shared:") for o in optional):
                    kind = "shared"
                elif any(o.startswith("master:") for o in optional):
                    kind = "slave"
                best = (len(point), kind)
    return best[1]


def _clean_destination(path: str, field: str) -> str:
    if not path or not posixpath.isabs(path):
        raise InvalidArgument(f"{field}: {path!r} must be an absolute path")
    if ".." in path.split("/") or "\0" in path:
        raise InvalidArgument(f"{field}: {path!r} must not contain '..'")
    return posixpath.normpath(path)


def _check_rro(m: api_pb2.Mount, field: str, rro_unsupported: str) -> None:
    if not m.readonly:
        raise InvalidArgument(f"{field}.recursive_read_only: needs readonly to be set too")
    if m.propagation != api_pb2.PROPAGATION_PRIVATE:
        raise InvalidArgument(
            f"{field}.recursive_read_only: needs propagation PROPAGATION_PRIVATE, not "
            f"{api_pb2.MountPropagation.Name(m.propagation)}"
        )
    if rro_unsupported:
        raise FailedPrecondition(
            f"{field}.recursive_read_only: not supported on this node: {rro_unsupported}"
        )


def cri_mounts(
    mounts: Sequence[api_pb2.Mount],
    *,
    propagation_of: Callable[[str], str] = mount_propagation,
    sources: Mapping[int, str] | None = None,
    rro_unsupported: str = "",
) -> tuple[list[dict[str, Any]], str | None]:
    """CRI volume mounts as OCI bind mounts, plus the rootfs propagation they need.

    Parents are ordered before children so that a volume inside another volume is
    mounted on top of it.  ``selinux_relabel`` is accepted and ignored (no SELinux here).
    ``sources`` replaces the host path of mount ``i`` by what the daemon prepared for it:
    an image volume's root filesystem (``image``, always read-only) or an idmapped copy
    of the host path (``uidMappings``); either needs one.  ``rro_unsupported`` says why
    ``recursive_read_only`` cannot be honoured here ("" when it can).
    Returns (mounts, rootfs propagation or None to keep the runtime's default).
    """
    prepared = sources or {}
    out: list[tuple[int, int, dict[str, Any]]] = []
    rootfs_propagation: str | None = None
    for i, m in enumerate(mounts):
        field = f"mounts[{i}]"
        dest = _clean_destination(m.container_path, f"{field}.container_path")
        if m.image.image:
            if m.host_path:
                raise InvalidArgument(f"{field}.host_path: must be empty for an image volume")
            if i not in prepared:
                raise FailedPrecondition(f"{field}.image: the image volume was not prepared")
            depth = len([p for p in dest.split("/") if p])
            options = ["rbind", "rprivate", "ro"]
            out.append((depth, i, _mount(dest, "bind", prepared[i], options)))
            continue
        if m.image_sub_path:
            raise InvalidArgument(f"{field}.image_sub_path: only valid with an image")
        if (len(m.uidMappings) or len(m.gidMappings)) and i not in prepared:
            raise FailedPrecondition(f"{field}.uidMappings: the idmapped mount was not prepared")
        if m.recursive_read_only:
            _check_rro(m, field, rro_unsupported)
        if not m.host_path or not posixpath.isabs(m.host_path):
            raise InvalidArgument(f"{field}.host_path: {m.host_path!r} must be an absolute path")
        if not os.path.exists(m.host_path):
            raise InvalidArgument(f"{field}.host_path: {m.host_path} does not exist")
        propagation = _PROPAGATION.get(m.propagation)
        if propagation is None:
            raise InvalidArgument(f"{field}.propagation: unknown value {m.propagation}")
        if propagation != "rprivate":
            actual = propagation_of(m.host_path)
            if propagation == "rshared" and actual != "shared":
                raise InvalidArgument(
                    f"{field}.propagation: Bidirectional needs {m.host_path} on a shared "
                    f"mount, but it is {actual}"
                )
            if propagation == "rslave" and actual not in ("shared", "slave"):
                raise InvalidArgument(
                    f"{field}.propagation: HostToContainer needs {m.host_path} on a shared "
                    f"or slave mount, but it is {actual}"
                )
            if propagation == "rshared":
                rootfs_propagation = "rshared"
            elif rootfs_propagation is None:
                rootfs_propagation = "rslave"
        options = ["rbind", propagation, "ro" if m.readonly else "rw"]
        if m.recursive_read_only:
            options.append("rro")
        depth = len([p for p in dest.split("/") if p])
        source = prepared.get(i, m.host_path)
        out.append((depth, i, _mount(dest, "bind", source, options)))
    out.sort(key=lambda t: (t[0], t[1]))
    return [m for _, _, m in out], rootfs_propagation
