"""Log rotation storms: the kubelet's rename + ReopenContainerLog, as fast as it can go.

The app writes 20 KiB lines (longer than the 16 KiB maximum, so every line is
cut into a ``P`` and an ``F`` record) with a sequence number.  Afterwards every
rotated file and the live one, read in order by the independent parser, must
hold every line exactly once, in order, each whole within one file.  The
reopen latency is printed (no timing assertion: the machine is shared).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from cri.api import api_pb2
from tests.faults import crilog
from tests.faults.conftest import FaultDaemon, assert_no_leaks, run_logged, wait_for

LINE = 20 * 1024


@pytest.mark.timeout(180)
def test_rotation_storm_with_long_lines(fdaemon: FaultDaemon) -> None:
    # Each line: an 8-digit number, then padding to 20 KiB (busybox shell + head).
    script = (
        f"pad=$(head -c {LINE - 8} /dev/zero | tr '\\0' x); i=0; "
        'while :; do printf "%08d%s\\n" $i "$pad"; i=$((i+1)); done'
    )
    pod_id, ctr = run_logged(fdaemon, "storm", ["sh", "-c", script])
    log_path = fdaemon.log_path(ctr)
    wait_for(lambda: log_path.stat().st_size > 4 * LINE, 20, "the app to write")
    latencies = []
    rotated: list[Path] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline or len(rotated) < 20:
        target = log_path.with_name(f"0.log.{len(rotated):05d}")
        log_path.rename(target)
        rotated.append(target)
        started = time.perf_counter()
        fdaemon.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=ctr))
        latencies.append(time.perf_counter() - started)
        assert log_path.exists(), "the new file must exist when the call returns"
        time.sleep(0.02)  # the storm's pace: 50 rotations a second
    fdaemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr, timeout=5))
    # The app is stopped mid-line: its last bytes end the last file, unterminated.
    lines = [line for line in crilog.read_lines(*rotated, log_path) if not line.unterminated]
    bad = [
        (i, len(line.content), line.content[:12])
        for i, line in enumerate(lines)
        if len(line.content) != LINE
    ]
    assert not bad, f"lines cut or merged: {bad[:5]} of {len(lines)}"
    count = crilog.check_sequence([str(int(line.content[:8])).encode() for line in lines])
    assert count > 100
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"\nReopenContainerLog while writing {LINE // 1024} KiB lines: {len(latencies)} "
        f"rotations, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
        f"{count} lines ({count * LINE / 2**20:.0f} MiB) whole and in order"
    )
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)
