"""Monitors offer their private memory to KSM; the containers they start never are.

The advice is a flag the kernel shows in each mapping's ``VmFlags`` (``mg``).  What
KSM then merges, with ``ksmd`` running, is measured by ``bench/monitor_memory.py``
(it turns KSM on for its run and restores the host's setting): a test must not
change the host's memory management under other work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iottymux import pagemerge
from iottymux.control import ControlClient
from iottymux.forkserver import ForkServer

REPO = Path(__file__).resolve().parents[1]

#: A /proc/PID/maps text as the kernel writes it.
MAPS = (
    "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 [heap]\n"
    "7f1c2a000000-7f1c2a100000 rw-p 00000000 00:00 0 \n"  # anonymous: no name
    "7f1c2b000000-7f1c2b130000 r-xp 00012000 fe:01 1234 /usr/lib/libpython3.11.so.1.0\n"
    "7f1c2b300000-7f1c2b340000 rw-p 00240000 fe:01 1234 /usr/lib/libpython3.11.so.1.0\n"
    "7f1c2b400000-7f1c2b401000 rw-s 00000000 00:05 99 /dev/zero (deleted)\n"
    "7f1c2b500000-7f1c2b504000 rw-s 00000000 00:19 42 /dev/shm/ring\n"
    "7f1c2b600000-7f1c2b601000 r--p 00000000 fe:01 1234 /usr/lib/libpython3.11.so.1.0\n"
    "7f1c2b700000-7f1c2b702000 rw-p 00000000 00:06 7 /dev/some-device\n"
    "7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]\n"
    "7ffd1c100000-7ffd1c104000 r--p 00000000 00:00 0 [vvar]\n"
    "7ffd1c104000-7ffd1c106000 r-xp 00000000 00:00 0 [vdso]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n"
)


def test_only_private_writable_mappings_are_offered() -> None:
    assert pagemerge.mergeable_ranges(MAPS) == [
        (0x55D0C0A00000, 0x55D0C0A21000),  # the C heap
        (0x7F1C2A000000, 0x7F1C2A100000),  # anonymous: pymalloc's arenas
        (0x7F1C2B300000, 0x7F1C2B340000),  # libpython's data
        (0x7FFD1C000000, 0x7FFD1C021000),  # the stack
    ]


def test_a_short_or_empty_maps_text_offers_nothing() -> None:
    assert pagemerge.mergeable_ranges("") == []
    assert pagemerge.mergeable_ranges("garbage\n7f00-7f01 rw\n") == []


def test_the_environment_turns_the_advice_off() -> None:
    assert pagemerge.enabled({})
    assert pagemerge.enabled({pagemerge.ENV: "1"})
    assert not pagemerge.enabled({pagemerge.ENV: "0"})


def test_ksm_running_reads_the_hosts_switch(tmp_path: Path) -> None:
    switch = tmp_path / "run"
    switch.write_text("1\n")
    assert pagemerge.ksm_running(str(switch))
    switch.write_text("0\n")
    assert not pagemerge.ksm_running(str(switch))
    assert not pagemerge.ksm_running(str(tmp_path / "missing"))


def merge_flags(pid: int) -> dict[str, bool]:
    """Each mapping of ``pid`` ("start-end perms name") -> whether it is offered (``mg``)."""
    flags: dict[str, bool] = {}
    current = ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if line.startswith("VmFlags:"):
                flags[current] = "mg" in line.split()[1:]
            elif not line.split()[0].endswith(":"):
                parts = line.split()
                current = " ".join([parts[0], parts[1], *parts[5:6]])
    return flags


def offered(pid: int) -> list[str]:
    return [m for m, mg in merge_flags(pid).items() if mg]


def heap_offered(pid: int) -> bool:
    return any(mg for m, mg in merge_flags(pid).items() if m.endswith("[heap]"))


needs_ksm = pytest.mark.skipif(
    not os.path.isdir("/sys/kernel/mm/ksm"), reason="this kernel has no KSM"
)


@needs_ksm
def test_advise_offers_the_heap_and_anonymous_memory_not_code(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import ctypes, mmap, sys
        from iottymux import monitor_cmd, pagemerge
        libc = monitor_cmd.load_libc()
        print(pagemerge.advise(libc))
        # A mapping made afterwards, as a burst of output makes: the idle hook offers it.
        late = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        late.write(b"x" * (1 << 20))
        print(hex(ctypes.addressof(ctypes.c_char.from_buffer(late))), flush=True)
        on_idle = monitor_cmd._idle_hook(libc, sys.argv[1])
        while sys.stdin.readline():
            on_idle()
            print("idle", flush=True)
        """
    )
    # The monitor offers new mappings only while ksmd runs: a switch of the test's own.
    switch = tmp_path / "run"
    switch.write_text("0\n")
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", program, str(switch)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert int(proc.stdout.readline()) > 0
        late = int(proc.stdout.readline(), 16)
        flags = merge_flags(proc.pid)
        assert heap_offered(proc.pid)
        assert not any(mg for m, mg in flags.items() if m.split()[1] == "r-xp"), "code"
        late_mapping = next(m for m in flags if _contains(m, late))
        assert not flags[late_mapping], "made after the advice: not offered yet"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "idle"
        flags = merge_flags(proc.pid)
        assert not flags[next(m for m in flags if _contains(m, late))], "ksmd is off"
        switch.write_text("1\n")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "idle"
        flags = merge_flags(proc.pid)
        assert flags[next(m for m in flags if _contains(m, late))], "offered once idle"
    finally:
        proc.kill()
        proc.wait()


def _contains(mapping: str, address: int) -> bool:
    low, high = (int(x, 16) for x in mapping.split()[0].split("-"))
    return low <= address < high


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


@needs_ksm
def test_a_forked_monitor_is_offered_and_its_app_is_not(
    monitors: list[int], tmp_path: Path
) -> None:
    server = ForkServer()
    try:
        run_dir = tmp_path / "run"
        pid = server.start_monitor(str(run_dir))
        monitors.append(pid)
        assert server.pid is not None and heap_offered(server.pid)
        assert heap_offered(pid)
        with ControlClient(str(run_dir / "control.sock")) as client:
            client.request(
                "add", app="a", command=["sleep", "60"], log_path=str(tmp_path / "a.log")
            )
            app = client.request("start", app="a")["pid"]
            assert app in children(pid)
            # exec dropped the monitor's advice: a container's memory is never offered.
            assert offered(app) == []
    finally:
        server.close()


@needs_ksm
def test_turned_off_nothing_is_offered(
    monitors: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pagemerge.ENV, "0")
    server = ForkServer()
    try:
        pid = server.start_monitor(str(tmp_path / "run"))
        monitors.append(pid)
        assert server.pid is not None
        assert offered(server.pid) == []
        assert offered(pid) == []
    finally:
        server.close()
