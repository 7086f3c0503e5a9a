"""Facts about the host that shape every spec: detected once, passed explicitly.

Spec building never probes the machine on its own for these; the daemon detects a
:class:`HostInfo` at start-up and hands it in, and tests construct one by hand.  That
keeps :func:`cri.oci.spec.build_container_spec` deterministic.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
from dataclasses import dataclass

from cri.oci.capabilities import ALL_CAPABILITIES, host_capabilities

__all__ = ["APPARMOR_ENABLED_PATH", "HUGEPAGES_DIR", "HostInfo", "detect_host", "hugepage_sizes"]

APPARMOR_ENABLED_PATH = "/sys/module/apparmor/parameters/enabled"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What the OCI runtime can actually do here.

    ``capabilities``: what runc may grant (its caller's permitted set).
    ``apparmor_enabled``: the LSM is on (``APPARMOR_ENABLED_PATH`` says ``Y``).
    ``cgroup_v2``: ``/sys/fs/cgroup`` is the unified hierarchy, so runc takes cgroup v2
    settings (``linux.resources.unified``); a hybrid host counts as v1 here.
    ``swap_accounting``: ``memory.swap`` limits can be set.
    ``nofile_hard``: the highest RLIMIT_NOFILE hard limit the container may get.
    ``min_oom_score_adj``: the lowest ``oom_score_adj`` a child may be given — without
    CAP_SYS_RESOURCE, runc fails outright when asked to go below its own value.
    ``cgroup_controllers``: the controllers runc can put a container's limits in (the
    mounted v1 hierarchies on a v1 or hybrid host, the root's ``cgroup.controllers`` on
    v2); None when unknown, taken as "all of them".
    ``hugepage_sizes``: the huge page sizes the kernel offers, spelt as runc spells them
    (``2MB``, ``1GB``); None when unknown.
    """

    capabilities: frozenset[str] = frozenset(ALL_CAPABILITIES)
    apparmor_enabled: bool = False
    machine: str = "x86_64"
    cgroup_v2: bool = False
    swap_accounting: bool = True
    nofile_hard: int = 1048576
    min_oom_score_adj: int = -1000
    cgroup_controllers: frozenset[str] | None = None
    hugepage_sizes: frozenset[str] | None = None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def apparmor_enabled(path: str = APPARMOR_ENABLED_PATH) -> bool:
    value = _read(path)
    return value is not None and value.strip().upper().startswith("Y")


def hugepage_sizes(directory: str = HUGEPAGES_DIR) -> frozenset[str]:
    """Page sizes under ``/sys/kernel/mm/hugepages`` (``hugepages-2048kB`` → ``2MB``)."""
    sizes = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return frozenset()
    for name in names:
        if not (name.startswith("hugepages-") and name.endswith("kB")):
            continue
        digits = name[len("hugepages-") : -len("kB")]
        if not digits.isdigit():
            continue
        size, unit = int(digits), "KB"
        # runc (and the kubelet) name a size in the largest unit that divides it.
        for bigger in ("MB", "GB", "TB"):
            if size % 1024:
                break
            size, unit = size // 1024, bigger
        sizes.add(f"{size}{unit}")
    return frozenset(sizes)


@functools.cache
def detect_host() -> HostInfo:
    """Probe this machine (cached: these facts do not change while the daemon runs)."""
    # Imported here so that cri.cgroups stays importable without the oci package.
    from cri.cgroups import CgroupMode, detect_layout

    caps = host_capabilities()
    layout = detect_layout()
    swap = True
    controllers = layout.controllers()
    if layout.mode is not CgroupMode.V2:
        memory = layout.controller_root("memory")
        swap = memory is not None and os.path.exists(
            os.path.join(memory, "memory.memsw.limit_in_bytes")
        )
    soft_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if "CAP_SYS_RESOURCE" in caps:
        nr_open = _read("/proc/sys/fs/nr_open")
        nofile_hard = int(nr_open) if nr_open and nr_open.strip().isdigit() else soft_hard
        min_adj = -1000
    else:
        nofile_hard = soft_hard
        current = _read("/proc/self/oom_score_adj")
        min_adj = int(current) if current and current.strip().lstrip("-").isdigit() else 0
    if nofile_hard == resource.RLIM_INFINITY:
        nofile_hard = 1 << 20
    return HostInfo(
        capabilities=caps,
        apparmor_enabled=apparmor_enabled(),
        machine=platform.machine().lower(),
        cgroup_v2=layout.mode is CgroupMode.V2,
        swap_accounting=swap,
        nofile_hard=nofile_hard,
        min_oom_score_adj=min_adj,
        cgroup_controllers=controllers,
        hugepage_sizes=hugepage_sizes(),
    )
