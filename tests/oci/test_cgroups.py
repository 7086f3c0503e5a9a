"""cri.cgroups: layouts from mountinfo, path spellings, stats and OOM from cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri import cgroups
from cri.cgroups import (
    CgroupDriver,
    CgroupLayout,
    CgroupMode,
    CgroupMount,
    CpuStats,
)
from cri.errors import InvalidArgument

HYBRID = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = """\
24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
V1_COMOUNTED = """\
31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory
"""
IN_CGROUP_NS = """\
32 31 0:29 /kubepods/pod1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 31 0:30 / /host\\040cgroup/memory rw - cgroup cgroup rw,memory
"""


@pytest.mark.parametrize(
    ("text", "mode", "memory_root", "cpuacct_root", "unified"),
    [
        pytest.param(
            HYBRID,
            CgroupMode.HYBRID,
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpuacct",
            "/sys/fs/cgroup/unified",
            id="hybrid",
        ),
        pytest.param(
            V2, CgroupMode.V2, "/sys/fs/cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", id="v2"
        ),
        pytest.param(
            V1_COMOUNTED,
            CgroupMode.V1,
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/cpu,cpuacct",
            None,
            id="v1-comounted",
        ),
    ],
)
def test_parse_mountinfo(
    text: str, mode: CgroupMode, memory_root: str, cpuacct_root: str, unified: str | None
) -> None:
    layout = cgroups.parse_mountinfo(text)
    assert layout.mode is mode
    assert layout.controller_root("memory") == memory_root
    assert layout.controller_root("cpuacct") == cpuacct_root
    assert (layout.unified.mountpoint if layout.unified else None) == unified
    assert layout.controller_path("memory", "/a/b") == memory_root + "/a/b"


def test_hybrid_all_paths_cover_every_hierarchy() -> None:
    layout = cgroups.parse_mountinfo(HYBRID)
    assert layout.all_paths("/x") == [
        "/sys/fs/cgroup/cpu/x",
        "/sys/fs/cgroup/cpuacct/x",
        "/sys/fs/cgroup/memory/x",
        "/sys/fs/cgroup/pids/x",
        "/sys/fs/cgroup/systemd/x",
        "/sys/fs/cgroup/unified/x",
    ]
    assert layout.controller_path("name=systemd", "/x") == "/sys/fs/cgroup/systemd/x"


def test_mount_inside_cgroup_namespace_prefers_full_tree() -> None:
    layout = cgroups.parse_mountinfo(IN_CGROUP_NS)
    # The mount showing the whole tree wins, and mountinfo's octal escapes are decoded.
    assert (
        layout.controller_path("memory", "/kubepods/pod1/c")
        == "/host cgroup/memory/kubepods/pod1/c"
    )
    partial = CgroupMount("/sys/fs/cgroup/memory", "/kubepods/pod1")
    assert partial.path_of("/kubepods/pod1/c") == "/sys/fs/cgroup/memory/c"
    assert partial.path_of("/kubepods/pod1") == "/sys/fs/cgroup/memory"


def test_no_cgroups_mounted() -> None:
    with pytest.raises(OSError):
        cgroups.parse_mountinfo("24 30 0:22 / /sys rw - sysfs sysfs rw\n")


def test_this_host_layout_is_detected() -> None:
    layout = cgroups.detect_layout()
    assert layout.controller_root("memory") is not None


@pytest.mark.parametrize(
    ("name", "expanded"),
    [
        ("-.slice", "/"),
        ("kubepods.slice", "/kubepods.slice"),
        ("kubepods-burstable.slice", "/kubepods.slice/kubepods-burstable.slice"),
        (
            "kubepods-burstable-pod1234.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice",
        ),
    ],
)
def test_expand_slice(name: str, expanded: str) -> None:
    assert cgroups.expand_slice(name) == expanded


@pytest.mark.parametrize(
    "name", ["kubepods", "a--b.slice", "-a.slice", "a-.slice", "a/b.slice", ".slice"]
)
def test_bad_slice(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^linux\.cgroup_parent"):
        cgroups.expand_slice(name)


@pytest.mark.parametrize(
    ("parent", "driver", "path", "directory"),
    [
        pytest.param(
            "/kubepods/burstable/pod1",
            CgroupDriver.CGROUPFS,
            "/kubepods/burstable/pod1/c1",
            "/kubepods/burstable/pod1/c1",
            id="cgroupfs",
        ),
        pytest.param(
            "kubepods/pod1/",
            CgroupDriver.CGROUPFS,
            "/kubepods/pod1/c1",
            "/kubepods/pod1/c1",
            id="cgroupfs-relative",
        ),
        pytest.param("", CgroupDriver.CGROUPFS, "/rktlet/c1", "/rktlet/c1", id="cgroupfs-default"),
        pytest.param(
            "kubepods-burstable-pod1.slice",
            CgroupDriver.SYSTEMD,
            "kubepods-burstable-pod1.slice:cri-rktlet:c1",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-rktlet-c1.scope",
            id="systemd",
        ),
        pytest.param(
            "",
            CgroupDriver.SYSTEMD,
            "rktlet.slice:cri-rktlet:c1",
            "/rktlet.slice/cri-rktlet-c1.scope",
            id="systemd-default",
        ),
    ],
)
def test_cgroups_path_and_dir(parent: str, driver: CgroupDriver, path: str, directory: str) -> None:
    assert cgroups.cgroups_path(parent, "c1", driver) == path
    assert cgroups.cgroup_dir(path, driver) == directory


@pytest.mark.parametrize(
    ("parent", "driver", "object_id", "match"),
    [
        pytest.param(
            "/kubepods/../etc", CgroupDriver.CGROUPFS, "c1", r"^linux\.cgroup_parent", id="dotdot"
        ),
        pytest.param(
            "kubepods.slice",
            CgroupDriver.CGROUPFS,
            "c1",
            r"^linux\.cgroup_parent: .*systemd",
            id="slice-on-cgroupfs",
        ),
        pytest.param(
            "/kubepods", CgroupDriver.SYSTEMD, "c1", r"^linux\.cgroup_parent", id="path-on-systemd"
        ),
        pytest.param("/kubepods", CgroupDriver.CGROUPFS, "../x", r"^id", id="bad-id"),
    ],
)
def test_bad_cgroup_parents(parent: str, driver: CgroupDriver, object_id: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        cgroups.cgroups_path(parent, object_id, driver)


def test_pod_cgroup_dir() -> None:
    assert cgroups.pod_cgroup_dir("/kubepods/pod1") == "/kubepods/pod1"
    assert cgroups.pod_cgroup_dir("kubepods-pod1.slice", CgroupDriver.SYSTEMD) == (
        "/kubepods.slice/kubepods-pod1.slice"
    )


# ------------------------------------------------------------------------ fake trees


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(content)


@pytest.fixture
def v1_tree(tmp_path: Path) -> CgroupLayout:
    base = tmp_path / "v1"
    write(base / "cpuacct/pod/c", {"cpuacct.usage": "123456789\n"})
    write(
        base / "memory/pod/c",
        {
            "memory.usage_in_bytes": "10000000\n",
            "memory.limit_in_bytes": "16777216\n",
            "memory.memsw.usage_in_bytes": "10004096\n",
            "memory.memsw.limit_in_bytes": "16777216\n",
            "memory.stat": "cache 5\nrss 1\ninactive_file 9\ntotal_rss 4000000\n"
            "total_inactive_file 3000000\ntotal_pgfault 77\ntotal_pgmajfault 3\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        },
    )
    write(base / "pids/pod/c", {"pids.current": "3\n", "pids.max": "max\n"})
    write(
        base / "unified/pod/c",
        {"cpu.pressure": "some avg10=1.50 avg60=0.00 avg300=0.00 total=2000\n"},
    )
    v1 = {name: CgroupMount(str(base / name)) for name in ("cpu", "cpuacct", "memory", "pids")}
    return CgroupLayout(CgroupMode.HYBRID, v1, CgroupMount(str(base / "unified")))


@pytest.fixture
def v2_tree(tmp_path: Path) -> CgroupLayout:
    base = tmp_path / "v2"
    write(
        base / "pod/c",
        {
            "cpu.stat": "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n",
            "memory.current": "8192000\n",
            "memory.max": "max\n",
            "memory.swap.current": "4096\n",
            "memory.swap.max": "max\n",
            "memory.stat": "anon 4096000\nfile 100\ninactive_file 1000000\n"
            "pgfault 10\npgmajfault 1\n",
            "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
            "pids.current": "2\n",
            "pids.max": "100\n",
            "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\n"
            "full avg10=0.10 avg60=0.20 avg300=0.30 total=7\n",
        },
    )
    return CgroupLayout(CgroupMode.V2, {}, CgroupMount(str(base)))


def test_read_stats_v1(v1_tree: CgroupLayout) -> None:
    stats = cgroups.read_stats("/pod/c", v1_tree, clock=lambda: 1000)
    assert stats.cpu == CpuStats(1000, 123456789)
    assert stats.memory == cgroups.MemoryStats(
        timestamp_ns=1000,
        usage_bytes=10000000,
        working_set_bytes=7000000,
        rss_bytes=4000000,
        page_faults=77,
        major_page_faults=3,
        limit_bytes=16777216,
        available_bytes=16777216 - 7000000,
        swap_usage_bytes=4096,
        swap_limit_bytes=0,
        swap_available_bytes=0,
    )
    assert stats.pids == cgroups.PidsStats(1000, 3, None)
    assert stats.cpu_psi is not None and stats.cpu_psi.some is not None
    assert stats.cpu_psi.some.avg10 == 1.5 and stats.cpu_psi.some.total_ns == 2_000_000
    assert stats.memory_psi is None
    assert cgroups.oom_kill_count("/pod/c", v1_tree) == 2
    assert cgroups.oom_killed("/pod/c", v1_tree, baseline=1)
    assert not cgroups.oom_killed("/pod/c", v1_tree, baseline=2)


def test_read_stats_v2(v2_tree: CgroupLayout) -> None:
    first = cgroups.read_stats("/pod/c", v2_tree, clock=lambda: 1_000_000_000)
    assert first.cpu == CpuStats(1_000_000_000, 5_000_000)
    memory = first.memory
    assert memory is not None
    assert (memory.usage_bytes, memory.working_set_bytes, memory.rss_bytes) == (
        8192000,
        7192000,
        4096000,
    )
    assert (memory.limit_bytes, memory.available_bytes) == (None, None)
    assert (memory.swap_usage_bytes, memory.swap_limit_bytes) == (4096, None)
    assert first.pids == cgroups.PidsStats(1_000_000_000, 2, 100)
    assert first.memory_psi is not None and first.memory_psi.full is not None
    assert first.memory_psi.full.avg300 == 0.3
    assert cgroups.oom_kill_count("/pod/c", v2_tree) == 1
    # A second sample half a second later with 0.25 s more CPU: half a core.
    cpu_stat = Path(v2_tree.unified.mountpoint if v2_tree.unified else "", "pod/c/cpu.stat")
    cpu_stat.write_text("usage_usec 255000\n")
    second = cgroups.read_stats(
        "/pod/c", v2_tree, previous_cpu=first.cpu, clock=lambda: 1_500_000_000
    )
    assert second.cpu is not None and second.cpu.usage_nano_cores == 500_000_000


def test_missing_cgroup_reads_as_nothing(v1_tree: CgroupLayout, v2_tree: CgroupLayout) -> None:
    for layout in (v1_tree, v2_tree):
        assert cgroups.read_stats("/gone", layout) == cgroups.CgroupStats()
        assert cgroups.oom_kill_count("/gone", layout) is None
        assert not cgroups.oom_killed("/gone", layout)


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        pytest.param(None, CpuStats(10, 10), None, id="first-sample"),
        pytest.param(
            CpuStats(0, 0), CpuStats(2_000_000_000, 1_000_000_000), 500_000_000, id="half-core"
        ),
        pytest.param(CpuStats(5, 5), CpuStats(5, 9), None, id="same-time"),
        pytest.param(CpuStats(0, 9), CpuStats(5, 5), None, id="counter-reset"),
    ],
)
def test_nano_cores(prev: CpuStats | None, cur: CpuStats, expected: int | None) -> None:
    assert cgroups.nano_cores(prev, cur) == expected


def test_remove_cgroup_reports_leftovers(v1_tree: CgroupLayout, tmp_path: Path) -> None:
    for mount in v1_tree.v1.values():
        Path(mount.mountpoint, "empty").mkdir(parents=True, exist_ok=True)
    assert cgroups.remove_cgroup("/empty", v1_tree) == []
    left = cgroups.remove_cgroup("/pod", v1_tree)  # not empty: reported, not raised
    assert left and all(p.endswith("/pod") for p in left)


@pytest.mark.parametrize(
    ("mountinfo", "controllers"),
    [
        pytest.param(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
            "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
            {"cpu"},
            id="v1",
        ),
        pytest.param(
            "32 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            {"memory"},
            id="hybrid-counts-v1-only",
        ),
    ],
)
def test_controllers_of_a_layout(mountinfo: str, controllers: set[str]) -> None:
    assert cgroups.parse_mountinfo(mountinfo).controllers() == frozenset(controllers)


def test_read_detail_v1(tmp_path: Path) -> None:
    base = tmp_path / "v1"
    write(
        base / "cpuacct/pod/c",
        {"cpuacct.usage_user": "3000000000\n", "cpuacct.usage_sys": "1500000000\n"},
    )
    write(
        base / "cpu/pod/c",
        {
            "cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n",
            "cpu.cfs_period_us": "100000\n",
            "cpu.cfs_quota_us": "-1\n",
            "cpu.shares": "512\n",
        },
    )
    write(
        base / "memory/pod/c",
        {
            "memory.stat": "cache 1\nmapped_file 2\ntotal_cache 300\ntotal_mapped_file 200\n",
            "memory.max_usage_in_bytes": "4096000\n",
            "memory.failcnt": "7\n",
            "memory.soft_limit_in_bytes": "9223372036854771712\n",
            "memory.memsw.limit_in_bytes": "33554432\n",
        },
    )
    write(
        base / "blkio/pod/c",
        {
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 8192\n"
            "8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
            "blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        },
    )
    write(base / "pids/pod/c", {"pids.current": "5\n", "pids.max": "max\n", "cgroup.procs": "42\n"})
    v1 = {
        name: CgroupMount(str(base / name))
        for name in ("cpu", "cpuacct", "memory", "pids", "blkio")
    }
    detail = cgroups.read_detail("/pod/c", CgroupLayout(CgroupMode.V1, v1))
    assert detail.values == {
        "cpu_user": 3_000_000_000,
        "cpu_system": 1_500_000_000,
        "cfs_periods": 10,
        "cfs_throttled_periods": 4,
        "cfs_throttled": 2_500_000_000,
        "spec_cpu_period": 100000,
        "spec_cpu_shares": 512,
        "memory_cache": 300,
        "memory_mapped_file": 200,
        "memory_max_usage": 4096000,
        "memory_failcnt": 7,
        "spec_memory_swap_limit": 33554432,
        "threads": 5,
    }
    assert detail.io == {"8:0": {"read_bytes": 4096, "write_bytes": 8192, "reads": 1, "writes": 2}}
    assert detail.pids == (42,)


def test_read_detail_v2(v2_tree: CgroupLayout, tmp_path: Path) -> None:
    write(
        tmp_path / "v2/pod/c",
        {
            "cpu.stat": "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\nnr_periods 3\n"
            "nr_throttled 1\nthrottled_usec 250\n",
            "cpu.max": "50000 100000\n",
            "cpu.weight": "100\n",
            "memory.peak": "9000000\n",
            "memory.high": "max\n",
            "io.stat": "8:16 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
            "cgroup.procs": "7\n8\n",
        },
    )
    detail = cgroups.read_detail("/pod/c", v2_tree)
    assert detail.values == {
        "cpu_user": 4_000_000,
        "cpu_system": 1_000_000,
        "cfs_periods": 3,
        "cfs_throttled_periods": 1,
        "cfs_throttled": 250_000,
        "spec_cpu_period": 100000,
        "spec_cpu_quota": 50000,
        "spec_cpu_shares": 2597,  # runc maps shares 2..262144 onto weights 1..10000
        "memory_cache": 100,
        "memory_max_usage": 9000000,
        "threads": 2,
        "threads_max": 100,
    }
    assert detail.io == {"8:16": {"read_bytes": 10, "write_bytes": 20, "reads": 1, "writes": 2}}
    assert detail.pids == (7, 8)
