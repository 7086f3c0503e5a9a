"""CRI LinuxContainerResources → OCI ``linux.resources``, and sysctl validation.

The same conversion feeds container creation and ``runc update`` (for
UpdateContainerResources), so that a value accepted at creation is accepted on update.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cri.api import api_pb2
from cri.errors import InvalidArgument
from cri.oci.host import HostInfo

__all__ = ["check_sysctls", "linux_resources", "oom_score_adj"]

_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE_RE = re.compile(r"^\d+(KB|MB|GB|TB|PB)$")
_UNIFIED_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]+$")
_SYSCTL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./\-]*$")

# Sysctls that live in a namespace the pod owns; any other would change the host.
_IPC_SYSCTLS = frozenset(
    {
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
    }
)
_UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})

Warn = Callable[[str], None]


def _cpuset(value: str, field: str) -> str:
    value = value.replace(" ", "")
    if not _CPUSET_RE.match(value):
        raise InvalidArgument(f"{field}: {value!r} is not a CPU or memory node list like 0-3,5")
    return value


def linux_resources(
    res: api_pb2.LinuxContainerResources,
    host: HostInfo,
    *,
    field: str = "linux.resources",
    warn: Warn | None = None,
) -> dict[str, Any]:
    """The ``linux.resources`` object (without device rules) for ``res``.

    Zero means "not set" for every CRI number, as the kubelet sends them.  Swap follows the
    kubelet's convention: ``memory_swap_limit_in_bytes`` is memory plus swap (like the OCI
    ``memory.swap``), 0 with a memory limit means no swap at all, -1 unlimited swap.
    Settings the host cannot take are dropped rather than failing the container (the
    kubelet sends hugepage limits with every container, whether or not the host has the
    hugetlb controller): limits of a cgroup controller the host lacks, huge page sizes
    the kernel does not offer, swap limits without swap accounting, cgroup v2
    ``unified`` keys on v1.  ``warn`` hears of them once per call, in one message.
    """
    dropped: list[str] = []
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares < 0:
        raise InvalidArgument(f"{field}.cpu_shares: {res.cpu_shares} is negative")
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        if res.cpu_quota != -1 and res.cpu_quota < 1000:
            raise InvalidArgument(
                f"{field}.cpu_quota: {res.cpu_quota} is below the kernel's 1000 µs minimum"
            )
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        if not 1000 <= res.cpu_period <= 1_000_000:
            raise InvalidArgument(f"{field}.cpu_period: {res.cpu_period} is not 1000..1000000 µs")
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = _cpuset(res.cpuset_cpus, f"{field}.cpuset_cpus")
    if res.cpuset_mems:
        cpu["mems"] = _cpuset(res.cpuset_mems, f"{field}.cpuset_mems")
    if cpu:
        out["cpu"] = cpu

    memory: dict[str, Any] = {}
    limit, swap = res.memory_limit_in_bytes, res.memory_swap_limit_in_bytes
    if limit < 0:
        raise InvalidArgument(f"{field}.memory_limit_in_bytes: {limit} is negative")
    if swap < -1:
        raise InvalidArgument(f"{field}.memory_swap_limit_in_bytes: {swap} is not valid")
    if limit:
        memory["limit"] = limit
    if swap > 0 and limit and swap < limit:
        raise InvalidArgument(
            f"{field}.memory_swap_limit_in_bytes: {swap} is below the memory limit {limit} "
            "(it counts memory plus swap)"
        )
    wanted_swap: int | None = None
    if swap:
        wanted_swap = swap
    elif limit:
        wanted_swap = limit
    if wanted_swap is not None and limit:
        if host.swap_accounting:
            memory["swap"] = wanted_swap
        elif swap:
            dropped.append("memory_swap_limit_in_bytes (swap accounting is off)")
    if memory:
        out["memory"] = memory

    hugepages = []
    for i, h in enumerate(res.hugepage_limits):
        if not _PAGE_SIZE_RE.match(h.page_size):
            raise InvalidArgument(
                f"{field}.hugepage_limits[{i}].page_size: {h.page_size!r} is not like 2MB"
            )
        if host.hugepage_sizes is not None and h.page_size not in host.hugepage_sizes:
            dropped.append(f"hugepage_limits[{i}] (the kernel has no {h.page_size} pages)")
            continue
        hugepages.append({"pageSize": h.page_size, "limit": h.limit})
    if hugepages:
        out["hugepageLimits"] = hugepages

    if res.unified:
        unified: dict[str, str] = {}
        for key in sorted(res.unified):
            value = res.unified[key]
            if not _UNIFIED_KEY_RE.match(key) or "\n" in value:
                raise InvalidArgument(f"{field}.unified[{key}]: not a cgroup v2 file setting")
            unified[key] = value
        if host.cgroup_v2:
            out["unified"] = unified
        else:
            dropped.append(f"unified {sorted(unified)} (the host does not run cgroup v2)")
    dropped += _drop_missing_controllers(out, host.cgroup_controllers)
    if dropped and warn is not None:
        warn(f"{field}: not applied, this host cannot take them: {'; '.join(dropped)}")
    return out


# Which controller takes each setting of ``linux.resources`` (by key, then sub-key).
_CONTROLLERS: dict[str, str | dict[str, str]] = {
    "cpu": {
        "shares": "cpu",
        "quota": "cpu",
        "period": "cpu",
        "cpus": "cpuset",
        "mems": "cpuset",
    },
    "memory": "memory",
    "hugepageLimits": "hugetlb",
}
# The CRI names of those settings, for the warning.
_CRI_NAMES = {
    "shares": "cpu_shares",
    "quota": "cpu_quota",
    "period": "cpu_period",
    "cpus": "cpuset_cpus",
    "mems": "cpuset_mems",
    "memory": "memory_limit_in_bytes",
    "hugepageLimits": "hugepage_limits",
}


def _drop_missing_controllers(out: dict[str, Any], available: frozenset[str] | None) -> list[str]:
    """Remove from ``out`` what needs a controller not in ``available``; say what went.

    runc fails the whole container ("container could not join or create cgroup") when a
    limit names a controller it has no hierarchy for.
    """
    if available is None:
        return []
    dropped: list[str] = []
    for key, controller in _CONTROLLERS.items():
        if key not in out:
            continue
        if isinstance(controller, str):
            if controller not in available:
                del out[key]
                dropped.append(f"{_CRI_NAMES[key]} (no {controller} controller)")
            continue
        section = out[key]
        for sub, needed in controller.items():
            if sub in section and needed not in available:
                del section[sub]
                dropped.append(f"{_CRI_NAMES[sub]} (no {needed} controller)")
        if not section:
            del out[key]
    return dropped


def oom_score_adj(
    value: int, host: HostInfo, *, field: str = "linux.resources", warn: Warn | None = None
) -> int:
    """``value`` clamped to what the runtime can set on this host."""
    if not -1000 <= value <= 1000:
        raise InvalidArgument(f"{field}.oom_score_adj: {value} is not -1000..1000")
    if value < host.min_oom_score_adj:
        if warn is not None:
            warn(
                f"{field}.oom_score_adj: {value} raised to {host.min_oom_score_adj}: the "
                "runtime lacks CAP_SYS_RESOURCE to lower it further"
            )
        return host.min_oom_score_adj
    return value


def check_sysctls(
    sysctls: Mapping[str, str],
    *,
    host_network: bool,
    host_ipc: bool,
    host_uts: bool,
    field: str = "linux.sysctls",
) -> dict[str, str]:
    """Validate pod sysctls: only namespaced ones, and only in namespaces the pod owns."""
    out: dict[str, str] = {}
    for name in sorted(sysctls):
        value = sysctls[name]
        where = f"{field}[{name}]"
        # Empty components ("a..b", "a/", "a./..") are how a name escapes /proc/sys.
        if not _SYSCTL_RE.match(name) or "" in re.split(r"[./]", name):
            raise InvalidArgument(f"{where}: not a sysctl name")
        if "\n" in value or "\0" in value:
            raise InvalidArgument(f"{where}: value must be a single line")
        # "net/ipv4/ip_forward" is the same key as "net.ipv4.ip_forward".
        dotted = name.replace("/", ".") if "." not in name else name
        if dotted in _IPC_SYSCTLS or dotted.startswith("fs.mqueue."):
            if host_ipc:
                raise InvalidArgument(f"{where}: IPC sysctls cannot be set with host IPC")
        elif dotted.startswith("net."):
            if host_network:
                raise InvalidArgument(f"{where}: net sysctls cannot be set with host network")
        elif dotted in _UTS_SYSCTLS:
            if host_uts:
                raise InvalidArgument(f"{where}: UTS sysctls cannot be set with host network")
        else:
            raise InvalidArgument(f"{where}: not a namespaced sysctl, it would change the host")
        out[dotted] = value
    return out
