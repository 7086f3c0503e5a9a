"""Monitor memory at node scale: RSS, PSS and private dirty per pod at 1, 30 and 100 pods.

In one run, for each runtime and each scale, N pods of one container each are created;
every container runs the static writer (``bench/writer.c``: 8 MB of 100-byte lines,
then it sleeps).  Once every log holds its bytes and the node has been quiet for
``QUIET_SECONDS``, /proc/PID/smaps_rollup is read for each pod's log-path process:

- **rktlet**: the pod's iottymux monitor, forked by the daemon's monitor fork server
  (the default);
- **rktlet, KSM on**: the same monitors again once the host's ksmd (switched on for
  the measurement, the host's setting restored after) has merged the pages they offer
  it (``iottymux/pagemerge.py``), with ksmd's CPU seconds per minute then;
- **rktlet, no fork server**: the same daemon with ``RKTLET_NO_FORK_SERVER=1``, each
  monitor its own interpreter (how every monitor started before the fork server);
- **containerd** 1.6: the pod's ``containerd-shim-runc-v2`` (one per pod under CRI);
- **conmon** 2.1.6: one per container, run directly with runc as CRI-O would, on a
  bundle whose rootfs is the host's busybox plus the writer.

Per pod: the median over the N pods.  The helpers every pod relies on are shown apart
and amortised in the last columns: rktlet's fork server, containerd's daemon (its
RSS holds every pod's log copying).  PSS divides each shared page among the
processes mapping it, so a monitor's PSS falls as pods are added (the fork server's
heap is shared by all); private dirty is what each pod costs by itself.  The order
of the runtimes rotates with the scale.  Everything made is removed at the end.

Usage (as root)::

    .venv/bin/python bench/monitor_memory.py [--pods 1,30,100] [--mb 8] [--no-ksm]
        [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._cri_peer import RktletDaemon
from bench._results import update
from bench._writer import writer_args
from bench.compare import (
    RKTLET,
    RKTLET_EXEC,
    Conmon,
    Peers,
    container_config,
    describe,
    remove_pod,
    run_with_peers,
    wait_logged,
)
from bench.lifecycle import (
    Target,
    log,
    machine_lines,
    version_lines,
)
from cri.api import api_pb2

MB = 1_000_000
QUIET_SECONDS = 2.0
RPC_TIMEOUT = 120.0
SCALES = (1, 30, 100)
CONTAINERD = "containerd"
CONMON = "conmon"
RKTLET_KSM = "rktlet, KSM on"
RUNTIMES = (RKTLET, RKTLET_KSM, RKTLET_EXEC, CONTAINERD, CONMON)
PROCESS = {
    RKTLET: "monitor (forked), 1 per pod",
    RKTLET_KSM: "the same monitors once ksmd merged their pages",
    RKTLET_EXEC: "monitor (own interpreter), 1 per pod",
    CONTAINERD: "shim, 1 per pod",
    CONMON: "conmon, 1 per container",
}
HELPER = {
    RKTLET: "fork server",
    RKTLET_KSM: "fork server",
    RKTLET_EXEC: "",
    CONTAINERD: "containerd daemon",
    CONMON: "",
}
KSM = Path("/sys/kernel/mm/ksm")
#: Full passes of ksmd over the offered memory before measuring: the first puts
#: pages in its unstable tree, the second merges those that did not change, the
#: third settles what the second's merging broke.
KSM_SCANS = 3
KSMD_WINDOW = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Mem:
    """One process's memory in KiB."""

    rss: int
    pss: int
    private_dirty: int


@dataclass
class Scale:
    """One runtime at one scale: a Mem per pod, and the shared helpers'."""

    pods: list[Mem]
    helpers: list[Mem] = field(default_factory=list)
    logged_ok: bool = True
    #: The same pods measured again with KSM on (rktlet only), and ksmd's cost then.
    merged: Scale | None = None
    ksmd: KsmdCost | None = None


@dataclass
class KsmdCost:
    """What ksmd spent keeping the pods' pages merged, at the host's scan rate."""

    cpu_s_per_min: float
    pages_sharing: int
    pages_to_scan: int
    sleep_ms: int


def proc_mem(pid: int) -> Mem:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return Mem(fields.get("Rss", 0), fields.get("Pss", 0), fields.get("Private_Dirty", 0))


def cmdlines() -> dict[int, bytes]:
    """Every process's command line (one pass over /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read()
    return found


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    return kids


def pod_processes(target: Target, pod_ids: Sequence[str]) -> dict[str, list[int]]:
    """Each pod's log-path processes: rktlet's monitor, containerd's shim."""
    procs = cmdlines()
    daemon = target.daemon
    found: dict[str, list[int]] = {}
    for pod_id in pod_ids:
        if isinstance(daemon, RktletDaemon):
            needles = [b"iottymux", b"monitor", f"{daemon.run_dir}/pods/{pod_id}".encode()]
        else:
            needles = [b"containerd-shim", daemon.socket.encode(), pod_id.encode()]
        found[pod_id] = [pid for pid, line in procs.items() if all(n in line for n in needles)]
    return found


def helper_pids(target: Target) -> list[int]:
    """rktlet's fork server (a child of the daemon); containerd's daemon."""
    daemon_pid = target.daemon.daemon_pid()
    if daemon_pid is None:
        return []
    if isinstance(target.daemon, RktletDaemon):
        procs = cmdlines()
        return [pid for pid in children(daemon_pid) if b"forkserver" in procs.get(pid, b"")]
    return [daemon_pid]


def measure_pods(target: Target, pod_ids: Sequence[str]) -> tuple[list[Mem], list[Mem]]:
    """Each pod's summed log-path processes, and the shared helpers."""
    per_pod = pod_processes(target, pod_ids)
    missing = [p[:12] for p, pids in per_pod.items() if not pids]
    if missing:
        raise RuntimeError(f"{target.label}: no monitor/shim found for pods {missing}")
    mems = []
    for pids in per_pod.values():
        each = [proc_mem(pid) for pid in pids]
        mems.append(
            Mem(
                sum(m.rss for m in each),
                sum(m.pss for m in each),
                sum(m.private_dirty for m in each),
            )
        )
    return mems, [proc_mem(pid) for pid in helper_pids(target)]


def _ksm_value(name: str) -> int:
    return int((KSM / name).read_text())


@contextlib.contextmanager
def ksm_running() -> Iterator[None]:
    """ksmd on for the block; the host's setting back after it, unmerging what it merged."""
    switch = KSM / "run"
    before = switch.read_text().strip()
    switch.write_text("1")
    try:
        yield
    finally:
        if before != "1":
            switch.write_text("2")  # unmerge every page merged for this run
        switch.write_text(before)


def wait_ksm_scans(scans: int, timeout: float = 600.0) -> None:
    # ksmd reports its passes only through this counter: polled, there is no event.
    target = _ksm_value("full_scans") + scans
    deadline = time.monotonic() + timeout
    while _ksm_value("full_scans") < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ksmd did not make {scans} full scans in {timeout:g} s")
        time.sleep(0.5)


def ksmd_cpu_seconds() -> float:
    for pid in cmdlines():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "ksmd":
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / CLK_TCK
    raise RuntimeError("no ksmd thread: this kernel has no KSM")


def merged_scale(target: Target, pod_ids: Sequence[str]) -> tuple[Scale, KsmdCost]:
    """The pods again once ksmd merged what their monitors offer, and ksmd's CPU then."""
    with ksm_running():
        wait_ksm_scans(KSM_SCANS)
        mems, helpers = measure_pods(target, pod_ids)
        before = ksmd_cpu_seconds()
        time.sleep(KSMD_WINDOW)  # a measuring window, not a synchronisation
        spent = ksmd_cpu_seconds() - before
        cost = KsmdCost(
            spent * 60.0 / KSMD_WINDOW,
            _ksm_value("pages_sharing"),
            _ksm_value("pages_to_scan"),
            _ksm_value("sleep_millisecs"),
        )
    return Scale(mems, helpers), cost


def cri_scale(target: Target, writer: Path, pods: int, size: int, merge: bool = False) -> Scale:
    rt = target.daemon.runtime
    pod_ids: list[str] = []
    logs: list[Path] = []
    dirs: list[Path] = []
    try:
        for i in range(pods):
            config = target.pod_config(f"s{pods}-{i}-{secrets.token_hex(2)}")
            dirs.append(Path(config.log_directory))
            pod_id = rt.RunPodSandbox(
                api_pb2.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT
            ).pod_sandbox_id
            pod_ids.append(pod_id)
            ctr_id = rt.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id,
                    config=container_config(
                        target, "c", writer, writer_args(100, size, then_sleep=3600)
                    ),
                    sandbox_config=config,
                ),
                timeout=RPC_TIMEOUT,
            ).container_id
            rt.StartContainer(
                api_pb2.StartContainerRequest(container_id=ctr_id), timeout=RPC_TIMEOUT
            )
            logs.append(Path(config.log_directory) / "c" / "0.log")
        ok = wait_logged(logs, size, 300.0)
        time.sleep(QUIET_SECONDS)
        mems, helpers = measure_pods(target, pod_ids)
        scale = Scale(mems, helpers, ok)
        if merge:
            scale.merged, scale.ksmd = merged_scale(target, pod_ids)
            scale.merged.logged_ok = ok
        return scale
    finally:
        for pod_id in pod_ids:
            remove_pod(target, pod_id)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def conmon_scale(conmon: Conmon, pods: int, size: int) -> Scale:
    cids = [f"cm-{secrets.token_hex(4)}" for _ in range(pods)]
    paths = [conmon.base / "logs" / cid / "0.log" for cid in cids]
    try:
        pids = [
            conmon.create(cid, writer_args(100, size, then_sleep=3600), path)
            for cid, path in zip(cids, paths, strict=True)
        ]
        for cid in cids:
            conmon.start(cid)
        ok = wait_logged(paths, size, 300.0)
        time.sleep(QUIET_SECONDS)
        return Scale([proc_mem(pid) for pid in pids], [], ok)
    finally:
        for cid, path in zip(cids, paths, strict=True):
            conmon.remove(cid)
            shutil.rmtree(path.parent, ignore_errors=True)


# -- the report -------------------------------------------------------------------------


def _mib(kib: float) -> str:
    return f"{kib / 1024:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def scale_table(results: dict[tuple[str, int], Scale], scales: Sequence[int]) -> list[str]:
    out = [
        "| pods | runtime: process | RSS / pod | PSS / pod | private dirty / pod "
        "| helper PSS (all pods) | PSS / pod incl. helper | PSS vs conmon | PSS vs containerd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in scales:
        per_pod_pss: dict[str, float] = {}
        for rt in RUNTIMES:
            res = results.get((rt, n))
            if res is not None and res.pods:
                per_pod_pss[rt] = statistics.median(m.pss for m in res.pods)
        for rt in RUNTIMES:
            res = results.get((rt, n))
            if res is None or not res.pods:
                out.append(f"| {n} | {rt} | not run | | | | | | |")
                continue
            rss = statistics.median(m.rss for m in res.pods)
            pss = per_pod_pss[rt]
            dirty = statistics.median(m.private_dirty for m in res.pods)
            helper = sum(m.pss for m in res.helpers)
            total = (sum(m.pss for m in res.pods) + helper) / len(res.pods)
            note = "" if res.logged_ok else " (LOG INCOMPLETE)"
            helper_text = f"{_mib(helper)} ({HELPER[rt]})" if HELPER[rt] else "-"
            vs_cm = _ratio(pss, per_pod_pss.get(CONMON)) if rt != CONMON else ""
            vs_ctd = _ratio(pss, per_pod_pss.get(CONTAINERD)) if rt != CONTAINERD else ""
            out.append(
                f"| {n} | {rt}: {PROCESS[rt]}{note} | {_mib(rss)} | {_mib(pss)} | {_mib(dirty)} "
                f"| {helper_text} | {_mib(total)} | {vs_cm} | {vs_ctd} |"
            )
    return out


def describe_run(scales: Sequence[int], size: int) -> str:
    return (
        f"Pods of one container each ({', '.join(map(str, scales))} pods); each container "
        f"runs the static writer: {size // MB} MB of 100-byte lines, then it sleeps. Measured "
        f"once every log holds its bytes and after {QUIET_SECONDS:g} s quiet, from "
        "/proc/PID/smaps_rollup; MiB, medians over the pods. rktlet's monitors are forked by "
        "the daemon's fork server (the default); *no fork server* is the same daemon with "
        "`RKTLET_NO_FORK_SERVER=1`, every monitor its own interpreter as before. "
        f"*{RKTLET_KSM}*: the forked monitors measured again after the host's ksmd, switched "
        f"on for the measurement (`/sys/kernel/mm/ksm/run` = 1, its scan rate as the host has "
        f"it), made {KSM_SCANS} full passes over the memory they offer it "
        "(`iottymux/pagemerge.py`: their private writable mappings, never the containers'); "
        "the host's setting is restored after, unmerging what was merged. containerd: "
        "its shim (one per pod under CRI); conmon: one per container, run directly with runc. "
        "Helpers shared by all pods (rktlet's fork server, containerd's daemon, which copies "
        "every pod's logs) are amortised in *PSS / pod incl. helper*. PSS shares each page "
        "among the processes that map it, so it falls as pods are added; private dirty is "
        "what a pod costs by itself."
    )


def ksmd_lines(results: dict[tuple[str, int], Scale], scales: Sequence[int]) -> list[str]:
    out = []
    for n in scales:
        res = results.get((RKTLET, n))
        if res is not None and res.ksmd is not None:
            k = res.ksmd
            out.append(
                f"- ksmd with {n} pods' monitors merged: {k.cpu_s_per_min:.2f} CPU s/min over "
                f"{KSMD_WINDOW:g} s ({k.pages_sharing} pages sharing; pages_to_scan "
                f"{k.pages_to_scan}, sleep_millisecs {k.sleep_ms})"
            )
    return out


def section_text(
    results: dict[tuple[str, int], Scale], scales: Sequence[int], size: int
) -> list[str]:
    """The memory-at-scale section of bench/RESULTS.md."""
    ksmd = ksmd_lines(results, scales)
    return [
        "## Monitor memory at node scale (issue 14 §1)",
        "",
        describe_run(scales, size),
        "",
        *scale_table(results, scales),
        *(["", *ksmd] if ksmd else []),
    ]


# -- the run ------------------------------------------------------------------------------


def run_scales(
    runners: dict[str, Callable[[int], Scale]],
    scales: Sequence[int],
    results: dict[tuple[str, int], Scale],
    errors: dict[str, str],
) -> None:
    for k, n in enumerate(scales):
        order = RUNTIMES[k % len(RUNTIMES) :] + RUNTIMES[: k % len(RUNTIMES)]
        for rt in order:
            if rt not in runners or f"{rt} memory at scale" in errors:
                continue
            log(f"memory at scale: {n} pods on {rt}")
            try:
                res = runners[rt](n)
            except (grpc.RpcError, RuntimeError, OSError) as exc:
                errors[f"{rt} memory at scale"] = describe(exc)
                log(f"{rt} memory at scale: {errors[f'{rt} memory at scale']}")
                continue
            results[(rt, n)] = res
            if res.merged is not None:
                results[(RKTLET_KSM, n)] = res.merged
            log(
                f"{n} pods on {rt}: PSS/pod {_mib(statistics.median(m.pss for m in res.pods))} "
                f"MiB, private dirty/pod "
                f"{_mib(statistics.median(m.private_dirty for m in res.pods))} MiB"
            )


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", default=",".join(map(str, SCALES)), help="scales, e.g. 1,30")
    parser.add_argument("--mb", type=int, default=8, help="MB each container logs first")
    parser.add_argument(
        "--no-ksm", action="store_true", help=f"leave KSM alone (no *{RKTLET_KSM}* row)"
    )
    parser.add_argument("--results", type=Path, help="also write the section into this file")
    args = parser.parse_args(argv)
    scales = [int(x) for x in args.pods.split(",") if x]
    size = args.mb * MB
    ksm = not args.no_ksm
    if ksm and not os.access(KSM / "run", os.W_OK):
        log(f"{KSM / 'run'} is not writable here: no {RKTLET_KSM!r} row")
        ksm = False
    return run_with_peers(
        "monitor_memory.py",
        lambda peers, _base: _measure(peers, scales, size, ksm, args.results),
    )


def _measure(
    peers: Peers, scales: list[int], size: int, ksm: bool, results_file: Path | None
) -> int:
    load_before = os.getloadavg()
    writer = peers.writer
    runners: dict[str, Callable[[int], Scale]] = {
        RKTLET: lambda n: cri_scale(peers.rktlet, writer, n, size, merge=ksm),
        RKTLET_EXEC: lambda n: cri_scale(peers.rktlet_exec, writer, n, size),
        CONTAINERD: lambda n: cri_scale(peers.containerd, writer, n, size),
        CONMON: lambda n: conmon_scale(peers.conmon, n, size),
    }
    results: dict[tuple[str, int], Scale] = {}
    errors: dict[str, str] = {}
    run_scales(runners, scales, results, errors)
    load_after = os.getloadavg()
    header = [
        *machine_lines(),
        f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        *version_lines(peers.cri_targets()),
        f"command: `bench/monitor_memory.py --pods {','.join(map(str, scales))} "
        f"--mb {size // MB}{'' if ksm else ' --no-ksm'}`",
    ]
    body = section_text(results, scales, size)
    print("\n".join(header))
    print()
    print("\n".join(body))
    for key, value in errors.items():
        print(f"error: {key}: {value}")
    if results_file is not None and not errors:
        text = [body[0], "", *(f"- {line}" for line in header), "", *body[2:]]
        update(results_file, {"memory-at-scale": "\n".join(text)})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
