"""Container stdout -> CRI log throughput of the iottymux monitor, against `cat`.

For each line size (100 B and 16 KiB) the static writer (``bench/writer.c``, built
with ``gcc -static -O2`` at run time: 1 MiB writes, so the writer is never the
bottleneck) writes --size-mb of lines.  We time it two ways in the same run:

* rktlet: the app's stdout is a pipe owned by an iottymux monitor, which
  writes the CRI log; the clock stops when the monitor reports the app's exit,
  which it does only after the log holds every line;
* the limit: the same app piped into ``cat > file`` (no formatting at all).

Printed per case: MB/s and lines/s (medians over --runs), CPU seconds per GB
of the monitor (or of cat), the ratio rktlet/limit; then the monitor's start
time and its memory with 1 and with 8 apps logging at once, each two ways in the
same run: forked by the monitor fork server (as the daemon starts monitors) and
started as a new interpreter (``iottymux monitor --detach``, the fallback).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._writer import build_writer, writer_args
from iottymux.control import ControlClient
from iottymux.forkserver import ForkServer
from iottymux.monitor import IDLE_AFTER
from iottymux.monitor_cmd import start_detached

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000

#: The compiled writer (set in main).
WRITER = Path()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def app_command(line_size: int, total: int) -> list[str]:
    return [str(WRITER), *writer_args(line_size, total)]


def start_monitor(run_dir: Path, fork_server: ForkServer | None = None) -> tuple[int, float]:
    """A detached monitor (forked by ``fork_server``, if given); its pid, and the seconds
    until its control socket answered."""
    t0 = time.perf_counter()
    pid = start_detached(str(run_dir), fork_server=fork_server)
    return pid, time.perf_counter() - t0


def warm_up(work: Path, total: int) -> None:
    """Write and delete ``total`` bytes once: the first use of page-cache pages
    on a fresh VM costs far more than any later one, and would bias run one."""
    block = b"w" * (1 << 20)
    path = work / "warm-up"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(total // len(block) + 1):
            os.write(fd, block)
    finally:
        os.close(fd)
        path.unlink()


def run_rktlet(work: Path, line_size: int, total: int) -> tuple[float, float]:
    """One run through a monitor: (seconds, monitor CPU seconds)."""
    run_dir = work / "run"
    pid, _ = start_monitor(run_dir)
    log = work / "pods" / "ctr" / "0.log"
    try:
        with ControlClient(str(run_dir / "control.sock"), timeout=600) as client:
            client.request(
                "add", app="app", command=app_command(line_size, total), log_path=str(log)
            )
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            client.request("start", app="app")
            status = client.request("wait", app="app")
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
            assert status["exit_code"] == 0, status
            assert status["log"]["bytes"] == total, status["log"]
            assert status["log"]["dropped_lines"] == 0, status["log"]
            client.request("shutdown")
    finally:
        subprocess.run(["pkill", "-9", "-P", str(pid)], check=False)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        shutil.rmtree(work / "pods", ignore_errors=True)
    return elapsed, cpu


def run_cat(work: Path, line_size: int, total: int) -> tuple[float, float]:
    """The same app piped to ``cat > file``: (seconds, cat CPU seconds)."""
    out_path = work / "cat.out"
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        app = subprocess.Popen(app_command(line_size, total), stdout=subprocess.PIPE)
        assert app.stdout is not None
        cat = subprocess.Popen(["cat"], stdin=app.stdout, stdout=out)
        app.stdout.close()
        _, status, usage = os.wait4(cat.pid, 0)
        elapsed = time.perf_counter() - t0
        cat.returncode = os.waitstatus_to_exitcode(status)
        app.wait()
    size = out_path.stat().st_size
    out_path.unlink()
    assert size == total, (size, total)
    return elapsed, usage.ru_utime + usage.ru_stime


def pss_kib(pid: int) -> tuple[int, int]:
    """(PSS, private dirty) in KiB."""
    pss = dirty = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Private_Dirty:"):
                dirty = int(line.split()[1])
    return pss, dirty


def measure_rss(
    work: Path, apps: int, line_size: int, total: int, fork_server: ForkServer | None
) -> dict[str, int]:
    """Monitor memory while ``apps`` apps log ``total`` bytes each, and once idle."""
    run_dir = work / "rss-run"
    pid, _ = start_monitor(run_dir, fork_server)
    figures = {"start_rss": rss_kib(pid)}
    try:
        with ControlClient(str(run_dir / "control.sock"), timeout=600) as client:
            for i in range(apps):
                client.request(
                    "add",
                    app=f"app{i}",
                    command=app_command(line_size, total),
                    log_path=str(work / "rss-pods" / f"c{i}" / "0.log"),
                )
            for i in range(apps):
                client.request("start", app=f"app{i}")
            for i in range(apps):
                client.request("wait", app=f"app{i}")
            figures["peak_rss"] = rss_kib(pid, "VmHWM")
            # The monitor hands freed buffers back after IDLE_AFTER quiet seconds.
            time.sleep(IDLE_AFTER + 0.5)
            figures["idle_rss"] = rss_kib(pid)
            figures["idle_pss"], figures["idle_dirty"] = pss_kib(pid)
            client.request("shutdown")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        shutil.rmtree(work / "rss-pods", ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="bytes per run, in MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where log files go (default: a temp dir)")
    args = parser.parse_args()
    total = args.size_mb * MB
    work = Path(tempfile.mkdtemp(prefix="rktlet-bench-", dir=args.dir))
    global WRITER
    try:
        WRITER = build_writer(work / "bin")
        print(
            f"# log throughput, {args.size_mb} MB per run, median of {args.runs} runs, "
            f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
        )
        warm_up(work, total)
        print(f"{'case':<26}{'MB/s':>9}{'lines/s':>13}{'CPU s/GB':>10}{'vs limit':>10}")
        for line_size, label in ((100, "100 B"), (16384, "16 KiB")):
            runners = {"rktlet (iottymux)": run_rktlet, "limit (pipe->cat)": run_cat}
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
            # Interleaved, so that drift in the machine (page cache, other
            # load) hits both sides alike.
            for _ in range(args.runs):
                for name, runner in runners.items():
                    samples[name].append(runner(work, line_size, total))
            results = {}
            for name, runs in samples.items():
                t = statistics.median(elapsed for elapsed, _ in runs)
                cpu = statistics.median(cpu for _, cpu in runs)
                results[name] = (total / MB / t, total / line_size / t, cpu / (total / 1e9))
            limit = results["limit (pipe->cat)"][0]
            for name, (mbs, lps, cpu_gb) in results.items():
                print(
                    f"{name + ' ' + label:<26}{mbs:>9.0f}{lps:>13,.0f}{cpu_gb:>10.2f}"
                    f"{mbs / limit:>9.2f}x"
                )
        fork_server = ForkServer()
        try:
            starts: dict[str, list[float]] = {"fork server": [], "interpreter": []}
            for i in range(10):  # interleaved
                for how, server in (("fork server", fork_server), ("interpreter", None)):
                    run_dir = work / f"start-{i}-{how[0]}"
                    _pid, seconds = start_monitor(run_dir, server)
                    starts[how].append(seconds)
                    with ControlClient(str(run_dir / "control.sock")) as client:
                        client.request("shutdown")
            print(
                "monitor start (request to control socket ready), median of 10: "
                + ", ".join(
                    f"{how} {statistics.median(v) * 1000:.1f} ms" for how, v in starts.items()
                )
            )
            for apps in (1, 8):
                for how, server in (("forked", fork_server), ("own interpreter", None)):
                    m = measure_rss(work, apps, 100, 50 * MB, server)
                    print(
                        f"monitor memory ({how}), {apps} app(s) logging 50 MB each: "
                        f"RSS at start {m['start_rss'] / 1024:.1f} MiB, "
                        f"peak {m['peak_rss'] / 1024:.1f} MiB, "
                        f"idle after {m['idle_rss'] / 1024:.1f} MiB "
                        f"(PSS {m['idle_pss'] / 1024:.1f} MiB, "
                        f"private dirty {m['idle_dirty'] / 1024:.1f} MiB)"
                    )
        finally:
            fork_server.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
