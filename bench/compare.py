"""Peer benchmarks: rktlet against containerd and conmon, same workloads, same run.

Workloads, each runtime in a network namespace of this script's (never the host's):

- **log throughput**: a busybox container runs
  ``yes "$(printf '%0<L-1>d' 0)" | head -c BYTES`` (L = 100 B or 16 KiB lines, BYTES a
  multiple of L) and its stdout goes to the CRI log.  The clock runs from just before
  the start call (CRI StartContainer, or ``runc start`` for conmon) to the last write
  of the log file (its mtime once the container has exited); afterwards every log's
  records are parsed and their content bytes counted (``F`` records count their
  newline): a run that lost a byte is reported as loss.  CPU is the utime+stime delta
  (/proc/<pid>/stat) of the log path's processes: rktlet's pod monitor (iottymux), for
  containerd its shim plus the containerd daemon, for conmon the conmon process.
- **monitor memory**: a pod with 1 and with 8 containers, each logging 8 MB of 100 B
  lines and then sleeping; once every log holds its bytes and everything has been
  quiet for 1.5 s, RSS and PSS (smaps_rollup) of rktlet's pod monitor, containerd's
  shim (the daemon's RSS is noted apart), and of conmon (one per container: the sum).
- **lifecycle and ExecSync**: ``bench/lifecycle.py``'s pod cycle (RunPodSandbox …
  RemovePodSandbox with ExecSync ``true``), rktlet against containerd (conmon has no
  pods: n/a).

rktlet and containerd are driven through CRI (``bench/_cri_peer.py``: private sockets,
roots, registries and CNI, each in its own netns); conmon 2.1.6 is run directly, as
CRI-O would run it, with runc on a bundle whose rootfs is the host's static busybox and
whose network namespace is one of ours.  Throughput and memory runs rotate the order of
the runtimes each round; figures are medians over --runs rounds.  Everything made is
removed at the end, even on failure.  Writes bench/RESULTS.md (``--out``).

Usage (as root)::

    .venv/bin/python bench/compare.py [--size-mb 1000] [--runs 3] [--lifecycle-pods 10]
        [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._cri_peer import (
    NetNS,
    RktletDaemon,
    cgroup_pids,
    kill_pids,
    make_run_dir,
    pids_with_cmdline,
    remove_cgroup_tree,
    run_quiet,
    tool_version,
    unmount_under,
)
from bench._results import update as update_results
from bench._writer import CONTAINER_PATH, build_writer, writer_args
from bench.lifecycle import (
    OPS,
    SUMS,
    Cleanups,
    Target,
    check_ready,
    log,
    machine_lines,
    setup_containerd,
    setup_rktlet,
    start_containerd,
    version_lines,
)
from cri.api import api_pb2

MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
RPC_TIMEOUT = 120.0
RUNC = shutil.which("runc") or "/usr/sbin/runc"
CONMON = shutil.which("conmon") or "/usr/bin/conmon"
LINE_SIZES = ((100, "100 B"), (16384, "16 KiB"))
MEMORY_BYTES = 8 * MB
QUIET_SECONDS = 1.5
RUNTIMES = ("rktlet", "containerd", "conmon")
#: rktlet as it runs by default (monitors forked by its fork server), and without one
RKTLET = "rktlet"
RKTLET_EXEC = "rktlet, no fork server"
#: the same writer piped into `cat > file`, no runtime at all: the ceiling of the setup
LIMIT = "limit"
TP_ROWS = (*RUNTIMES, LIMIT)


# -- measuring --------------------------------------------------------------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of ``pids`` (threads included, children not); gone ones count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def log_content_bytes(path: Path) -> tuple[int, int]:
    """(content bytes, malformed records) of a CRI log; ``F`` records count a newline."""
    total = bad = 0
    rest = b""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                parts = line.split(b" ", 3)
                if len(parts) != 4 or parts[1] != b"stdout":
                    bad += 1
                elif parts[2] == b"F":
                    total += len(parts[3]) + 1
                elif parts[2] == b"P":
                    total += len(parts[3])
                else:
                    bad += 1
    if rest:
        bad += 1  # a record without its newline
    return total, bad


def warm_up(work: Path, total: int) -> None:
    """Write and delete ``total`` bytes once: a fresh VM's first use of page-cache pages
    costs far more than any later one and would bias whichever runtime goes first."""
    block = b"w" * (1 << 20)
    path = work / "warm-up"
    with open(path, "wb") as f:
        for _ in range(total // len(block) + 1):
            f.write(block)
    path.unlink()


@dataclass
class Run:
    """One throughput run of one runtime."""

    seconds: float
    cpu: float
    logged: int
    expected: int
    bad_records: int

    @property
    def lost(self) -> int:
        return self.expected - self.logged


@dataclass
class Memory:
    """Monitor memory of one pod: (RSS, PSS) in KiB, summed over its monitors."""

    rss: int
    pss: int
    peak_rss: int
    daemon_rss: int = 0
    logged_ok: bool = True


# -- CRI runtimes (rktlet, containerd) -------------------------------------------------------


def monitor_pids(target: Target, pod_id: str) -> list[int]:
    """The processes on ``pod_id``'s log path: rktlet's monitor; containerd's shim."""
    daemon = target.daemon
    if isinstance(daemon, RktletDaemon):
        return pids_with_cmdline("iottymux", "monitor", f"{daemon.run_dir}/pods/{pod_id}")
    return pids_with_cmdline("containerd-shim", daemon.socket, pod_id)


def cpu_pids(target: Target, pod_id: str) -> list[int]:
    pids = monitor_pids(target, pod_id)
    if target.label == "containerd":
        daemon_pid = target.daemon.daemon_pid()
        if daemon_pid is not None:
            pids.append(daemon_pid)
    return pids


def wait_exited(target: Target, container_id: str, timeout: float) -> int:
    """Poll ContainerStatus until the container has exited; its exit code."""
    rt = target.daemon.runtime
    deadline = time.monotonic() + timeout
    while True:
        status = rt.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id), timeout=RPC_TIMEOUT
        ).status
        if status.state == api_pb2.CONTAINER_EXITED:
            return int(status.exit_code)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.label}: container still running after {timeout} s")
        time.sleep(0.05)


def wait_logged(paths: Sequence[Path], expected: int, timeout: float) -> bool:
    """Wait until every log in ``paths`` holds ``expected`` content bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(log_content_bytes(p)[0] >= expected for p in paths):
            return True
        time.sleep(0.2)
    return False


def remove_pod(target: Target, pod_id: str) -> None:
    rt = target.daemon.runtime
    with contextlib.suppress(grpc.RpcError):
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    with contextlib.suppress(grpc.RpcError):
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


def container_config(
    target: Target, name: str, writer: Path, args: Sequence[str]
) -> api_pb2.ContainerConfig:
    """A busybox container running the static writer, bind-mounted read-only."""
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=target.image),
        command=[CONTAINER_PATH, *args],
        log_path=f"{name}/0.log",
        mounts=[api_pb2.Mount(container_path=CONTAINER_PATH, host_path=str(writer), readonly=True)],
        linux=api_pb2.LinuxContainerConfig(),
    )


def cri_throughput(target: Target, writer: Path, line_size: int, total: int, timeout: float) -> Run:
    rt = target.daemon.runtime
    pod_config = target.pod_config(f"tp-{secrets.token_hex(3)}")
    log_dir = Path(pod_config.log_directory)
    pod_id = ""
    try:
        pod_id = rt.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config), timeout=RPC_TIMEOUT
        ).pod_sandbox_id
        ctr_id = rt.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                config=container_config(target, "writer", writer, writer_args(line_size, total)),
                sandbox_config=pod_config,
            ),
            timeout=RPC_TIMEOUT,
        ).container_id
        pids = cpu_pids(target, pod_id)
        if len(pids) < 1:
            raise RuntimeError(f"{target.label}: no monitor/shim process found for the pod")
        cpu0 = cpu_seconds(pids)
        t0 = time.time()
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=ctr_id), timeout=RPC_TIMEOUT)
        code = wait_exited(target, ctr_id, timeout)
        if code != 0:
            raise RuntimeError(f"{target.label}: the writer exited {code}")
        log_path = log_dir / "writer" / "0.log"
        wait_logged([log_path], total, 30.0)  # containerd may still be draining its FIFO
        cpu = cpu_seconds(pids) - cpu0
        end = log_path.stat().st_mtime
        logged, bad = log_content_bytes(log_path)
        return Run(end - t0, cpu, logged, total, bad)
    finally:
        if pod_id:
            remove_pod(target, pod_id)
        shutil.rmtree(log_dir, ignore_errors=True)


def cri_memory(target: Target, writer: Path, containers: int) -> Memory:
    rt = target.daemon.runtime
    pod_config = target.pod_config(f"mem{containers}-{secrets.token_hex(3)}")
    log_dir = Path(pod_config.log_directory)
    pod_id = ""
    try:
        pod_id = rt.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config), timeout=RPC_TIMEOUT
        ).pod_sandbox_id
        args = writer_args(100, MEMORY_BYTES, then_sleep=3600)
        ids = []
        for i in range(containers):
            ids.append(
                rt.CreateContainer(
                    api_pb2.CreateContainerRequest(
                        pod_sandbox_id=pod_id,
                        config=container_config(target, f"c{i}", writer, args),
                        sandbox_config=pod_config,
                    ),
                    timeout=RPC_TIMEOUT,
                ).container_id
            )
        for ctr_id in ids:
            rt.StartContainer(
                api_pb2.StartContainerRequest(container_id=ctr_id), timeout=RPC_TIMEOUT
            )
        paths = [log_dir / f"c{i}" / "0.log" for i in range(containers)]
        ok = wait_logged(paths, MEMORY_BYTES, 120.0)
        time.sleep(QUIET_SECONDS)
        pids = monitor_pids(target, pod_id)
        rss = pss = peak = 0
        for pid in pids:
            r, p = memory_kib(pid)
            rss, pss, peak = rss + r, pss + p, peak + status_kib(pid, "VmHWM")
        daemon_rss = 0
        daemon_pid = target.daemon.daemon_pid()
        if target.label == "containerd" and daemon_pid is not None:
            daemon_rss = memory_kib(daemon_pid)[0]
        return Memory(rss, pss, peak, daemon_rss, ok)
    finally:
        if pod_id:
            remove_pod(target, pod_id)
        shutil.rmtree(log_dir, ignore_errors=True)


def status_kib(pid: int, name: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


# -- conmon -------------------------------------------------------------------------------------


class Conmon:
    """conmon + runc on busybox bundles, in a netns of ours, cgroups under ours."""

    def __init__(self, base: Path, netns: NetNS, cgroup_parent: str, writer: Path) -> None:
        self.base = base
        self.netns = netns
        self.cgroup_parent = cgroup_parent
        self.run_dir = make_run_dir("rktlet-bench-cm")
        self.runc_root = self.run_dir / "runc"
        self.exits = self.run_dir / "exits"
        self.sockets = self.run_dir / "s"
        self.rootfs = base / "rootfs"
        self.conmon_pids: dict[str, int] = {}
        for d in (self.runc_root, self.exits, self.sockets, self.rootfs / "bin"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", self.rootfs / "bin" / "busybox")
        for applet in ("sh", "sleep", "true"):
            os.link(self.rootfs / "bin" / "busybox", self.rootfs / "bin" / applet)
        self.writer = self.rootfs / "bin" / "writer"
        shutil.copy(writer, self.writer)

    def create(self, cid: str, args: Sequence[str], log_path: Path) -> int:
        """conmon creates container ``cid`` (runc create); conmon's pid."""
        bundle = self.base / f"bundle-{cid}"
        bundle.mkdir()
        subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        config["process"]["args"] = ["/bin/writer", *args]
        config["process"]["terminal"] = False
        config["process"]["env"] = ["PATH=/bin"]
        config["linux"]["cgroupsPath"] = f"{self.cgroup_parent}/{cid}"
        for ns in config["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = self.netns.path
        (bundle / "config.json").write_text(json.dumps(config))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            *self.netns.nsenter(),
            CONMON,
            "--api-version", "1",
            "-c", cid, "-u", cid, "-n", cid,
            "-r", RUNC,
            f"--runtime-arg=--root={self.runc_root}",
            "-b", str(bundle),
            "-p", str(bundle / "pidfile"),
            "-P", str(bundle / "conmon.pid"),
            "-l", f"k8s-file:{log_path}",
            "--exit-dir", str(self.exits),
            "--socket-dir-path", str(self.sockets),
            "--log-level", "error",
        ]  # fmt: skip
        done = run_quiet(argv)
        pidfile = bundle / "conmon.pid"
        if pidfile.exists():
            self.conmon_pids[cid] = int(pidfile.read_text().strip())
        if done.returncode != 0 or cid not in self.conmon_pids:
            raise RuntimeError(f"conmon create {cid} failed: {done.stdout} {done.stderr}")
        deadline = time.monotonic() + 30
        while not (bundle / "pidfile").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"conmon: {cid} was not created")
            time.sleep(0.01)
        return self.conmon_pids[cid]

    def start(self, cid: str) -> None:
        subprocess.run([RUNC, "--root", str(self.runc_root), "start", cid], check=True)

    def wait_exit(self, cid: str, timeout: float) -> int:
        path = self.exits / cid
        deadline = time.monotonic() + timeout
        while not path.exists() or not path.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"conmon: {cid} still running after {timeout} s")
            time.sleep(0.05)
        return int(path.read_text().strip())

    def remove(self, cid: str) -> None:
        run_quiet([RUNC, "--root", str(self.runc_root), "delete", "--force", cid])
        pid = self.conmon_pids.pop(cid, None)
        if pid is not None:
            kill_pids([pid])
        shutil.rmtree(self.base / f"bundle-{cid}", ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.exits / cid).unlink()

    def cleanup(self) -> None:
        for cid in list(self.conmon_pids):
            self.remove(cid)
        listed = run_quiet([RUNC, "--root", str(self.runc_root), "list", "-q"])
        for cid in listed.stdout.split():
            run_quiet([RUNC, "--root", str(self.runc_root), "delete", "--force", cid])
        kill_pids(pids_with_cmdline("conmon", str(self.exits)))
        for _ in range(5):
            pids = cgroup_pids(self.cgroup_parent)
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.1)
        remove_cgroup_tree(self.cgroup_parent)
        unmount_under([self.base, self.run_dir])
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def throughput(self, line_size: int, total: int, timeout: float) -> Run:
        cid = f"cm-{secrets.token_hex(4)}"
        log_path = self.base / "logs" / cid / "0.log"
        try:
            pid = self.create(cid, writer_args(line_size, total), log_path)
            cpu0 = cpu_seconds([pid])
            t0 = time.time()
            self.start(cid)
            code = self.wait_exit(cid, timeout)
            if code != 0:
                raise RuntimeError(f"conmon: the writer exited {code}")
            cpu = cpu_seconds([pid]) - cpu0
            end = log_path.stat().st_mtime
            logged, bad = log_content_bytes(log_path)
            return Run(end - t0, cpu, logged, total, bad)
        finally:
            self.remove(cid)
            shutil.rmtree(log_path.parent, ignore_errors=True)

    def limit(self, line_size: int, total: int) -> Run:
        """The same writer (in the netns) straight into ``cat > file``: no runtime at all."""
        out_path = self.base / "limit.out"
        nsenter = self.netns.nsenter()
        nsenter[0] = shutil.which(nsenter[0]) or nsenter[0]
        try:
            with open(out_path, "wb") as out:
                t0 = time.time()
                app = subprocess.Popen(
                    [*nsenter, str(self.writer), *writer_args(line_size, total)],
                    stdout=subprocess.PIPE,
                )
                assert app.stdout is not None
                cat = subprocess.Popen(
                    [*nsenter, shutil.which("cat") or "cat"], stdin=app.stdout, stdout=out
                )
                app.stdout.close()
                _, status, usage = os.wait4(cat.pid, 0)  # nsenter --net execs cat: same pid
                cat.returncode = os.waitstatus_to_exitcode(status)
                app.wait()
            if app.returncode != 0 or cat.returncode != 0:
                raise RuntimeError(f"limit: writer {app.returncode}, cat {cat.returncode}")
            seconds = out_path.stat().st_mtime - t0
            size = out_path.stat().st_size
            return Run(seconds, usage.ru_utime + usage.ru_stime, size, total, 0)
        finally:
            with contextlib.suppress(OSError):
                out_path.unlink()

    def memory(self, containers: int) -> Memory:
        cids = [f"cm-{secrets.token_hex(4)}" for _ in range(containers)]
        paths = [self.base / "logs" / cid / "0.log" for cid in cids]
        args = writer_args(100, MEMORY_BYTES, then_sleep=3600)
        try:
            pids = [self.create(cid, args, path) for cid, path in zip(cids, paths, strict=True)]
            for cid in cids:
                self.start(cid)
            ok = wait_logged(paths, MEMORY_BYTES, 120.0)
            time.sleep(QUIET_SECONDS)
            rss = pss = peak = 0
            for pid in pids:
                r, p = memory_kib(pid)
                rss, pss, peak = rss + r, pss + p, peak + status_kib(pid, "VmHWM")
            return Memory(rss, pss, peak, 0, ok)
        finally:
            for cid, path in zip(cids, paths, strict=True):
                self.remove(cid)
                shutil.rmtree(path.parent, ignore_errors=True)


# -- the report -------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}x"


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


@dataclass
class Results:
    size_mb: int
    runs: int
    throughput: dict[tuple[str, int], list[Run]] = field(default_factory=dict)
    memory: dict[tuple[str, int], list[Memory]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    lifecycle: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    lifecycle_pods: int = 0
    header: list[str] = field(default_factory=list)
    scale: dict[tuple[str, int], Any] = field(default_factory=dict)
    scales: list[int] = field(default_factory=list)
    scale_mb: int = 0


def throughput_table(res: Results) -> list[str]:
    out = [
        "| lines | runtime | MB/s median (each run) | CPU s/GB | bytes logged "
        "| vs conmon MB/s | vs containerd MB/s | vs conmon CPU/GB | vs limit MB/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for line_size, label in LINE_SIZES:
        figures: dict[str, tuple[float, float]] = {}
        for rt in TP_ROWS:
            runs = res.throughput.get((rt, line_size), [])
            if runs:
                figures[rt] = (
                    med([r.expected / MB / r.seconds for r in runs]),
                    med([r.cpu / (r.expected / 1e9) for r in runs]),
                )
        for rt in TP_ROWS:
            runs = res.throughput.get((rt, line_size), [])
            if not runs:
                out.append(f"| {label} | {rt} | n/a | n/a | not run | | | | |")
                continue
            mbs, cpu = figures[rt]
            lost = sum(r.lost for r in runs)
            bad = sum(r.bad_records for r in runs)
            check = "all" if lost == 0 and bad == 0 else f"LOST {lost} B, {bad} bad records"
            cm = figures.get("conmon", (None, None))
            ctd = figures.get("containerd", (None, None))
            peer = rt in ("rktlet", "containerd")
            vs_cm = ratio(mbs, cm[0]) if peer else ""
            vs_ctd = ratio(mbs, ctd[0]) if rt == "rktlet" else ""
            cpu_cm = ratio(cpu, cm[1]) if peer else ""
            each = ", ".join(f"{r.expected / MB / r.seconds:.0f}" for r in runs)
            name = "limit: same writer → `cat > file`" if rt == LIMIT else rt
            of_limit = ratio(mbs, figures[LIMIT][0]) if LIMIT in figures and rt != LIMIT else ""
            out.append(
                f"| {label} | {name} | {mbs:.0f} ({each}) | {cpu:.2f} "
                f"| {check} ({len(runs)} runs) | {vs_cm} | {vs_ctd} | {cpu_cm} | {of_limit} |"
            )
    return out


def memory_table(res: Results) -> list[str]:
    out = [
        "| containers in the pod | runtime (monitor) | RSS MiB | PSS MiB | peak RSS MiB "
        "| RSS vs containerd | RSS vs conmon | PSS vs conmon |",
        "|---|---|---|---|---|---|---|---|",
    ]
    monitor = {
        "rktlet": "iottymux monitor (1 per pod)",
        "containerd": "shim (1 per pod)",
        "conmon": "conmon (1 per container, summed)",
    }
    for n in (1, 8):
        figs: dict[str, tuple[float, float, float]] = {}
        for rt in RUNTIMES:
            ms = res.memory.get((rt, n), [])
            if ms:
                figs[rt] = (
                    med([m.rss / 1024 for m in ms]),
                    med([m.pss / 1024 for m in ms]),
                    med([m.peak_rss / 1024 for m in ms]),
                )
        for rt in RUNTIMES:
            if rt not in figs:
                out.append(f"| {n} | {rt} | n/a | n/a | n/a | | | |")
                continue
            rss, pss, peak = figs[rt]
            ms = res.memory[(rt, n)]
            note = "" if all(m.logged_ok for m in ms) else " (LOG INCOMPLETE)"
            ctd_rss = figs["containerd"][0] if "containerd" in figs else None
            cm_rss, cm_pss = figs["conmon"][:2] if "conmon" in figs else (None, None)
            vs_ctd = ratio(rss, ctd_rss) if rt != "containerd" else ""
            vs_cm = ratio(rss, cm_rss) if rt != "conmon" else ""
            pss_cm = ratio(pss, cm_pss) if rt != "conmon" else ""
            out.append(
                f"| {n} | {rt}: {monitor[rt]}{note} | {rss:.1f} | {pss:.1f} | {peak:.1f} "
                f"| {vs_ctd} | {vs_cm} | {pss_cm} |"
            )
    daemon = [m.daemon_rss for n in (1, 8) for m in res.memory.get(("containerd", n), [])]
    if daemon:
        out.append("")
        out.append(
            f"containerd's daemon RSS besides (shared by all pods), median: "
            f"{med([d / 1024 for d in daemon]):.1f} MiB."
        )
    return out


def lifecycle_table(res: Results) -> list[str]:
    out = [
        f"| operation | {RKTLET} p50 ms | {RKTLET_EXEC} p50 ms | containerd p50 ms | conmon "
        f"| {RKTLET}/containerd | {RKTLET}/{RKTLET_EXEC} |",
        "|---|---|---|---|---|---|---|",
    ]
    rk = res.lifecycle.get(RKTLET, {})
    rx = res.lifecycle.get(RKTLET_EXEC, {})
    ctd = res.lifecycle.get("containerd", {})
    rows: list[tuple[str, list[float], list[float], list[float]]] = [
        (op, rk.get(op, []), rx.get(op, []), ctd.get(op, [])) for op in OPS
    ]
    for name, ops in SUMS:
        rows.append((name, sum_rows(rk, ops), sum_rows(rx, ops), sum_rows(ctd, ops)))
    for name, r, x, c in rows:
        r50 = med(r) if r else None
        x50 = med(x) if x else None
        c50 = med(c) if c else None
        out.append(
            f"| {name} | {num(r50)} | {num(x50)} | {num(c50)} | n/a "
            f"| {ratio(r50, c50)} | {ratio(r50, x50)} |"
        )
    return out


def sum_rows(samples: dict[str, list[float]], ops: tuple[str, ...]) -> list[float]:
    if not samples or any(not samples.get(op) for op in ops):
        return []
    return [sum(parts) for parts in zip(*(samples[op] for op in ops), strict=True)]


def report(res: Results) -> dict[str, str]:
    """RESULTS.md's sections written by this script (see bench/_results.py)."""
    from bench.monitor_memory import section_text

    sections = {
        "compare-header": "\n".join(
            [
                "# Peer benchmarks: rktlet vs containerd vs conmon",
                "",
                "Written by `bench/compare.py` (issues 8 and 14) unless a section says "
                "otherwise. Same workloads on the runtimes in one run; medians over the runs; "
                "each runtime in a network namespace of the script's. The log writer everywhere "
                "is `bench/writer.c`, a static C program built by the benchmark (`gcc -static "
                "-O2`) that writes fixed-size lines in 1 MiB blocks: bind-mounted read-only "
                "into the busybox containers of rktlet and containerd, copied into conmon's "
                "rootfs, and run directly for the limit row.",
                "",
                *[f"- {h}" for h in res.header],
            ]
        ),
        "throughput": "\n".join(
            [
                "## Container stdout → CRI log throughput",
                "",
                f"{res.size_mb} MB per run, {res.runs} runs per case (runtimes rotated each "
                "round). Writer: `writer L BYTES` (BYTES rounded down to a multiple of the line "
                "size L). Time: from just before StartContainer (conmon: `runc start`) to the "
                "log file's last write (mtime after the exit). rktlet and containerd run as "
                "real daemons and are driven through CRI (RunPodSandbox, CreateContainer, "
                "StartContainer, ContainerStatus polled until EXITED); rktlet's log is written "
                "by its real pod monitor (iottymux, OCI mode), started by the daemon. conmon is "
                "run directly with runc and `-l k8s-file:PATH`. Every log is parsed after the "
                "run and the content bytes of its records counted (`F` records count their "
                "newline): the *bytes logged* column says whether every run logged every byte. "
                "CPU s/GB: utime+stime of rktlet's pod monitor; containerd's shim + containerd "
                "daemon; conmon. The *limit* row is the same writer (in a netns of ours) "
                "piped straight into `cat > file`, no runtime: the ceiling of this setup (its "
                "CPU is cat's). The page cache is warmed first by writing and deleting one "
                "run's worth of bytes. Ratios are row ÷ peer: above 1 is faster for MB/s, above "
                "1 is costlier for CPU/GB. Each run's MB/s is listed after the median: on a "
                "shared 2-core machine they spread (see the load average above).",
                "",
                *throughput_table(res),
            ]
        ),
        "memory-per-pod": "\n".join(
            [
                "## Monitor memory per pod (1 and 8 containers)",
                "",
                f"Each container logs {MEMORY_BYTES // MB} MB of 100 B lines and then sleeps; "
                f"measured once every log holds its bytes, after {QUIET_SECONDS} s quiet. RSS "
                "and PSS from /proc/PID/smaps_rollup, peak is VmHWM; summed over the pod's "
                "monitors (conmon: one per container).",
                "",
                *memory_table(res),
            ]
        ),
        "lifecycle": "\n".join(
            [
                "## Pod and container lifecycle, ExecSync",
                "",
                f"`bench/lifecycle.py`'s pod cycle, {res.lifecycle_pods} pods per runtime, one "
                "at a time, runtimes alternating (busybox `sleep 3600`, ExecSync `true`, "
                "StopContainer timeout 0). conmon has no pods and no CRI: n/a. containerd "
                "creates the runc container in StartContainer, rktlet in CreateContainer, so "
                f"compare the sums too. *{RKTLET_EXEC}*: the same rktlet with "
                "`RKTLET_NO_FORK_SERVER=1`, every pod monitor started as a new interpreter "
                "(before issue 14): the RunPodSandbox row shows what the fork server saves.",
                "",
                *lifecycle_table(res),
            ]
        ),
    }
    if res.scales:
        sections["memory-at-scale"] = "\n".join(
            section_text(res.scale, res.scales, res.scale_mb * MB)
        )
    errors = [f"- {k}: {v}" for k, v in res.errors.items()]
    sections["compare-errors"] = "\n".join(["## Errors", "", *errors]) if errors else ""
    return sections


#: Sections other benchmarks own; written here only where the file has none yet.
PLACEHOLDERS = {
    "attach-fanout": "## Attach fan-out\n\n*Not run yet: `bench/attach_fanout.py --results` "
    "writes this section.*",
    "node-polling": "## The calls the kubelet repeats (issue 14 §2)\n\n*Not measured yet: "
    "this section is reserved for `bench/node.py` (100 pods of 3 containers, a kubelet-like "
    "poll loop, per-RPC p50/p99 and daemon CPU against containerd).*",
}


# -- the run ------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


TOOLS = ("ip", "nsenter", "runc", "conmon", "containerd", "docker-registry", "gcc")


def preflight(script: str) -> int:
    """0 when this machine can run the peer benchmarks (root, the tools), else 2."""
    if os.geteuid() != 0:
        print(f"{script}: needs root (netns, mounts, cgroups)", file=sys.stderr)
        return 2
    for tool in TOOLS:
        if shutil.which(tool) is None:
            print(f"{script}: {tool} is not installed", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    return 0


@dataclass
class Peers:
    """The runtimes side by side, all started, and the writer they all run."""

    writer: Path
    rktlet: Target
    rktlet_exec: Target
    containerd: Target
    conmon: Conmon

    def cri_targets(self) -> list[Target]:
        return [self.rktlet, self.rktlet_exec, self.containerd]


def run_with_peers(script: str, body: Callable[[Peers, Path], int]) -> int:
    """Check the machine, set the peers up, run ``body(peers, work dir)``, and remove
    everything made, whatever happens; ``body``'s exit status."""
    if code := preflight(script):
        return code
    token = secrets.token_hex(4)
    base = Path(tempfile.mkdtemp(prefix=f"rktlet-bench-{script.removesuffix('.py')}-"))
    cleanups = Cleanups()
    cleanups.add("remove the temp dir", lambda: shutil.rmtree(base, ignore_errors=True))
    try:
        return body(setup_peers(base, token, cleanups), base)
    except (KeyboardInterrupt, SystemExit) as exc:
        log(f"interrupted ({exc!r})")
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        log("cleaning up")
        cleanups.run()


def setup_peers(base: Path, token: str, cleanups: Cleanups) -> Peers:
    """rktlet (with and without its fork server), containerd and conmon, in netns of ours."""
    from fixtures.build_images import build_all

    cleanups.add("remove the cgroups", lambda: remove_cgroup_tree(f"/rktlet-bench-{token}"))
    writer = build_writer(base / "writer")
    layout = build_all(base / "images" / "layout")
    log_root = base / "pod-logs"
    log("starting rktlet")
    rk = setup_rktlet(base / "rktlet", layout, token, cleanups, log_root, False)
    check_ready(rk)
    rk_exec = setup_rktlet(
        base / "rktlet-exec",
        layout,
        token,
        cleanups,
        log_root,
        False,
        label=RKTLET_EXEC,
        extra_env={"RKTLET_NO_FORK_SERVER": "1"},
    )
    check_ready(rk_exec)
    log("starting containerd")
    ctd = setup_containerd(base / "containerd", layout, token, cleanups, log_root)
    start_containerd(ctd)
    cm_netns = NetNS("rktlet-bench-m").create()
    cleanups.add("delete conmon's netns", cm_netns.delete)
    conmon = Conmon(base / "conmon", cm_netns, f"/rktlet-bench-{token}/conmon", writer)
    cleanups.add("conmon: containers, processes, leftovers", conmon.cleanup)
    return Peers(writer, rk, rk_exec, ctd, conmon)


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def lifecycle_runs(targets: list[Target], pods: int, warmup: int, res: Results) -> None:
    for i in range(warmup + pods):
        # Rotated: each runtime follows each other one equally often.
        k = i % len(targets)
        order = targets[k:] + targets[:k]
        for target in order:
            if target.label in res.errors:
                continue
            try:
                target.pod_cycle(f"lc-{i}", 0, record=i >= warmup)
            except (grpc.RpcError, RuntimeError, OSError) as exc:
                res.errors[f"{target.label} lifecycle"] = describe(exc)
    for target in targets:
        if f"{target.label} lifecycle" not in res.errors:
            res.lifecycle[target.label] = target.samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1000, help="MB per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians over them)")
    parser.add_argument("--lifecycle-pods", type=int, default=10, help="pods per runtime")
    parser.add_argument("--warmup", type=int, default=2, help="lifecycle pods not counted")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory parts")
    parser.add_argument(
        "--scale-pods", default="1,30,100", help="pod counts of the memory-at-scale part"
    )
    parser.add_argument(
        "--scale-mb", type=int, default=8, help="MB each container logs (memory at scale)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args(argv)
    res = Results(args.size_mb, args.runs, lifecycle_pods=args.lifecycle_pods)
    return run_with_peers("compare.py", lambda peers, base: _compare(args, res, peers, base))


def _compare(args: argparse.Namespace, res: Results, peers: Peers, base: Path) -> int:
    timeout = max(600.0, args.size_mb * 1.0)
    load_before = os.getloadavg()
    writer, rk, rk_exec, ctd, conmon = (
        peers.writer,
        peers.rktlet,
        peers.rktlet_exec,
        peers.containerd,
        peers.conmon,
    )

    runners: dict[str, Callable[[int, int], Run]] = {
        "rktlet": lambda ls, n: cri_throughput(rk, writer, ls, n, timeout),
        "containerd": lambda ls, n: cri_throughput(ctd, writer, ls, n, timeout),
        "conmon": lambda ls, n: conmon.throughput(ls, n, timeout),
        LIMIT: lambda ls, n: conmon.limit(ls, n),
    }
    warm_up(base, args.size_mb * MB)
    for line_size, label in LINE_SIZES:
        total = args.size_mb * MB // line_size * line_size
        for rnd in range(args.runs):
            order = TP_ROWS[rnd % 4 :] + TP_ROWS[: rnd % 4]
            for rt in order:
                key = f"{rt} throughput {label}"
                if key in res.errors:
                    continue
                try:
                    run = runners[rt](line_size, total)
                except (grpc.RpcError, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    res.errors[key] = describe(e)
                    log(f"{key}: {res.errors[key]}")
                    continue
                res.throughput.setdefault((rt, line_size), []).append(run)
                log(
                    f"{label} {rt} round {rnd + 1}: "
                    f"{run.expected / MB / run.seconds:.0f} MB/s, "
                    f"CPU {run.cpu:.2f} s, lost {run.lost} B, bad records {run.bad_records}"
                )

    if not args.no_memory:
        mem_runners: dict[str, Callable[[int], Memory]] = {
            "rktlet": lambda n: cri_memory(rk, writer, n),
            "containerd": lambda n: cri_memory(ctd, writer, n),
            "conmon": conmon.memory,
        }
        for n in (1, 8):
            for rnd in range(args.runs):
                order = RUNTIMES[rnd % 3 :] + RUNTIMES[: rnd % 3]
                for rt in order:
                    key = f"{rt} memory {n}"
                    if key in res.errors:
                        continue
                    try:
                        m = mem_runners[rt](n)
                    except (grpc.RpcError, RuntimeError, OSError) as e:
                        res.errors[key] = describe(e)
                        log(f"{key}: {res.errors[key]}")
                        continue
                    res.memory.setdefault((rt, n), []).append(m)
                    log(
                        f"memory {n} ctr {rt}: RSS {m.rss / 1024:.1f} MiB, "
                        f"PSS {m.pss / 1024:.1f} MiB, logged ok {m.logged_ok}"
                    )

    res.scales = [int(n) for n in args.scale_pods.split(",") if n] if not args.no_memory else []
    res.scale_mb = args.scale_mb
    if res.scales:
        from bench import monitor_memory as mm

        size = args.scale_mb * MB
        ksm = os.access(mm.KSM / "run", os.W_OK)
        scale_runners: dict[str, Callable[[int], Any]] = {
            RKTLET: lambda n: mm.cri_scale(rk, writer, n, size, merge=ksm),
            RKTLET_EXEC: lambda n: mm.cri_scale(rk_exec, writer, n, size),
            "containerd": lambda n: mm.cri_scale(ctd, writer, n, size),
            "conmon": lambda n: mm.conmon_scale(conmon, n, size),
        }
        mm.run_scales(scale_runners, res.scales, res.scale, res.errors)

    log(f"lifecycle: {args.lifecycle_pods} pods per runtime")
    lifecycle_runs([rk, rk_exec, ctd], args.lifecycle_pods, args.warmup, res)

    load_after = os.getloadavg()
    res.header = [
        *machine_lines(),
        f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        *version_lines([rk, rk_exec, ctd]),
        f"conmon: {tool_version([CONMON, '--version'])}",
        f"busybox: {tool_version(['busybox'])}",
        f"gcc (the writer's): {tool_version(['gcc', '--version'])}",
        f"command: `bench/compare.py --size-mb {args.size_mb} --runs {args.runs} "
        f"--lifecycle-pods {args.lifecycle_pods} --scale-pods {args.scale_pods} "
        f"--scale-mb {args.scale_mb}`",
    ]
    sections = report(res)
    update_results(args.out, sections, placeholders=PLACEHOLDERS)
    print("\n\n".join(body for body in sections.values() if body))
    lost = any(r.lost or r.bad_records for runs in res.throughput.values() for r in runs)
    return 1 if res.errors or lost else 0


if __name__ == "__main__":
    sys.exit(main())
