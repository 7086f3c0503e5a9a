"""cgroups.set_limits: which files a resize writes on v1/hybrid and v2, and in what order.

The real kernel files are exercised by tests/cri/test_resize.py on this host (hybrid);
here directories stand in for the other layouts, so that the v2 spelling is checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cri import cgroups
from cri.cgroups import CgroupLayout, CgroupLimits, CgroupMode, CgroupMount


def _files(directory: Path, names: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in names.items():
        (directory / name).write_text(value)


def test_v2_writes_weight_max_and_memory(tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    _files(pod, {"cpu.weight": "100", "cpu.max": "max 100000", "memory.max": "max"})
    layout = CgroupLayout(CgroupMode.V2, {}, CgroupMount(str(tmp_path)))
    cgroups.set_limits("/pod", layout, CgroupLimits(cpu_shares=1024, cpu_quota=50000))
    assert (pod / "cpu.weight").read_text() == "39"
    assert (pod / "cpu.max").read_text() == "50000 100000"  # the period kept
    assert (pod / "memory.max").read_text() == "max"  # not asked: untouched
    cgroups.set_limits(
        "/pod", layout, CgroupLimits(cpu_quota=-1, cpu_period=20000, memory_limit=1 << 28)
    )
    assert (pod / "cpu.max").read_text() == "max 20000"
    assert (pod / "memory.max").read_text() == str(1 << 28)


def test_v1_raises_memsw_before_memory(tmp_path: Path) -> None:
    cpu, memory = tmp_path / "cpu" / "pod", tmp_path / "memory" / "pod"
    _files(cpu, {"cpu.shares": "2", "cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    _files(memory, {"memory.limit_in_bytes": "100", "memory.memsw.limit_in_bytes": "100"})
    layout = CgroupLayout(
        CgroupMode.HYBRID,
        {name: CgroupMount(str(tmp_path / name)) for name in ("cpu", "memory")},
        CgroupMount(str(tmp_path / "unified")),
    )
    cgroups.set_limits(
        "/pod",
        layout,
        CgroupLimits(cpu_shares=2048, cpu_quota=30000, cpu_period=50000, memory_limit=500),
    )
    assert (cpu / "cpu.shares").read_text() == "2048"
    assert (cpu / "cpu.cfs_period_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "30000"
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == "500"
    assert (memory / "memory.limit_in_bytes").read_text() == "500"


def test_missing_cgroup_is_an_oserror(tmp_path: Path) -> None:
    layout = CgroupLayout(CgroupMode.V2, {}, CgroupMount(str(tmp_path)))
    with pytest.raises(FileNotFoundError):
        cgroups.set_limits("/absent", layout, CgroupLimits(memory_limit=1 << 20))


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 39), (262144, 10000), (1, 1)])
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert cgroups.shares_to_weight(shares) == weight
