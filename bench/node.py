"""The calls the kubelet repeats: rktlet against containerd at node scale, same run.

Each runtime gets --pods pods of --containers containers (busybox ``sleep 3600``,
kubelet-style labels), made through CRI as the kubelet makes them (ImageStatus
before every CreateContainer).  Then a kubelet-like poll loop runs against one
runtime at a time, each for --seconds, runtimes alternating run by run, at the
kubelet's own call mix and rate:

- every second, the PLEG relist: ListPodSandbox and ListContainers, unfiltered;
- every pod once per --status-period (10 s), spread evenly: what the kubelet's
  ``GetPodStatus`` does -- ListPodSandbox filtered by the pod's uid label,
  PodSandboxStatus, ListContainers filtered by the pod's uid label, then
  ContainerStatus for each container;
- every --stats-period (10 s), what the eviction manager's summary asks of a CRI
  stats provider: ListContainerStats, ListPodSandboxStats and ImageFsInfo;
- ImageStatus at --image-checks per second, the kubelet's check before each
  container start (a node restarting one container a second), and ListImages
  every 30 s (the image manager's cache refresh).

The four lanes run in threads of their own, as the kubelet's loops run in
goroutines of their own, over one gRPC channel per runtime; a lane that falls
behind does not bunch its calls up, it skips to the next due one (as a Go ticker
drops ticks).  Latency is the client's wall time per call; per-RPC p50 and p99
are taken per run, and the table shows their medians over --runs runs.

CPU: utime+stime from /proc/<pid>/stat over the poll window, as CPU seconds per
minute: the daemon alone (rktlet's ``rktlet serve``; containerd's ``containerd``),
and apart from it what works per pod (rktlet's iottymux monitors, containerd's
shims, which answer its stats calls) and rktlet's own helpers (the monitor fork
server and the exec helper).  *idle* is the same daemon over --idle-seconds with
no calls at all, measured before each poll window.

--profile DIR then runs the poll loop once more against rktlet under py-spy
(``py-spy record --format raw``; not counted in the table) and prints the
functions the daemon spends its CPU in, by own time and by time below them.

Set-up (private sockets, roots, registries and CNI, each runtime in a network
namespace of this script's, all removed at the end even on failure) is
``bench/lifecycle.py``'s.  --results writes the table into bench/RESULTS.md's
``node-polling`` section; --json saves the figures, --before FILE puts an earlier
run's saved figures beside them (before/after an optimisation).

Usage (as root)::

    .venv/bin/python bench/node.py [--pods 100] [--containers 3] [--seconds 60]
        [--runs 3] [--results] [--json FILE] [--before FILE] [--profile DIR]
    .venv/bin/python bench/node.py --pods 10 --seconds 10 --runs 1   # a quick check
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
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from cri.api import api_pb2

CLK_TCK = os.sysconf("SC_CLK_TCK")
RPC_TIMEOUT = 60.0
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "node-polling"
#: The image manager refreshes its cache of the node's images this often (kubelet).
LIST_IMAGES_PERIOD = 30.0
UID_LABEL = "io.kubernetes.pod.uid"

#: Table rows, in the order the kubelet's loops make the calls.
RPCS = (
    "ListPodSandbox",
    "ListContainers",
    "ListPodSandbox (pod filter)",
    "PodSandboxStatus",
    "ListContainers (pod filter)",
    "ContainerStatus",
    "ListContainerStats",
    "ListPodSandboxStats",
    "ImageFsInfo",
    "ImageStatus",
    "ListImages",
)
#: The service each RPC belongs to; rows with a suffix name the RPC before it.
IMAGE_RPCS = {"ImageFsInfo", "ImageStatus", "ListImages"}


# -- the call plan (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One RPC of the plan: its table row and what it is about (the index of a pod, or
    of a container for ContainerStatus; -1 for calls about the whole node)."""

    rpc: str
    index: int = -1


@dataclass(frozen=True)
class Step:
    """Calls one lane makes back to back at ``at`` seconds into the window."""

    at: float
    calls: tuple[Call, ...]


@dataclass(frozen=True)
class Rates:
    """How often the kubelet makes each kind of call (seconds, or per second)."""

    relist: float = 1.0
    status: float = 10.0
    stats: float = 10.0
    image_checks: float = 1.0
    list_images: float = LIST_IMAGES_PERIOD


def plan(
    pods: int, containers: int, seconds: float, rates: Rates = Rates()
) -> dict[str, list[Step]]:
    """The poll loop over a window of ``seconds``, lane by lane, steps in time order."""

    def ticks(period: float, offset: float = 0.0) -> Iterable[float]:
        k = 0
        while (t := offset + k * period) < seconds:
            yield round(t, 6)
            k += 1

    lanes: dict[str, list[Step]] = {
        "relist": [
            Step(t, (Call("ListPodSandbox"), Call("ListContainers"))) for t in ticks(rates.relist)
        ],
        "stats": [
            Step(t, (Call("ListContainerStats"), Call("ListPodSandboxStats"), Call("ImageFsInfo")))
            for t in ticks(rates.stats)
        ],
    }
    status: list[Step] = []
    if pods:
        gap = rates.status / pods
        for t in ticks(gap):
            pod = round(t / gap) % pods
            calls = [
                Call("ListPodSandbox (pod filter)", pod),
                Call("PodSandboxStatus", pod),
                Call("ListContainers (pod filter)", pod),
            ]
            calls += [Call("ContainerStatus", pod * containers + c) for c in range(containers)]
            status.append(Step(t, tuple(calls)))
    lanes["status"] = status
    images = [Step(t, (Call("ImageStatus"),)) for t in ticks(1.0 / rates.image_checks)]
    images += [Step(t, (Call("ListImages"),)) for t in ticks(rates.list_images, 0.5)]
    lanes["images"] = sorted(images, key=lambda s: s.at)
    return lanes


def calls_per_second(lanes: dict[str, list[Step]], seconds: float) -> dict[str, float]:
    counts: dict[str, int] = {}
    for steps in lanes.values():
        for step in steps:
            for call in step.calls:
                counts[call.rpc] = counts.get(call.rpc, 0) + 1
    return {rpc: n / seconds for rpc, n in counts.items()}


# -- statistics and CPU (pure) ------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def stat_cpu_ticks(stat: bytes) -> int:
    """utime+stime (clock ticks) from a /proc/<pid>/stat line (the name may hold spaces)."""
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ticks(pids: Iterable[int]) -> dict[int, int]:
    """utime+stime of each of ``pids`` still alive (threads included, children not)."""
    found = {}
    for pid in pids:
        with (
            contextlib.suppress(OSError, IndexError, ValueError),
            open(f"/proc/{pid}/stat", "rb") as f,
        ):
            found[pid] = stat_cpu_ticks(f.read())
    return found


def cpu_per_minute(before: dict[int, int], after: dict[int, int], seconds: float) -> float:
    """CPU seconds per minute the processes in both samples used between them."""
    ticks = sum(after[p] - before[p] for p in before if p in after)
    return ticks / CLK_TCK / seconds * 60


@dataclass
class RunResult:
    """One poll window on one runtime."""

    latencies: dict[str, list[float]] = field(default_factory=dict)  # ms
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # s/min by process group
    idle_cpu: dict[str, float] = field(default_factory=dict)
    skipped: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "p50": {k: percentile(v, 50) for k, v in self.latencies.items() if v},
            "p99": {k: percentile(v, 99) for k, v in self.latencies.items() if v},
            "n": {k: len(v) for k, v in self.latencies.items()},
            "errors": self.errors,
            "cpu": self.cpu,
            "idle_cpu": self.idle_cpu,
            "skipped": self.skipped,
        }


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of each run's p50, p99 and CPU figures; samples and errors summed."""

    def med(key: str) -> dict[str, float]:
        names = {n for run in runs for n in run[key]}
        return {n: statistics.median(run[key][n] for run in runs if n in run[key]) for n in names}

    def total(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in runs:
            for n, v in run[key].items():
                out[n] = out.get(n, 0) + v
        return out

    return {
        "p50": med("p50"),
        "p99": med("p99"),
        "cpu": med("cpu"),
        "idle_cpu": med("idle_cpu"),
        "n": total("n"),
        "errors": total("errors"),
        "skipped": sum(run["skipped"] for run in runs),
        "runs": len(runs),
    }


# -- the report (pure) ------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def rpc_table(rk: dict[str, Any], ctd: dict[str, Any] | None, rate: dict[str, float]) -> list[str]:
    out = [
        "| RPC | calls/s | rktlet p50 ms | rktlet p99 ms | containerd p50 ms "
        "| containerd p99 ms | p50 rktlet/containerd | p99 rktlet/containerd "
        "| goal p50 ≤ containerd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rpc in RPCS:
        r50, r99 = rk["p50"].get(rpc), rk["p99"].get(rpc)
        c50 = ctd["p50"].get(rpc) if ctd else None
        c99 = ctd["p99"].get(rpc) if ctd else None
        met = "n/a" if r50 is None or c50 is None else ("met" if r50 <= c50 else "not met")
        out.append(
            f"| {rpc} | {rate.get(rpc, 0):.2f} | {_ms(r50)} | {_ms(r99)} | {_ms(c50)} | {_ms(c99)} "
            f"| {_ratio(r50, c50)} | {_ratio(r99, c99)} | {met} |"
        )
    return out


#: CPU rows: (label, rktlet's group, containerd's group)
CPU_ROWS = (
    ("daemon", "daemon", "daemon"),
    ("per-pod helpers (rktlet: monitors; containerd: shims)", "monitors", "shims"),
    ("rktlet's fork server and exec helper", "helpers", None),
)


def cpu_table(rk: dict[str, Any], ctd: dict[str, Any] | None) -> list[str]:
    out = [
        "| CPU s/min | rktlet, polled | containerd, polled | rktlet/containerd "
        "| rktlet, idle | containerd, idle |",
        "|---|---|---|---|---|---|",
    ]
    for label, rk_key, ctd_key in CPU_ROWS:
        r = rk["cpu"].get(rk_key)
        c = ctd["cpu"].get(ctd_key) if ctd and ctd_key else None
        ri = rk["idle_cpu"].get(rk_key)
        ci = ctd["idle_cpu"].get(ctd_key) if ctd and ctd_key else None
        ratio = _ratio(r, c) if ctd_key else ""
        out.append(f"| {label} | {_s(r)} | {_s(c)} | {ratio} | {_s(ri)} | {_s(ci)} |")
    return out


def goals(rk: dict[str, Any], ctd: dict[str, Any] | None) -> list[str]:
    if ctd is None:
        return ["Goals: containerd was not measured."]
    slower = [
        f"{rpc} ({rk['p50'][rpc]:.2f} vs {ctd['p50'][rpc]:.2f} ms)"
        for rpc in RPCS
        if rpc in rk["p50"] and rpc in ctd["p50"] and rk["p50"][rpc] > ctd["p50"][rpc]
    ]
    r, c = rk["cpu"].get("daemon"), ctd["cpu"].get("daemon")
    cpu_ok = r is not None and c is not None and r <= c
    lines = [
        "- every RPC p50 ≤ containerd's: "
        + ("**met**" if not slower else "**not met**: " + ", ".join(slower)),
        f"- daemon CPU at steady state ≤ containerd's: **{'met' if cpu_ok else 'not met'}** "
        f"({'-' if r is None else f'{r:.2f}'} vs {'-' if c is None else f'{c:.2f}'} s/min)",
    ]
    return lines


def describe(args: argparse.Namespace, rate: dict[str, float]) -> str:
    total = sum(rate.values())
    return (
        f"{args.pods} pods of {args.containers} containers on each runtime (busybox "
        "`sleep 3600`, kubelet labels), made through CRI. A kubelet-like poll loop, one runtime "
        f"at a time, {args.seconds:g} s per run, runtimes alternating, {args.runs} runs, "
        f"{total:.1f} calls/s in all: every second the PLEG relist (ListPodSandbox, "
        f"ListContainers); each pod every {args.status_period:g} s, spread evenly, the "
        "kubelet's GetPodStatus (ListPodSandbox and ListContainers filtered by the pod's uid "
        "label, PodSandboxStatus, ContainerStatus per container); every "
        f"{args.stats_period:g} s the eviction manager's summary (ListContainerStats, "
        f"ListPodSandboxStats, ImageFsInfo); ImageStatus {args.image_checks:g}/s (the check "
        "before each container start) and ListImages every 30 s (the image manager's cache). "
        "Four client threads (the kubelet's loops), one gRPC channel per runtime; latency is "
        "the client's wall time per call. p50/p99 per run, medians over the runs. CPU: "
        "utime+stime over the poll window, in CPU seconds per minute; *idle*: the same "
        f"processes over {args.idle_seconds:g} s without calls, before each window."
    )


def section_body(now: dict[str, Any], before: dict[str, Any] | None, header: list[str]) -> str:
    parts = [
        "## The calls the kubelet repeats (issue 14 §2, bench/node.py)",
        "",
        now["description"],
        "",
        *[f"- {line}" for line in header],
    ]
    runs = [("", now)] if before is None else [("After", now), ("Before", before)]
    for title, data in runs:
        parts += ["", f"### {title + ': ' if title else ''}{data['title']}", ""]
        parts += rpc_table(data["rktlet"], data.get("containerd"), data["rate"])
        parts += ["", *cpu_table(data["rktlet"], data.get("containerd"))]
        parts += ["", *goals(data["rktlet"], data.get("containerd"))]
        for label in ("rktlet", "containerd"):
            result = data.get(label)
            if result and (result["errors"] or result["skipped"]):
                parts.append(
                    f"- {label}: errors {result['errors'] or 'none'}, "
                    f"steps skipped for lateness {result['skipped']}"
                )
    if now.get("notes"):
        parts += ["", "### Notes", "", *[f"- {n}" for n in now["notes"]]]
    for title, data in runs:
        if data.get("profile"):
            parts += [
                "",
                f"### {title + ': ' if title else ''}where rktlet's daemon spends its CPU "
                f"(py-spy, {data['title']})",
                "",
                "```",
                *data["profile"],
                "```",
            ]
    return "\n".join(parts)


# -- profiles (pure) ---------------------------------------------------------------------------


def summarise_profile(raw: str, top: int = 25) -> list[str]:
    """Top functions of a ``py-spy record --format raw`` file: own and cumulative share."""
    own: dict[str, int] = {}
    below: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            below[name] = below.get(name, 0) + count
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples; own time:"]
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    out.append("time below (inclusive):")
    for name, n in sorted(below.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    return out


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module.py)``: one row per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    for anchor in ("cri", "iottymux", "streaming", "grpc", "google", "asyncio"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) :])
            break
    else:
        path = parts[-1]
    return f"{name} ({path})" if path else name


# -- driving a runtime -------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Node:
    """One runtime with its pods: what the poll loop asks about."""

    target: Any  # bench.lifecycle.Target
    pod_ids: list[str] = field(default_factory=list)
    pod_uids: list[str] = field(default_factory=list)
    container_ids: list[str] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    create_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.target.label)

    def pod_config(self, index: int) -> api_pb2.PodSandboxConfig:
        name = f"node-{index}"
        uid = secrets.token_hex(16)
        log_directory = self.target.log_root / f"bench_{name}_{uid}"
        log_directory.mkdir(parents=True)
        self.dirs.append(log_directory)
        labels = {
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": "bench",
            UID_LABEL: uid,
            "app": f"node-{index % 10}",
        }
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=uid),
            hostname=name,
            log_directory=str(log_directory),
            labels=labels,
            annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "x"},
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=self.target.cgroup_parent),
        )

    def container_config(self, pod: api_pb2.PodSandboxConfig, name: str) -> api_pb2.ContainerConfig:
        labels = {
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.metadata.name,
            "io.kubernetes.pod.namespace": pod.metadata.namespace,
            UID_LABEL: pod.metadata.uid,
        }
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=self.target.image),
            command=["sleep", "3600"],
            labels=labels,
            annotations={
                "io.kubernetes.container.hash": secrets.token_hex(4),
                "io.kubernetes.container.restartCount": "0",
                "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            },
            log_path=f"{name}/0.log",
            linux=api_pb2.LinuxContainerConfig(),
        )

    def populate(self, pods: int, containers: int) -> None:
        """Make the pods as the kubelet does: the pod, then per container ImageStatus,
        CreateContainer, StartContainer."""
        rt, images = self.target.daemon.runtime, self.target.daemon.images

        def timed(op: str, rpc: Callable[..., Any], request: Any) -> Any:
            start = time.perf_counter()
            reply = rpc(request, timeout=RPC_TIMEOUT)
            self.create_ms.setdefault(op, []).append((time.perf_counter() - start) * 1000)
            return reply

        for i in range(pods):
            config = self.pod_config(i)
            pod_id = timed(
                "RunPodSandbox", rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=config)
            ).pod_sandbox_id
            self.pod_ids.append(pod_id)
            self.pod_uids.append(config.metadata.uid)
            for c in range(containers):
                status = timed(
                    "ImageStatus",
                    images.ImageStatus,
                    api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=self.target.image)),
                )
                if not status.image.id:
                    raise RuntimeError(f"{self.label}: ImageStatus does not know the image")
                ctr_id = timed(
                    "CreateContainer",
                    rt.CreateContainer,
                    api_pb2.CreateContainerRequest(
                        pod_sandbox_id=pod_id,
                        config=self.container_config(config, f"c{c}"),
                        sandbox_config=config,
                    ),
                ).container_id
                timed(
                    "StartContainer",
                    rt.StartContainer,
                    api_pb2.StartContainerRequest(container_id=ctr_id),
                )
                self.container_ids.append(ctr_id)
            if (i + 1) % 10 == 0 or i + 1 == pods:
                log(f"{self.label}: {i + 1}/{pods} pods")

    def check(self, containers: int) -> None:
        """Every container made is running, and the lists show them all."""
        rt = self.target.daemon.runtime
        listed = rt.ListContainers(api_pb2.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
        ours = {c.id: c for c in listed}
        missing = [c for c in self.container_ids if c not in ours]
        stopped = [
            c
            for c in self.container_ids
            if c in ours and ours[c].state != api_pb2.CONTAINER_RUNNING
        ]
        if missing or stopped:
            raise RuntimeError(
                f"{self.label}: {len(missing)} containers not listed, {len(stopped)} not running"
            )
        pods = rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
        if {p.id for p in pods} < set(self.pod_ids):
            raise RuntimeError(f"{self.label}: not every pod is listed")

    def caller(self, call: Call) -> Callable[[], Any]:
        """A function making ``call`` against this runtime."""
        rt, images = self.target.daemon.runtime, self.target.daemon.images
        rpc = call.rpc
        if rpc == "ListPodSandbox":
            request: Any = api_pb2.ListPodSandboxRequest()
            return lambda: rt.ListPodSandbox(request, timeout=RPC_TIMEOUT)
        if rpc == "ListContainers":
            request = api_pb2.ListContainersRequest()
            return lambda: rt.ListContainers(request, timeout=RPC_TIMEOUT)
        if rpc == "ListPodSandbox (pod filter)":
            request = api_pb2.ListPodSandboxRequest(
                filter=api_pb2.PodSandboxFilter(
                    label_selector={UID_LABEL: self.pod_uids[call.index]}
                )
            )
            return lambda: rt.ListPodSandbox(request, timeout=RPC_TIMEOUT)
        if rpc == "ListContainers (pod filter)":
            request = api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(
                    label_selector={UID_LABEL: self.pod_uids[call.index]}
                )
            )
            return lambda: rt.ListContainers(request, timeout=RPC_TIMEOUT)
        if rpc == "PodSandboxStatus":
            request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=self.pod_ids[call.index])
            return lambda: rt.PodSandboxStatus(request, timeout=RPC_TIMEOUT)
        if rpc == "ContainerStatus":
            request = api_pb2.ContainerStatusRequest(container_id=self.container_ids[call.index])
            return lambda: rt.ContainerStatus(request, timeout=RPC_TIMEOUT)
        if rpc == "ListContainerStats":
            request = api_pb2.ListContainerStatsRequest()
            return lambda: rt.ListContainerStats(request, timeout=RPC_TIMEOUT)
        if rpc == "ListPodSandboxStats":
            request = api_pb2.ListPodSandboxStatsRequest()
            return lambda: rt.ListPodSandboxStats(request, timeout=RPC_TIMEOUT)
        if rpc == "ImageFsInfo":
            request = api_pb2.ImageFsInfoRequest()
            return lambda: images.ImageFsInfo(request, timeout=RPC_TIMEOUT)
        if rpc == "ImageStatus":
            request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=self.target.image))
            return lambda: images.ImageStatus(request, timeout=RPC_TIMEOUT)
        if rpc == "ListImages":
            request = api_pb2.ListImagesRequest()
            return lambda: images.ListImages(request, timeout=RPC_TIMEOUT)
        raise ValueError(rpc)

    def cleanup(self) -> None:
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def process_groups(node: Node) -> dict[str, list[int]]:
    """The pids whose CPU is counted, by group (see CPU_ROWS)."""
    from bench._cri_peer import RktletDaemon, pids_with_cmdline

    daemon = node.target.daemon
    pid = daemon.daemon_pid()
    groups: dict[str, list[int]] = {"daemon": [pid] if pid else []}
    if isinstance(daemon, RktletDaemon):
        groups["monitors"] = pids_with_cmdline("iottymux", str(daemon.run_dir) + "/")
        helpers: list[int] = []
        if pid:
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        helpers += [int(k) for k in f.read().split()]
        groups["helpers"] = [p for p in helpers if p not in groups["monitors"]]
    else:
        groups["shims"] = pids_with_cmdline("containerd-shim", daemon.socket)
    return groups


def sample_cpu(groups: dict[str, list[int]]) -> dict[str, dict[int, int]]:
    return {name: cpu_ticks(pids) for name, pids in groups.items()}


def cpu_between(
    before: dict[str, dict[int, int]], after: dict[str, dict[int, int]], seconds: float
) -> dict[str, float]:
    return {name: cpu_per_minute(before[name], after[name], seconds) for name in before}


def poll(node: Node, lanes: dict[str, list[Step]], result: RunResult | None) -> None:
    """Run the plan's lanes against ``node``, one thread each; record into ``result``."""
    prepared = {
        lane: [(step.at, [(c.rpc, node.caller(c)) for c in step.calls]) for step in steps]
        for lane, steps in lanes.items()
    }
    lock = threading.Lock()
    failures: list[BaseException] = []
    start = time.monotonic() + 0.05

    def run_lane(steps: list[tuple[float, list[tuple[str, Callable[[], Any]]]]]) -> None:
        mine: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        skipped = 0
        try:
            for at, calls in steps:
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif at > 0 and -delay > 1.0:
                    skipped += 1  # over a second late: the kubelet's ticker drops it
                    continue
                for rpc, call in calls:
                    t0 = time.perf_counter()
                    try:
                        call()
                    except grpc.RpcError:
                        errors[rpc] = errors.get(rpc, 0) + 1
                        continue
                    mine.setdefault(rpc, []).append((time.perf_counter() - t0) * 1000)
        except BaseException as exc:
            failures.append(exc)
        if result is not None:
            with lock:
                for rpc, values in mine.items():
                    result.latencies.setdefault(rpc, []).extend(values)
                for rpc, n in errors.items():
                    result.errors[rpc] = result.errors.get(rpc, 0) + n
                result.skipped += skipped

    threads = [
        threading.Thread(target=run_lane, args=(steps,), name=f"lane-{lane}")
        for lane, steps in prepared.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def measure(node: Node, args: argparse.Namespace, lanes: dict[str, list[Step]]) -> RunResult:
    """Idle CPU, a short warm-up, then one measured poll window."""
    result = RunResult()
    groups = process_groups(node)
    before = sample_cpu(groups)
    t0 = time.monotonic()
    time.sleep(args.idle_seconds)
    result.idle_cpu = cpu_between(before, sample_cpu(groups), time.monotonic() - t0)
    if args.warmup > 0:
        poll(node, plan(len(node.pod_ids), args.containers, args.warmup, rates(args)), None)
    before = sample_cpu(groups)
    t0 = time.monotonic()
    poll(node, lanes, result)
    result.cpu = cpu_between(before, sample_cpu(groups), time.monotonic() - t0)
    return result


def rates(args: argparse.Namespace) -> Rates:
    return Rates(status=args.status_period, stats=args.stats_period, image_checks=args.image_checks)


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(node: Node, args: argparse.Namespace, lanes: dict[str, list[Step]]) -> list[str]:
    """The poll loop once more with py-spy sampling rktlet's daemon; the summary."""
    py_spy = find_py_spy()
    if py_spy is None:
        return ["py-spy is not installed (.venv/bin/pip install py-spy): no profile"]
    args.profile.mkdir(parents=True, exist_ok=True)
    raw = args.profile / "rktlet-daemon.txt"
    pid = node.target.daemon.daemon_pid()
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
         "--output", str(raw), "--duration", str(int(args.seconds) + 2), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # py-spy attaches
        poll(node, lanes, None)
        _out, err = spy.communicate(timeout=args.seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not raw.exists():
        return [f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"]
    return summarise_profile(raw.read_text())


# -- the run ---------------------------------------------------------------------------------


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
        check=False,
    )
    return done.stdout.strip() + (" (with local changes)" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run as root; see the module docstring for what is measured.",
    )
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--containers", type=int, default=3, help="containers per pod")
    parser.add_argument("--seconds", type=float, default=60.0, help="poll window per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per runtime (medians)")
    parser.add_argument("--warmup", type=float, default=5.0, help="poll seconds not counted")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window")
    parser.add_argument("--status-period", type=float, default=10.0)
    parser.add_argument("--stats-period", type=float, default=10.0)
    parser.add_argument("--image-checks", type=float, default=1.0, help="ImageStatus per s")
    parser.add_argument("--no-containerd", action="store_true", help="rktlet only")
    parser.add_argument("--profile", type=Path, help="also profile rktlet's daemon (py-spy)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--before", type=Path, help="an earlier --json to show beside")
    parser.add_argument("--title", default="", help="a title for this run's table")
    parser.add_argument(
        "--results",
        nargs="?",
        type=Path,
        const=RESULTS,
        default=None,
        help=f"write the {SECTION} section of RESULTS.md (default path: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a line for the section's notes"
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="run nothing: write the section from a saved --json (with --before, --results)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args)
    if os.geteuid() != 0:
        print("node.py: needs root (network namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "runc", "catatonit", "docker-registry"):
        if shutil.which(tool) is None:
            print(f"node.py: {tool} is not installed (scripts/install.sh --dev)", file=sys.stderr)
            return 2
    before = json.loads(args.before.read_text()) if args.before else None
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    from bench.lifecycle import Cleanups

    cleanups = Cleanups()
    try:
        return _run(args, before, cleanups)
    except (KeyboardInterrupt, SystemExit) as exc:
        log(f"interrupted ({exc!r})")
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        log("cleaning up")
        cleanups.run()


def render(args: argparse.Namespace) -> int:
    """The section from saved figures (e.g. to put a before run beside an after run)."""
    data = json.loads(args.render.read_text())
    if args.title:
        data["title"] = args.title
    data["notes"] = [*data.get("notes", []), *args.note]
    before = json.loads(args.before.read_text()) if args.before else None
    body = section_body(data, before, data["header"])
    print(body)
    if args.results is not None:
        from bench._results import update

        update(args.results, {SECTION: body})
    return 0


def _run(args: argparse.Namespace, before: dict[str, Any] | None, cleanups: Any) -> int:
    from bench._cri_peer import remove_cgroup_tree
    from bench.lifecycle import (
        check_ready,
        machine_lines,
        setup_containerd,
        setup_rktlet,
        start_containerd,
        version_lines,
    )
    from fixtures.build_images import build_all

    token = secrets.token_hex(4)
    base = Path(tempfile.mkdtemp(prefix="rktlet-bench-node-"))
    cleanups.add("remove the temp dir", lambda: shutil.rmtree(base, ignore_errors=True))
    cleanups.add("remove the cgroups", lambda: remove_cgroup_tree(f"/rktlet-bench-{token}"))
    load_before = os.getloadavg()
    layout = build_all(base / "images" / "layout")
    log_root = base / "pod-logs"
    log("starting rktlet")
    rk = setup_rktlet(base / "rktlet", layout, token, cleanups, log_root, False)
    check_ready(rk)
    targets = [rk]
    if not args.no_containerd:
        log("starting containerd")
        ctd = setup_containerd(base / "containerd", layout, token, cleanups, log_root)
        start_containerd(ctd)
        targets.append(ctd)
    nodes = [Node(t) for t in targets]
    for node in nodes:
        cleanups.add(f"{node.label}: log dirs", node.cleanup)
        log(f"{node.label}: making {args.pods} pods of {args.containers} containers")
        node.populate(args.pods, args.containers)
        node.check(args.containers)

    lanes = plan(args.pods, args.containers, args.seconds, rates(args))
    rate = calls_per_second(lanes, args.seconds)
    runs: dict[str, list[dict[str, Any]]] = {n.label: [] for n in nodes}
    for k in range(args.runs):
        order = nodes if k % 2 == 0 else nodes[::-1]
        for node in order:
            log(f"run {k + 1}/{args.runs}: {node.label}, {args.seconds:g} s")
            result = measure(node, args, lanes)
            summary = result.summary()
            runs[node.label].append(summary)
            log(
                f"  {node.label}: daemon {summary['cpu'].get('daemon', 0):.2f} CPU s/min; "
                + ", ".join(f"{r} {summary['p50'][r]:.2f}" for r in RPCS if r in summary["p50"])
            )
    for node in nodes:
        node.check(args.containers)  # nothing died under the polling
    profile_lines: list[str] = []
    if args.profile is not None:
        log(f"profiling rktlet's daemon for {args.seconds:g} s")
        profile_lines = profile(nodes[0], args, lanes)
    load_after = os.getloadavg()

    data: dict[str, Any] = {
        "title": args.title or f"commit {git_commit()}",
        "rate": rate,
        "description": describe(args, rate),
    }
    for label, summaries in runs.items():
        data[label] = combine(summaries)
    data["profile"] = profile_lines
    data["notes"] = list(args.note)
    data["create_ms"] = {
        n.label: {op: statistics.median(v) for op, v in n.create_ms.items()} for n in nodes
    }
    header = [
        *machine_lines(),
        f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        *version_lines(targets),
        "command: `bench/node.py " + " ".join(sys.argv[1:]) + "`",
    ]
    data["header"] = header
    body = section_body(data, before, header)
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    if args.results is not None:
        from bench._results import update

        update(args.results, {SECTION: body})
        log(f"wrote the {SECTION} section of {args.results}")
    failed = any(data[label]["errors"] for label in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
