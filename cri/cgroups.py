"""cgroups for pods and containers: layout detection, paths, statistics, OOM.

The host may run cgroup v1 (a hierarchy per controller), v2 (one unified hierarchy) or
a hybrid of the two (v1 controllers, plus a controller-less v2 mount at
``/sys/fs/cgroup/unified`` that runc also populates).  :func:`detect_layout` reads
``/proc/self/mountinfo`` once and answers "which directory holds controller X of cgroup
Y"; the readers below only open files and return plain dataclasses, which the daemon
turns into CRI protobuf messages.

Paths come in two spellings.  What runc takes as ``linux.cgroupsPath`` depends on the
cgroup driver: a path such as ``/kubepods/burstable/pod<uid>/<id>`` for the cgroupfs
driver, ``kubepods-burstable-pod<uid>.slice:cri-rktlet:<id>`` for the systemd driver.
Readers take the path inside the hierarchy (``cgroup_dir(...)``), which for systemd
means the slice nesting systemd creates (``/kubepods.slice/kubepods-burstable.slice/…
/cri-rktlet-<id>.scope``).
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cri.errors import InvalidArgument

__all__ = [
    "DEFAULT_CGROUPFS_PARENT",
    "DEFAULT_SYSTEMD_PARENT",
    "SYSTEMD_SCOPE_PREFIX",
    "CgroupDriver",
    "CgroupLayout",
    "CgroupLimits",
    "CgroupMode",
    "CgroupMount",
    "CgroupDetail",
    "CgroupStats",
    "CpuStats",
    "MemoryStats",
    "PidsStats",
    "Psi",
    "PsiLine",
    "cgroup_dir",
    "cgroup_pids",
    "cgroups_path",
    "detect_layout",
    "expand_slice",
    "nano_cores",
    "oom_kill_count",
    "oom_killed",
    "parse_mountinfo",
    "parse_psi",
    "pod_cgroup_dir",
    "read_cpu",
    "read_detail",
    "read_memory",
    "read_pids",
    "read_stats",
    "remove_cgroup",
    "set_limits",
    "shares_to_weight",
    "working_set",
]

SYSTEMD_SCOPE_PREFIX = "cri-rktlet"
# Used when the CRI client names no parent (crictl without --cgroup-parent, say).
DEFAULT_CGROUPFS_PARENT = "/rktlet"
DEFAULT_SYSTEMD_PARENT = "rktlet.slice"

_V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)
# memory.limit_in_bytes reads as PAGE_COUNTER_MAX pages when unlimited (about 2**63);
# anything this large is no limit.
_UNLIMITED = 1 << 62
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CgroupMode(enum.Enum):
    V1 = "v1"
    V2 = "v2"
    HYBRID = "hybrid"


class CgroupDriver(enum.Enum):
    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"


# ------------------------------------------------------------------------------ layout


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One mounted hierarchy: where it is, and which cgroup appears at its top."""

    mountpoint: str
    root: str = "/"

    def path_of(self, cgroup: str) -> str:
        """The directory of ``cgroup`` (a path from the hierarchy's root) in this mount."""
        cgroup = "/" + cgroup.strip("/")
        if self.root not in ("", "/"):
            # Inside a cgroup namespace the mount shows a subtree; paths under it are
            # reachable, others are assumed to be relative to it already.
            if cgroup == self.root:
                cgroup = "/"
            elif cgroup.startswith(self.root + "/"):
                cgroup = cgroup[len(self.root) :]
        return self.mountpoint.rstrip("/") + (cgroup if cgroup != "/" else "")


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    mode: CgroupMode
    v1: Mapping[str, CgroupMount] = field(default_factory=dict)
    unified: CgroupMount | None = None

    def controller_root(self, controller: str) -> str | None:
        """The top directory holding ``controller`` (None when it is not mounted)."""
        if self.mode is CgroupMode.V2:
            return self.unified.mountpoint if self.unified is not None else None
        mount = self.v1.get(controller)
        return mount.mountpoint if mount is not None else None

    def controller_path(self, controller: str, cgroup: str) -> str | None:
        """The directory of ``cgroup`` that holds ``controller``'s files."""
        if self.mode is CgroupMode.V2:
            return self.unified.path_of(cgroup) if self.unified is not None else None
        mount = self.v1.get(controller)
        return mount.path_of(cgroup) if mount is not None else None

    def controllers(self) -> frozenset[str] | None:
        """The controllers a container's cgroup can use (None: the v2 root is unreadable).

        On a hybrid host runc puts every limit in the v1 hierarchies, so only those
        count, even when the unified mount offers a controller v1 left unmounted.
        """
        if self.mode is not CgroupMode.V2:
            return frozenset(name for name in self.v1 if not name.startswith("name="))
        text = _read_text(self.unified.mountpoint if self.unified else None, "cgroup.controllers")
        return frozenset(text.split()) if text is not None else None

    def unified_path(self, cgroup: str) -> str | None:
        return self.unified.path_of(cgroup) if self.unified is not None else None

    def all_paths(self, cgroup: str) -> list[str]:
        """``cgroup``'s directory in every mounted hierarchy (each listed once)."""
        seen: dict[str, None] = {}
        if self.mode is not CgroupMode.V2:
            for mount in self.v1.values():
                seen.setdefault(mount.path_of(cgroup))
        if self.unified is not None:
            seen.setdefault(self.unified.path_of(cgroup))
        return list(seen)


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> CgroupLayout:
    """The cgroup layout described by a ``/proc/<pid>/mountinfo`` text."""
    v1: dict[str, CgroupMount] = {}
    unified: list[CgroupMount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        fstype, superopts = tail[0], tail[2].split(",")
        mount = CgroupMount(mountpoint=mountpoint, root=root)
        if fstype == "cgroup2":
            unified.append(mount)
        elif fstype == "cgroup":
            for opt in superopts:
                if not (opt in _V1_CONTROLLERS or opt.startswith("name=")):
                    continue
                # The first mount wins, unless a later one shows the whole tree.
                if opt not in v1 or (v1[opt].root != "/" and root == "/"):
                    v1[opt] = mount
    chosen: CgroupMount | None = None
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        chosen = next((m for m in unified if m.mountpoint == preferred), None)
        if chosen is not None:
            break
    if chosen is None and unified:
        chosen = unified[0]
    if chosen is not None and (chosen.mountpoint == "/sys/fs/cgroup" or not v1):
        return CgroupLayout(CgroupMode.V2, {}, chosen)
    if not v1:
        raise OSError(errno.ENOENT, "no cgroup filesystem is mounted")
    mode = CgroupMode.HYBRID if chosen is not None else CgroupMode.V1
    return CgroupLayout(mode, v1, chosen)


def detect_layout(mountinfo: str = "/proc/self/mountinfo") -> CgroupLayout:
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


# ------------------------------------------------------------------------------- paths


def expand_slice(name: str, field: str = "linux.cgroup_parent") -> str:
    """systemd's nesting of a slice: ``a-b-c.slice`` → ``/a.slice/a-b.slice/a-b-c.slice``."""
    if name == "-.slice":
        return "/"
    if not name.endswith(".slice") or "/" in name:
        raise InvalidArgument(f"{field}: {name!r} is not a systemd slice name (x-y.slice)")
    stem = name[: -len(".slice")]
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise InvalidArgument(f"{field}: {name!r} is not a valid systemd slice name")
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def _check_parent(parent: str, driver: CgroupDriver, field: str) -> str:
    if driver is CgroupDriver.SYSTEMD:
        parent = parent or DEFAULT_SYSTEMD_PARENT
        expand_slice(parent, field)
        return parent
    parent = parent or DEFAULT_CGROUPFS_PARENT
    if any(part == ".." for part in parent.split("/")) or "\0" in parent:
        raise InvalidArgument(f"{field}: {parent!r} must not contain '..'")
    if parent.endswith(".slice") and "/" not in parent:
        raise InvalidArgument(
            f"{field}: {parent!r} is a systemd slice but the cgroup driver is cgroupfs"
        )
    return posixpath.normpath("/" + parent.lstrip("/"))


def cgroups_path(
    cgroup_parent: str,
    object_id: str,
    driver: CgroupDriver = CgroupDriver.CGROUPFS,
    *,
    field: str = "linux.cgroup_parent",
) -> str:
    """``linux.cgroupsPath`` for a sandbox or container ``object_id`` under the pod's parent."""
    if not _ID_RE.match(object_id):
        raise InvalidArgument(f"id {object_id!r} cannot name a cgroup")
    parent = _check_parent(cgroup_parent, driver, field)
    if driver is CgroupDriver.SYSTEMD:
        return f"{parent}:{SYSTEMD_SCOPE_PREFIX}:{object_id}"
    return posixpath.join(parent, object_id)


def cgroup_dir(path: str, driver: CgroupDriver = CgroupDriver.CGROUPFS) -> str:
    """The directory, inside each hierarchy, of a ``linux.cgroupsPath``."""
    if driver is CgroupDriver.CGROUPFS:
        return posixpath.normpath("/" + path.lstrip("/"))
    if path.count(":") != 2:
        if path.endswith(".slice"):
            return expand_slice(path)
        raise InvalidArgument(f"cgroups path {path!r} is not slice:prefix:name")
    slice_name, prefix, name = path.split(":")
    base = expand_slice(slice_name or "system.slice")
    if name.endswith(".slice"):
        # runc's rule: a name that is itself a slice is created as one, under the parent.
        return posixpath.join(base, expand_slice(name).rsplit("/", 1)[-1])
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return posixpath.join(base, unit)


def pod_cgroup_dir(cgroup_parent: str, driver: CgroupDriver = CgroupDriver.CGROUPFS) -> str:
    """The directory of the pod cgroup itself (for PodSandboxStats)."""
    parent = _check_parent(cgroup_parent, driver, "linux.cgroup_parent")
    if driver is CgroupDriver.SYSTEMD:
        return expand_slice(parent)
    return parent


# ------------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class CpuStats:
    """Cumulative CPU time; ``usage_nano_cores`` is filled from a previous sample."""

    timestamp_ns: int
    usage_core_ns: int
    usage_nano_cores: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """Memory use as the kubelet defines it (working set = usage - inactive file cache)."""

    timestamp_ns: int
    usage_bytes: int
    working_set_bytes: int
    rss_bytes: int
    page_faults: int
    major_page_faults: int
    limit_bytes: int | None = None
    available_bytes: int | None = None
    swap_usage_bytes: int | None = None
    swap_limit_bytes: int | None = None
    swap_available_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class PidsStats:
    timestamp_ns: int
    current: int
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class PsiLine:
    """One line of a ``*.pressure`` file; ``total_ns`` is converted from microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_ns: int


@dataclass(frozen=True, slots=True)
class Psi:
    some: PsiLine | None = None
    full: PsiLine | None = None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """Everything readable for one cgroup; a part is None when its controller is absent."""

    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    pids: PidsStats | None = None
    cpu_psi: Psi | None = None
    memory_psi: Psi | None = None
    io_psi: Psi | None = None


def _read_text(directory: str | None, name: str) -> str | None:
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, name), encoding="ascii") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        # A cgroup removed between listing and reading reads as ENODEV.
        if exc.errno in (errno.ENODEV, errno.ESRCH):
            return None
        raise


def _read_int(directory: str | None, name: str) -> int | None:
    text = _read_text(directory, name)
    if text is None:
        return None
    value = text.strip()
    if value == "max":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _read_keyed(directory: str | None, name: str) -> dict[str, int] | None:
    text = _read_text(directory, name)
    if text is None:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_psi(text: str) -> Psi:
    lines: dict[str, PsiLine] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        values = dict(p.split("=", 1) for p in pairs if "=" in p)
        try:
            lines[kind] = PsiLine(
                avg10=float(values["avg10"]),
                avg60=float(values["avg60"]),
                avg300=float(values["avg300"]),
                total_ns=int(values["total"]) * 1000,
            )
        except (KeyError, ValueError):
            continue
    return Psi(some=lines.get("some"), full=lines.get("full"))


def _limit(value: int | None) -> int | None:
    return value if value is not None and 0 < value < _UNLIMITED else None


def nano_cores(previous: CpuStats | None, current: CpuStats) -> int | None:
    """Average CPU use between two samples, in billionths of a core."""
    if previous is None:
        return None
    elapsed = current.timestamp_ns - previous.timestamp_ns
    used = current.usage_core_ns - previous.usage_core_ns
    if elapsed <= 0 or used < 0:
        return None
    return used * 1_000_000_000 // elapsed


def read_cpu(
    cgroup: str,
    layout: CgroupLayout,
    previous: CpuStats | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> CpuStats | None:
    now = clock()
    if layout.mode is CgroupMode.V2:
        stat = _read_keyed(layout.controller_path("cpu", cgroup), "cpu.stat")
        usage_us = stat.get("usage_usec") if stat is not None else None
        usage = usage_us * 1000 if usage_us is not None else None
    else:
        usage = _read_int(layout.controller_path("cpuacct", cgroup), "cpuacct.usage")
    if usage is None:
        return None
    sample = CpuStats(timestamp_ns=now, usage_core_ns=usage)
    cores = nano_cores(previous, sample)
    return sample if cores is None else CpuStats(now, usage, cores)


def read_memory(
    cgroup: str,
    layout: CgroupLayout,
    clock: Callable[[], int] = time.time_ns,
    *,
    swap: bool = True,
) -> MemoryStats | None:
    """The cgroup's memory figures; ``swap=False`` leaves the swap ones None unread."""
    now = clock()
    directory = layout.controller_path("memory", cgroup)
    swap_usage: int | None
    swap_limit: int | None
    if layout.mode is CgroupMode.V2:
        usage = _read_int(directory, "memory.current")
        stat = _read_keyed(directory, "memory.stat")
        if usage is None or stat is None:
            return None
        inactive, rss = stat.get("inactive_file", 0), stat.get("anon", 0)
        faults, major = stat.get("pgfault", 0), stat.get("pgmajfault", 0)
        limit = _limit(_read_int(directory, "memory.max"))
        swap_usage = _read_int(directory, "memory.swap.current") if swap else None
        swap_limit = _read_int(directory, "memory.swap.max") if swap else None
        swap_limit = swap_limit if swap_limit is not None and swap_limit < _UNLIMITED else None
    else:
        usage = _read_int(directory, "memory.usage_in_bytes")
        stat = _read_keyed(directory, "memory.stat")
        if usage is None or stat is None:
            return None
        # total_* include descendants (the pod cgroup's containers); plain keys do not.
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        rss = stat.get("total_rss", stat.get("rss", 0))
        faults = stat.get("total_pgfault", stat.get("pgfault", 0))
        major = stat.get("total_pgmajfault", stat.get("pgmajfault", 0))
        limit = _limit(_read_int(directory, "memory.limit_in_bytes"))
        memsw = _read_int(directory, "memory.memsw.usage_in_bytes") if swap else None
        swap_usage = max(memsw - usage, 0) if memsw is not None else None
        memsw_limit = _limit(_read_int(directory, "memory.memsw.limit_in_bytes")) if swap else None
        swap_limit = (
            max(memsw_limit - limit, 0) if memsw_limit is not None and limit is not None else None
        )
    working_set = max(usage - inactive, 0)
    available = max(limit - working_set, 0) if limit is not None else None
    swap_available = (
        max(swap_limit - swap_usage, 0)
        if swap_limit is not None and swap_usage is not None
        else None
    )
    return MemoryStats(
        timestamp_ns=now,
        usage_bytes=usage,
        working_set_bytes=working_set,
        rss_bytes=rss,
        page_faults=faults,
        major_page_faults=major,
        limit_bytes=limit,
        available_bytes=available,
        swap_usage_bytes=swap_usage,
        swap_limit_bytes=swap_limit,
        swap_available_bytes=swap_available,
    )


def read_pids(
    cgroup: str, layout: CgroupLayout, clock: Callable[[], int] = time.time_ns
) -> PidsStats | None:
    directory = layout.controller_path("pids", cgroup)
    current = _read_int(directory, "pids.current")
    if current is None:
        return None
    return PidsStats(clock(), current, _limit(_read_int(directory, "pids.max")))


def _read_psi(cgroup: str, layout: CgroupLayout, name: str) -> Psi | None:
    text = _read_text(layout.unified_path(cgroup), name)
    return parse_psi(text) if text is not None else None


def read_usage(
    cgroup: str,
    layout: CgroupLayout,
    *,
    previous_cpu: CpuStats | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> CgroupStats:
    """:func:`read_stats` without pids, pressure and swap: what the CRI stats calls report.

    Those calls are polled for every container of the node every few seconds; the
    files they would not use are over half of what :func:`read_stats` reads.
    """
    return CgroupStats(
        cpu=read_cpu(cgroup, layout, previous_cpu, clock),
        memory=read_memory(cgroup, layout, clock, swap=False),
    )


def read_stats(
    cgroup: str,
    layout: CgroupLayout | None = None,
    *,
    previous_cpu: CpuStats | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> CgroupStats:
    """CPU, memory, pids and pressure of ``cgroup`` (a :func:`cgroup_dir` path).

    Pass the caller's previous CpuStats for this cgroup to get ``usage_nano_cores``.
    A cgroup that does not exist yields a CgroupStats of Nones.
    """
    layout = layout if layout is not None else detect_layout()
    return CgroupStats(
        cpu=read_cpu(cgroup, layout, previous_cpu, clock),
        memory=read_memory(cgroup, layout, clock),
        pids=read_pids(cgroup, layout, clock),
        cpu_psi=_read_psi(cgroup, layout, "cpu.pressure"),
        memory_psi=_read_psi(cgroup, layout, "memory.pressure"),
        io_psi=_read_psi(cgroup, layout, "io.pressure"),
    )


@dataclass(frozen=True, slots=True)
class CgroupDetail:
    """The rest of what cAdvisor reports of a cgroup, read for the CRI metrics.

    ``values`` holds what the host has, by these keys (times in ns, sizes in bytes):
    ``cpu_user``, ``cpu_system``, ``cfs_periods``, ``cfs_throttled_periods``,
    ``cfs_throttled``, ``memory_cache``, ``memory_mapped_file``, ``memory_max_usage``,
    ``memory_failcnt``, ``spec_cpu_period``, ``spec_cpu_quota``, ``spec_cpu_shares``,
    ``spec_memory_reservation``, ``spec_memory_swap_limit``, ``threads``,
    ``threads_max``.  ``io`` maps a device ("8:0") to ``read_bytes``, ``write_bytes``,
    ``reads`` and ``writes``; ``pids`` are the cgroup's processes.
    """

    values: Mapping[str, int] = field(default_factory=dict)
    io: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    pids: tuple[int, ...] = ()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _put(values: dict[str, int], key: str, value: int | None) -> None:
    if value is not None:
        values[key] = value


def _read_io_v1(directory: str | None) -> dict[str, dict[str, int]]:
    io: dict[str, dict[str, int]] = {}
    for name, unit in (("io_service_bytes", "bytes"), ("io_serviced", "")):
        text = _read_text(directory, f"blkio.throttle.{name}_recursive")
        if text is None:
            text = _read_text(directory, f"blkio.throttle.{name}") or ""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[1] not in ("Read", "Write") or not parts[2].isdigit():
                continue
            key = ("read" if parts[1] == "Read" else "write") + ("_bytes" if unit else "s")
            io.setdefault(parts[0], {})[key] = int(parts[2])
    return io


def _read_io_v2(directory: str | None) -> dict[str, dict[str, int]]:
    keys = {"rbytes": "read_bytes", "wbytes": "write_bytes", "rios": "reads", "wios": "writes"}
    io: dict[str, dict[str, int]] = {}
    for line in (_read_text(directory, "io.stat") or "").splitlines():
        device, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in keys and value.isdigit():
                io.setdefault(device, {})[keys[key]] = int(value)
    return io


def read_detail(cgroup: str, layout: CgroupLayout) -> CgroupDetail:
    """:class:`CgroupDetail` of ``cgroup`` (a :func:`cgroup_dir` path)."""
    values: dict[str, int] = {}
    if layout.mode is CgroupMode.V2:
        directory = layout.unified_path(cgroup)
        cpu = _read_keyed(directory, "cpu.stat") or {}
        for key, ours in (("user_usec", "cpu_user"), ("system_usec", "cpu_system")):
            _put(values, ours, cpu[key] * 1000 if key in cpu else None)
        _put(values, "cfs_periods", cpu.get("nr_periods"))
        _put(values, "cfs_throttled_periods", cpu.get("nr_throttled"))
        throttled = cpu.get("throttled_usec")
        _put(values, "cfs_throttled", throttled * 1000 if throttled is not None else None)
        quota, _, period = (_read_text(directory, "cpu.max") or "").strip().partition(" ")
        if period.isdigit():
            values["spec_cpu_period"] = int(period)
            if quota.isdigit():
                values["spec_cpu_quota"] = int(quota)
        weight = _read_int(directory, "cpu.weight")
        if weight is not None:
            # cAdvisor reports v2 weights as the v1 shares they stand for.
            values["spec_cpu_shares"] = 2 + (weight - 1) * 262142 // 9999
        memory = _read_keyed(directory, "memory.stat") or {}
        _put(values, "memory_cache", memory.get("file"))
        _put(values, "memory_mapped_file", memory.get("file_mapped"))
        _put(values, "memory_max_usage", _read_int(directory, "memory.peak"))
        _put(values, "spec_memory_reservation", _limit(_read_int(directory, "memory.high")))
        _put(values, "spec_memory_swap_limit", _limit(_read_int(directory, "memory.swap.max")))
        io = _read_io_v2(directory)
    else:
        acct = layout.controller_path("cpuacct", cgroup)
        user, system = _read_int(acct, "cpuacct.usage_user"), _read_int(acct, "cpuacct.usage_sys")
        if user is None or system is None:
            ticks = _read_keyed(acct, "cpuacct.stat") or {}
            scale = 1_000_000_000 // _CLOCK_TICKS
            user = ticks["user"] * scale if "user" in ticks else None
            system = ticks["system"] * scale if "system" in ticks else None
        _put(values, "cpu_user", user)
        _put(values, "cpu_system", system)
        cpu_dir = layout.controller_path("cpu", cgroup)
        cpu = _read_keyed(cpu_dir, "cpu.stat") or {}
        _put(values, "cfs_periods", cpu.get("nr_periods"))
        _put(values, "cfs_throttled_periods", cpu.get("nr_throttled"))
        _put(values, "cfs_throttled", cpu.get("throttled_time"))
        _put(values, "spec_cpu_period", _read_int(cpu_dir, "cpu.cfs_period_us"))
        cfs_quota = _read_int(cpu_dir, "cpu.cfs_quota_us")
        if cfs_quota is not None and cfs_quota > 0:  # -1: no quota
            values["spec_cpu_quota"] = cfs_quota
        _put(values, "spec_cpu_shares", _read_int(cpu_dir, "cpu.shares"))
        mem_dir = layout.controller_path("memory", cgroup)
        memory = _read_keyed(mem_dir, "memory.stat") or {}
        _put(values, "memory_cache", memory.get("total_cache", memory.get("cache")))
        mapped = memory.get("total_mapped_file", memory.get("mapped_file"))
        _put(values, "memory_mapped_file", mapped)
        _put(values, "memory_max_usage", _read_int(mem_dir, "memory.max_usage_in_bytes"))
        _put(values, "memory_failcnt", _read_int(mem_dir, "memory.failcnt"))
        _put(
            values,
            "spec_memory_reservation",
            _limit(_read_int(mem_dir, "memory.soft_limit_in_bytes")),
        )
        memsw = _limit(_read_int(mem_dir, "memory.memsw.limit_in_bytes"))
        _put(values, "spec_memory_swap_limit", memsw)
        io = _read_io_v1(layout.controller_path("blkio", cgroup))
    pids_dir = layout.controller_path("pids", cgroup)
    _put(values, "threads", _read_int(pids_dir, "pids.current"))
    _put(values, "threads_max", _limit(_read_int(pids_dir, "pids.max")))
    return CgroupDetail(values, io, tuple(cgroup_pids(cgroup, layout)))


# --------------------------------------------------------------------------------- OOM


def oom_kill_count(cgroup: str, layout: CgroupLayout | None = None) -> int | None:
    """How many processes the OOM killer has killed in ``cgroup`` (None if it is gone).

    v1: ``oom_kill`` of ``memory.oom_control`` (Linux 4.13+); v2: ``oom_kill`` of
    ``memory.events``, which includes descendants.  Read it before ``runc delete``:
    the counter disappears with the cgroup.
    """
    layout = layout if layout is not None else detect_layout()
    directory = layout.controller_path("memory", cgroup)
    name = "memory.events" if layout.mode is CgroupMode.V2 else "memory.oom_control"
    values = _read_keyed(directory, name)
    if values is None:
        return None
    return values.get("oom_kill", 0)


def oom_killed(cgroup: str, layout: CgroupLayout | None = None, *, baseline: int = 0) -> bool:
    """Whether the OOM killer acted in ``cgroup`` since the count was ``baseline``."""
    count = oom_kill_count(cgroup, layout)
    return count is not None and count > baseline


# ------------------------------------------------------------------------------ manage


def cgroup_pids(cgroup: str, layout: CgroupLayout | None = None) -> list[int]:
    """Processes in ``cgroup`` itself (not its descendants), from the pids/memory controller."""
    layout = layout if layout is not None else detect_layout()
    for controller in ("pids", "memory", "cpu"):
        text = _read_text(layout.controller_path(controller, cgroup), "cgroup.procs")
        if text is not None:
            return [int(x) for x in text.split()]
    return []


def remove_cgroup(cgroup: str, layout: CgroupLayout | None = None) -> list[str]:
    """rmdir ``cgroup`` in every hierarchy; returns the directories still present.

    For cleaning up after a runtime that died before ``runc delete`` could; a cgroup
    with processes (or children) stays and is reported.
    """
    layout = layout if layout is not None else detect_layout()
    left = []
    for path in layout.all_paths(cgroup):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            left.append(path)
    return left


# ------------------------------------------------------------------------------ limits


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """CPU and memory limits of a cgroup; None leaves (or reads as) no setting.

    ``cpu_quota`` -1 means no quota.
    """

    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    memory_limit: int | None = None


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) as v2 cpu.weight (1..10000), as runc converts."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def working_set(cgroup: str, layout: CgroupLayout) -> int | None:
    """Memory the cgroup cannot give back without swap: usage less inactive file cache."""
    stats = read_memory(cgroup, layout)
    return stats.working_set_bytes if stats is not None else None


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w", encoding="ascii") as f:
        f.write(value)


def set_limits(cgroup: str, layout: CgroupLayout, limits: CgroupLimits) -> None:
    """Write ``limits`` to the cgroup's files (v1 controllers, or v2 on a v2 host).

    A hybrid host keeps its limits in the v1 controllers, as runc does.  Raises OSError
    (ENOENT when the cgroup or controller is missing, EBUSY from v1 when memory cannot
    be reclaimed below a new limit).
    """
    if layout.mode is CgroupMode.V2:
        directory = layout.unified_path(cgroup)
        if directory is None:
            raise OSError(errno.ENOENT, f"cgroup {cgroup}: no unified hierarchy")
        if limits.cpu_shares is not None:
            _write(directory, "cpu.weight", str(shares_to_weight(limits.cpu_shares)))
        if limits.cpu_quota is not None or limits.cpu_period is not None:
            current = (_read_text(directory, "cpu.max") or "max 100000").split()
            quota = current[0] if limits.cpu_quota is None else str(limits.cpu_quota)
            if quota == "-1":
                quota = "max"
            period = current[1] if limits.cpu_period is None else str(limits.cpu_period)
            _write(directory, "cpu.max", f"{quota} {period}")
        if limits.memory_limit is not None:
            _write(directory, "memory.max", str(limits.memory_limit))
        return
    cpu = layout.controller_path("cpu", cgroup)
    if cpu is not None:
        if limits.cpu_shares is not None:
            _write(cpu, "cpu.shares", str(limits.cpu_shares))
        # The period first: a quota is checked against the period in force.
        if limits.cpu_period is not None:
            _write(cpu, "cpu.cfs_period_us", str(limits.cpu_period))
        if limits.cpu_quota is not None:
            _write(cpu, "cpu.cfs_quota_us", str(limits.cpu_quota))
    memory = layout.controller_path("memory", cgroup)
    if limits.memory_limit is not None and memory is not None:
        memsw = _read_int(memory, "memory.memsw.limit_in_bytes")
        if memsw is not None and memsw < limits.memory_limit:
            # memory+swap may never be below memory: raise it first.
            _write(memory, "memory.memsw.limit_in_bytes", str(limits.memory_limit))
        _write(memory, "memory.limit_in_bytes", str(limits.memory_limit))
