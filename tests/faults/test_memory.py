"""The daemon's memory stays flat over many pod and container cycles.

What leaked was per container: bookkeeping made at CreateContainer and dropped
only by RemoveContainer, never when the container went with its pod.  So the
cheapest real path that exercises it is many containers per pod, all removed
by RemovePodSandbox: 1,000 real containers (runc create, overlay root
filesystems, monitors) in 50 pods of 20 take about a minute and a half, where
1,000 pods of one would take a quarter of an hour.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cri.api import api_pb2
from tests.faults.conftest import FaultDaemon, assert_no_leaks

PER_POD = 20


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cycle(daemon: FaultDaemon, n: int) -> None:
    pod_id, pod_config = daemon.run_pod(
        f"mem{n}",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NamespaceMode.NODE)
            )
        ),
    )
    # Created four at a time, as a kubelet starting a pod's containers would.
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: daemon.run_container(
                    pod_id,
                    pod_config,
                    daemon.container_config(f"c{i}", "busybox", ["true"]),
                    start=False,
                ),
                range(PER_POD),
            )
        )
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


@pytest.mark.timeout(600)
def test_container_cycles_leave_memory_flat(fdaemon: FaultDaemon) -> None:
    containers = int(os.environ.get("RKTLET_LEAK_CONTAINERS", "1000"))
    assert fdaemon.proc is not None
    pid = fdaemon.proc.pid
    for n in range(3):  # warm-up: caches, arenas, thread pools reach their size
        _cycle(fdaemon, n)
    before = _rss(pid)
    started = time.monotonic()
    for n in range(3, 3 + containers // PER_POD):
        _cycle(fdaemon, n)
    took = time.monotonic() - started
    after = _rss(pid)
    info = fdaemon.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
    bookkeeping = json.loads(info["bookkeeping"])
    print(
        f"\n{containers} containers in {containers // PER_POD} pods ({took:.0f} s): daemon RSS "
        f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB ({(after - before) / 1024:+.0f} KiB, "
        f"{(after - before) / containers:+.0f} B per container); bookkeeping {bookkeeping}"
    )
    assert bookkeeping["locks"] == 0 and bookkeeping["monitors"] == 0, bookkeeping
    assert after - before < 1 << 20
    assert_no_leaks(fdaemon)
