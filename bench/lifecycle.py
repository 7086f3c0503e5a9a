"""Pod and container lifecycle latency and ExecSync, rktlet against containerd, same run.

For --pods pods, one after the other, each runtime does, through the same Python CRI
client (the project's generated ``runtime.v1`` stubs): RunPodSandbox, CreateContainer
(the fixture busybox image running ``sleep 3600``), StartContainer, ExecSync(``true``),
StopContainer (timeout --stop-timeout, 0 by default: ``sleep`` as pid 1 ignores
SIGTERM, so Stop has to kill it), RemoveContainer, StopPodSandbox, RemovePodSandbox.
The two runtimes alternate pod by pod (rktlet first on even pods, containerd first on
odd ones), so that drift in the machine's load falls on both alike; --warmup pods per
runtime run first and are not counted.  Printed: p50/p95 of each call in ms per
runtime, the ratio rktlet/containerd of the p50s, the machine and the versions.
containerd makes the runc container in StartContainer and deletes it in StopContainer,
rktlet in CreateContainer and RemoveContainer, so the sums Create+Start, Stop+Remove
and the whole pod are printed as well.

Setup, all private and removed at the end even on failure:

- each daemon runs in a network namespace of its own (``ip netns add``, ``lo`` up),
  started through ``nsenter --net=…``; the pods' bridges, veths and iptables rules live
  there, never in the host's network;
- in each namespace a docker-registry on 127.0.0.1 holds the fixture images (built
  offline by ``fixtures.build_images``); both runtimes get them by CRI PullImage,
  rktlet with ``--insecure-registry``, containerd through a ``hosts.toml`` naming the
  registry as a plain-HTTP host;
- both get the same CNI network: bridge + host-local (IPAM state in our temp dir) +
  portmap + loopback, on 10.90.0.0/24 (containerd) and 10.91.0.0/24 (rktlet);
- containerd (Debian's package) runs with a generated ``config.toml`` (version 2): its
  own socket, root, state, temp and runc root; CRI ``sandbox_image`` = the fixture pause
  image (catatonit); runtime ``io.containerd.runc.v2``; CNI from /usr/lib/cni.
  rktlet's pods use the host's catatonit directly and need no pause image;
- both use runc with cgroupfs, pod cgroups under /rktlet-bench-<id>/<runtime>;
- rktlet's Python caches its bytecode under the temp dir (``PYTHONPYCACHEPREFIX``, and
  ``PYTHONDONTWRITEBYTECODE`` dropped), as an installed package has it: otherwise every
  pod monitor, a fresh interpreter, compiles its modules again (--no-pyc-cache keeps
  the environment as it is).

Then, unless --breakdown 0, each runtime runs again under ``strace -f --seccomp-bpf
-e trace=execve,fsync,fdatasync`` (a second daemon on the same root) for --breakdown
pods, and the time
of each call is split between the short-lived processes run during it (CNI plugins,
iptables, runc, rktlet's monitor start, containerd's shim start) and the rest: the
daemon's own work and that of long-lived helpers (pod monitor, shim).  Those figures are
inflated by strace; they show where the time goes, not how much there is.

If containerd cannot run here, the reason is printed and rktlet's figures still are.

Usage (as root)::

    .venv/bin/python bench/lifecycle.py [--pods 50] [--warmup 3] [--stop-timeout 0]
        [--breakdown 10] [--no-containerd] [--no-pyc-cache] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._cri_peer import (
    CNI_BIN_DIR,
    ContainerdDaemon,
    CriDaemon,
    NetNS,
    PeerError,
    RktletDaemon,
    make_run_dir,
    package_version,
    python_env,
    remove_cgroup_tree,
    start_registry,
    tool_version,
    write_conflist,
)
from cri.api import api_pb2

OPS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "ExecSync",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)
#: containerd creates the runc container in StartContainer and deletes it in
#: StopContainer, rktlet in CreateContainer and RemoveContainer: compare the sums too.
SUMS = (
    ("Create+Start", ("CreateContainer", "StartContainer")),
    ("Stop+Remove", ("StopContainer", "RemoveContainer")),
    ("whole pod (sum)", OPS),
)
RPC_TIMEOUT = 120.0
IMAGES = {"busybox": "rktlet/busybox:latest", "pause": "rktlet/pause:latest"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- one runtime under test ---------------------------------------------------------------


@dataclass
class Target:
    """A daemon, what it runs, and what was measured on it."""

    label: str
    daemon: CriDaemon
    image: str
    cgroup_parent: str
    log_root: Path
    samples: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    windows: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {op: [] for op in OPS}
    )
    error: str | None = None
    version: str = "?"

    def pod_config(self, name: str) -> api_pb2.PodSandboxConfig:
        uid = secrets.token_hex(8)
        log_directory = self.log_root / f"bench_{name}_{uid}"
        log_directory.mkdir(parents=True)  # the kubelet makes it before RunPodSandbox
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=uid),
            hostname=name,
            log_directory=str(log_directory),
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent),
        )

    def container_config(self) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="sleep"),
            image=api_pb2.ImageSpec(image=self.image),
            command=["sleep", "3600"],
            log_path="sleep/0.log",
            linux=api_pb2.LinuxContainerConfig(),
        )

    def pod_cycle(self, name: str, stop_timeout: int, record: bool) -> None:
        """One pod through the whole lifecycle; the pod is removed even on failure."""
        rt = self.daemon.runtime
        times: dict[str, float] = {}
        windows: dict[str, tuple[float, float]] = {}

        def timed(op: str, rpc: Callable[..., Any], request: Any) -> Any:
            wall = time.time()
            start = time.perf_counter()
            reply = rpc(request, timeout=RPC_TIMEOUT)
            times[op] = (time.perf_counter() - start) * 1000
            windows[op] = (wall, time.time())
            return reply

        pod_config = self.pod_config(name)
        pod_id = ""
        done = False
        try:
            pod_id = timed(
                "RunPodSandbox",
                rt.RunPodSandbox,
                api_pb2.RunPodSandboxRequest(config=pod_config),
            ).pod_sandbox_id
            ctr_id = timed(
                "CreateContainer",
                rt.CreateContainer,
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id,
                    config=self.container_config(),
                    sandbox_config=pod_config,
                ),
            ).container_id
            timed(
                "StartContainer",
                rt.StartContainer,
                api_pb2.StartContainerRequest(container_id=ctr_id),
            )
            reply = timed(
                "ExecSync",
                rt.ExecSync,
                api_pb2.ExecSyncRequest(container_id=ctr_id, cmd=["true"], timeout=30),
            )
            if reply.exit_code != 0:
                raise RuntimeError(
                    f"ExecSync(true) exited {reply.exit_code}: {reply.stderr[-500:]!r}"
                )
            timed(
                "StopContainer",
                rt.StopContainer,
                api_pb2.StopContainerRequest(container_id=ctr_id, timeout=stop_timeout),
            )
            timed(
                "RemoveContainer",
                rt.RemoveContainer,
                api_pb2.RemoveContainerRequest(container_id=ctr_id),
            )
            timed(
                "StopPodSandbox",
                rt.StopPodSandbox,
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id),
            )
            timed(
                "RemovePodSandbox",
                rt.RemovePodSandbox,
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
            )
            done = True
        finally:
            if pod_id and not done:
                with contextlib.suppress(grpc.RpcError):
                    rt.StopPodSandbox(
                        api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT
                    )
                    rt.RemovePodSandbox(
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                        timeout=RPC_TIMEOUT,
                    )
        if record:
            for op in OPS:
                self.samples[op].append(times[op])
                self.windows[op].append(windows[op])

    def sums(self, ops: tuple[str, ...] = OPS) -> list[float]:
        """Per pod, the sum of ``ops``' latencies."""
        return [sum(parts) for parts in zip(*(self.samples[op] for op in ops), strict=True)]


def describe_rpc_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, PeerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# -- statistics and the report ---------------------------------------------------------------


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def machine_lines() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return [
        f"machine: {os.cpu_count()} cores ({model}), {mem_kib / 1048576:.1f} GiB, "
        f"kernel {platform.release()}",
        f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)",
    ]


class Labelled(Protocol):
    """A measured runtime as the report names it (lifecycle's Target, streaming's Side)."""

    @property
    def label(self) -> str: ...

    @property
    def version(self) -> str: ...


PEER_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "docker-registry")


def version_lines(
    targets: Sequence[Labelled], packages: Sequence[str] = PEER_PACKAGES
) -> list[str]:
    import importlib.metadata

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    lines = [
        f"containerd: {tool_version(['containerd', '--version'])}",
        f"runc: {tool_version(['runc', '--version'])}",
        f"python: {sys.version.split()[0]} ({sys.executable}); grpcio {dist('grpcio')}, "
        f"protobuf {dist('protobuf')}, rktlet {dist('rktlet')}",
        "debian packages: " + ", ".join(f"{p} {package_version(p)}" for p in packages),
    ]
    lines += [f"{target.label} CRI Version: {target.version}" for target in targets]
    return lines


def print_table(rk: Target, ctd: Target | None, pods: int) -> None:
    head = (
        f"{'operation':<18} {'rktlet p50':>11} {'p95':>8}  {'containerd p50':>15} {'p95':>8}  "
        f"{'rktlet/containerd p50':>22}"
    )
    print(f"\nlatency in ms over {pods} pods (one pod at a time)")
    print(head)
    print("-" * len(head))
    rows: list[tuple[str, list[float], list[float]]] = [
        (op, rk.samples[op], ctd.samples[op] if ctd else []) for op in OPS
    ]
    for name, ops in SUMS:
        rows.append((name, rk.sums(ops), ctd.sums(ops) if ctd else []))
    for name, r, c in rows:
        r50 = p50(r) if r else None
        r95 = p95(r) if r else None
        c50 = p50(c) if c else None
        c95 = p95(c) if c else None
        ratio = f"{r50 / c50:.2f}x" if r50 is not None and c50 else "n/a"
        print(f"{name:<18} {fmt(r50):>11} {fmt(r95):>8}  {fmt(c50):>15} {fmt(c95):>8}  {ratio:>22}")


# -- where rktlet's time goes (strace of a second daemon) --------------------------------------

RUNC_SUBCOMMANDS = {
    "create", "start", "exec", "kill", "delete", "state", "init", "list", "ps", "update",
    "events", "pause", "resume", "run", "features",
}  # fmt: skip
_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_EXEC_OK = re.compile(r"\)\s*= 0(?:\s+<[\d.]+>)?$")
_ELAPSED = re.compile(r"<(\d+\.\d+)>\s*$")
_SYNCS = ("fsync(", "fdatasync(", "<... fsync resumed>", "<... fdatasync resumed>")


@dataclass
class Proc:
    pid: int
    start: float
    path: str
    argv: list[str]
    end: float | None = None

    @property
    def name(self) -> str:
        prog = os.path.basename(self.argv[0]) if self.argv else os.path.basename(self.path)
        if prog in ("runc", "crun"):
            sub = next((a for a in self.argv[1:] if a in RUNC_SUBCOMMANDS), "?")
            return f"{prog} {sub}"
        if prog.startswith("python") and "-m" in self.argv:
            i = self.argv.index("-m")
            return " ".join(["python -m", *self.argv[i + 1 : i + 3]])
        if self.path.startswith(CNI_BIN_DIR + "/"):
            return f"CNI {os.path.basename(self.path)}"
        if prog.startswith("containerd-shim"):
            return f"{prog} {self.argv[-1]}" if self.argv[-1] in ("start", "delete") else prog
        return prog


@dataclass
class Trace:
    """What a strace log says: the processes exec'd, and each fsync/fdatasync."""

    procs: list[Proc]
    syncs: list[tuple[float, float]]  # (start, seconds)


def parse_strace(path: Path) -> Trace:
    """Read ``strace -f -ttt -T -e trace=execve,fsync,fdatasync`` output.

    A pid is named after its first successful execve (``runc init`` keeps that name
    after it execs the container's process); its end is its exit.
    """
    procs: dict[int, Proc] = {}
    pending: dict[int, tuple[float, str]] = {}
    finished: list[Proc] = []
    syncs: list[tuple[float, float]] = []
    with open(path, errors="replace") as f:
        for line in f:
            m = _LINE.match(line)
            if not m:
                continue
            pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if rest.startswith(_SYNCS):
                took = _ELAPSED.search(rest)
                if took is not None:  # not "<unfinished ...>": the time is on this line
                    syncs.append((ts - float(took.group(1)) if "resumed>" in rest else ts,
                                  float(took.group(1))))  # fmt: skip
                continue
            if rest.startswith("execve("):
                pending[pid] = (ts, rest)
                if "<unfinished" in rest:
                    continue
                result = rest
            elif rest.startswith("<... execve resumed>"):
                result = rest
            elif rest.startswith("+++ "):
                proc = procs.pop(pid, None)
                if proc is not None:
                    proc.end = ts
                    finished.append(proc)
                continue
            else:
                continue
            started = pending.pop(pid, None)
            if started is None or not _EXEC_OK.search(result.rstrip()):
                continue
            if pid in procs:  # a second exec of the same process: keep its first name
                continue
            strings = _STRING.findall(started[1])
            if not strings:
                continue
            procs[pid] = Proc(pid, started[0], strings[0], strings[1:])
    return Trace(finished + list(procs.values()), syncs)


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, current_end = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= current_end:
            continue
        total += end - max(start, current_end)
        current_end = end
    return total


def print_breakdown(
    label: str, trace: Trace, windows: dict[str, list[tuple[float, float]]]
) -> None:
    procs = trace.procs
    print(
        f"\nwhere {label}'s time goes: the processes it ran during each call "
        "(strace -f of a second daemon; times inflated by strace)"
    )
    for op in OPS:
        spans = windows.get(op, [])
        if not spans:
            continue
        per_name: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        lingering: set[str] = set()
        own: list[float] = []
        lengths: list[float] = []
        sync_n: list[float] = []
        sync_ms: list[float] = []
        for t0, t1 in spans:
            synced = [d for start, d in trace.syncs if t0 <= start <= t1]
            sync_n.append(float(len(synced)))
            sync_ms.append(sum(synced) * 1000)
            inside = [p for p in procs if t0 <= p.start <= t1]
            done = [p for p in inside if p.end is not None and p.end <= t1 + 0.002]
            lingering.update(p.name for p in inside if p not in done)
            sums: dict[str, float] = {}
            for p in done:
                assert p.end is not None
                sums[p.name] = sums.get(p.name, 0.0) + (p.end - p.start) * 1000
                counts[p.name] = counts.get(p.name, 0) + 1
            for name in set(per_name) | set(sums):
                per_name.setdefault(name, [0.0] * len(lengths)).append(sums.get(name, 0.0))
            length = (t1 - t0) * 1000
            lengths.append(length)
            busy = union_length([(p.start, min(p.end or t1, t1)) for p in done]) * 1000
            own.append(length - busy)
        print(f"  {op}: {p50(lengths):.1f} ms (p50 of {len(spans)})")
        ranked = sorted(per_name.items(), key=lambda kv: -p50(kv[1]))
        for name, values in ranked:
            n = counts.get(name, 0) / len(spans)
            print(f"      {name:<34} {n:>4.1f} x per call, {p50(values):>7.1f} ms (p50 of sum)")
        print(f"      {'rest (daemon, monitor/shim)':<34} {'':>16} {p50(own):>7.1f} ms")
        if any(sync_n):
            print(
                f"      {'  of which fsync/fdatasync':<34} {p50(sync_n):>4.1f} x per call, "
                f"{p50(sync_ms):>7.1f} ms (any process)"
            )
        if lingering:
            print(f"      started and still running after: {', '.join(sorted(lingering))}")


# -- the run ------------------------------------------------------------------------------------


class Cleanups:
    """Callbacks run last-in first-out; each one's failure is reported, none skipped."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, step: Callable[[], Any]) -> None:
        self._steps.append((what, step))

    def run(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                result = step()
                if isinstance(result, list) and result:
                    log(f"cleanup: {what}: {'; '.join(map(str, result))}")
            except BaseException as exc:
                log(f"cleanup: {what} failed: {exc!r}")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def setup_rktlet(
    base: Path,
    layout: Path,
    token: str,
    cleanups: Cleanups,
    log_root: Path,
    no_pyc_cache: bool,
    *,
    label: str = "rktlet",
    extra_env: Mapping[str, str] | None = None,
) -> Target:
    """A started rktlet daemon in a netns of its own (``extra_env``: more of its environment)."""
    netns = NetNS("rktlet-bench-r").create()
    cleanups.add("delete rktlet's netns", netns.delete)
    registry = start_registry(netns, base, layout, set(IMAGES.values()))
    cleanups.add("stop rktlet's registry", registry.stop)
    cni_dir = base / "cni"
    write_conflist(
        cni_dir, name="rktlet-bench", bridge="rkb0", subnet="10.91.0.0/24", ipam_dir=base / "ipam"
    )
    run_dir = make_run_dir("rktlet-bench")
    cleanups.add("remove rktlet's run dir", lambda: shutil.rmtree(run_dir, ignore_errors=True))
    daemon = RktletDaemon(
        base / "daemon",
        run_dir,
        netns,
        cni_conf_dir=cni_dir,
        insecure_registries=[registry.host],
        env={**python_env(None if no_pyc_cache else base / "pycache"), **(extra_env or {})},
    )
    slug = "".join(c if c.isalnum() else "-" for c in label)
    target = Target(
        label,
        daemon,
        f"{registry.host}/{IMAGES['busybox']}",
        f"/rktlet-bench-{token}/{slug}",
        log_root,
    )
    daemon.cgroup_parents.add(target.cgroup_parent)
    cleanups.add(f"{label}: pods, daemon, leftovers", daemon.cleanup)
    daemon.start()
    target.version = daemon.version()
    start = time.perf_counter()
    daemon.pull(target.image)
    log(f"{label}: pulled {target.image} in {(time.perf_counter() - start) * 1000:.0f} ms")
    return target


def setup_containerd(
    base: Path, layout: Path, token: str, cleanups: Cleanups, log_root: Path
) -> Target:
    netns = NetNS("rktlet-bench-c").create()
    cleanups.add("delete containerd's netns", netns.delete)
    registry = start_registry(netns, base, layout, set(IMAGES.values()))
    cleanups.add("stop containerd's registry", registry.stop)
    cni_dir = base / "cni"
    write_conflist(
        cni_dir, name="ctd-bench", bridge="ctb0", subnet="10.90.0.0/24", ipam_dir=base / "ipam"
    )
    daemon = ContainerdDaemon(
        base / "daemon",
        netns,
        sandbox_image=f"{registry.host}/{IMAGES['pause']}",
        cni_conf_dir=cni_dir,
        plain_http_registries=[registry.host],
    )
    target = Target(
        "containerd",
        daemon,
        f"{registry.host}/{IMAGES['busybox']}",
        f"/rktlet-bench-{token}/containerd",
        log_root,
    )
    daemon.cgroup_parents.add(target.cgroup_parent)
    cleanups.add("containerd: pods, daemon, leftovers", daemon.cleanup)
    return target


def start_containerd(target: Target) -> None:
    daemon = target.daemon
    assert isinstance(daemon, ContainerdDaemon)
    daemon.start()
    target.version = daemon.version()
    for image in (daemon.sandbox_image, target.image):
        start = time.perf_counter()
        daemon.pull(image)
        log(f"containerd: pulled {image} in {(time.perf_counter() - start) * 1000:.0f} ms")
    check_ready(target)


def bytecode_note(no_pyc_cache: bool) -> str:
    if not no_pyc_cache:
        return "cached (PYTHONPYCACHEPREFIX in the temp dir), as an installed package's is"
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "not cached (PYTHONDONTWRITEBYTECODE is set: each pod monitor compiles its modules)"
    return "as this environment has it"


def check_ready(target: Target) -> None:
    problems = target.daemon.not_ready()
    if problems:
        raise PeerError(f"{target.label} Status not ready: {'; '.join(problems)}")


Breakdown = tuple[Trace, dict[str, list[tuple[float, float]]]]


def strace_wrapper(trace: Path) -> list[str]:
    """strace following every child, stopping only at execve and fsyncs (seccomp-bpf)."""
    return [
        "strace", "-f", "--seccomp-bpf", "-ttt", "-T", "-q", "-s", "256",
        "-e", "trace=execve,fsync,fdatasync", "-e", "signal=none", "-o", str(trace),
    ]  # fmt: skip


def traced_daemon(target: Target, trace: Path, cleanups: Cleanups) -> CriDaemon:
    """A second daemon like ``target``'s, under strace; ``target``'s must be stopped."""
    old = target.daemon
    daemon: CriDaemon
    if isinstance(old, RktletDaemon):
        run_dir = make_run_dir("rktlet-bench-s")
        cleanups.add("remove the traced rktlet's run dir", lambda: shutil.rmtree(run_dir, True))
        daemon = RktletDaemon(
            old.base,  # the same root: the image is there already
            run_dir,
            old.netns,
            cni_conf_dir=old.cni_conf_dir,
            insecure_registries=old.insecure_registries,
            wrapper=strace_wrapper(trace),
            env=old.env,
        )
    else:
        assert isinstance(old, ContainerdDaemon)
        daemon = ContainerdDaemon(
            old.base,  # the same root, state and config: the images are there already
            old.netns,
            sandbox_image=old.sandbox_image,
            cni_conf_dir=old.cni_conf_dir,
            plain_http_registries=old.plain_http_registries,
            wrapper=strace_wrapper(trace),
        )
    return daemon


def run_breakdown(
    target: Target, base: Path, pods: int, stop_timeout: int, cleanups: Cleanups
) -> Breakdown | str:
    """``target``'s runtime again, under strace, for ``pods`` pods: what it ran, when."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install -y strace)"
    target.daemon.remove_pods()
    target.daemon.stop()
    trace = base / "strace.txt"
    daemon = traced_daemon(target, trace, cleanups)
    traced = Target(
        f"{target.label} (strace)",
        daemon,
        target.image,
        target.cgroup_parent + "-strace",
        target.log_root,
    )
    daemon.cgroup_parents.add(traced.cgroup_parent)
    cleanups.add(f"traced {target.label}: pods, daemon, leftovers", daemon.cleanup)
    daemon.start()
    traced.pod_cycle("trace-warm", stop_timeout, record=False)
    for i in range(pods):
        traced.pod_cycle(f"trace-{i}", stop_timeout, record=True)
    daemon.remove_pods()
    daemon.stop()
    return parse_strace(trace), traced.windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=50, help="pods measured per runtime")
    parser.add_argument("--warmup", type=int, default=3, help="pods run first, not counted")
    parser.add_argument("--stop-timeout", type=int, default=0, help="StopContainer timeout (s)")
    parser.add_argument(
        "--breakdown", type=int, default=10, help="pods of the strace breakdown (0: none)"
    )
    parser.add_argument("--no-containerd", action="store_true", help="rktlet only")
    parser.add_argument(
        "--no-pyc-cache",
        action="store_true",
        help="run rktlet in this environment as it is, PYTHONDONTWRITEBYTECODE included "
        "(by default its bytecode is cached in the temp dir, as an installed package's is)",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lifecycle.py: needs root (network namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "runc", "catatonit", "docker-registry", "busybox"):
        if shutil.which(tool) is None:
            print(f"lifecycle.py: {tool} is not installed (scripts/install.sh --dev)")
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    from fixtures.build_images import build_all

    token = secrets.token_hex(4)
    base = Path(tempfile.mkdtemp(prefix="rktlet-bench-lifecycle-"))
    cleanups = Cleanups()
    cleanups.add("remove the temp dir", lambda: shutil.rmtree(base, ignore_errors=True))
    cleanups.add("remove the cgroups", lambda: remove_cgroup_tree(f"/rktlet-bench-{token}"))
    rk: Target | None = None
    ctd: Target | None = None
    ctd_error: str | None = None
    breakdowns: dict[str, Breakdown | str] = {}
    load_before = os.getloadavg()
    try:
        layout = build_all(base / "images" / "layout")
        log_root = base / "pod-logs"
        rk = setup_rktlet(base / "rktlet", layout, token, cleanups, log_root, args.no_pyc_cache)
        check_ready(rk)
        if args.no_containerd:
            ctd_error = "not run (--no-containerd)"
        else:
            try:
                ctd = setup_containerd(base / "containerd", layout, token, cleanups, log_root)
                start_containerd(ctd)
            except (PeerError, grpc.RpcError, OSError, RuntimeError) as exc:
                ctd_error = f"containerd cannot run here: {describe_rpc_error(exc)}"
                if ctd is not None and not isinstance(exc, PeerError):
                    tail = ctd.daemon.log_tail(2000)
                    ctd_error += f"\ncontainerd's log ends:\n{tail}" if tail else ""
                log(ctd_error)
                ctd = None
        targets = [t for t in (rk, ctd) if t is not None]
        total = args.warmup + args.pods
        for i in range(total):
            record = i >= args.warmup
            order = targets if i % 2 == 0 else targets[::-1]
            for target in order:
                if target.error is not None:
                    continue
                try:
                    target.pod_cycle(f"pod-{i}", args.stop_timeout, record)
                except (grpc.RpcError, RuntimeError, OSError) as exc:
                    target.error = f"pod {i}: {describe_rpc_error(exc)}"
                    log(f"{target.label}: failed: {target.error}")
            if (i + 1) % 10 == 0 or i + 1 == total:
                log(f"{i + 1}/{total} pods per runtime")
        if ctd is not None and ctd.error is not None:
            ctd_error = f"containerd failed during the run: {ctd.error}"
        for target in targets:
            if target.error is not None or args.breakdown <= 0:
                continue
            log(f"{target.label} under strace, {args.breakdown} pods")
            try:
                breakdowns[target.label] = run_breakdown(
                    target,
                    base / target.label,
                    args.breakdown,
                    args.stop_timeout,
                    cleanups,
                )
            except (PeerError, grpc.RpcError, RuntimeError, OSError) as exc:
                breakdowns[target.label] = f"failed: {describe_rpc_error(exc)}"
        load_after = os.getloadavg()

        print("\n== bench/lifecycle.py: CRI lifecycle latency, rktlet vs containerd ==")
        for line in machine_lines():
            print(line)
        print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (1 min)")
        for line in version_lines(targets):
            print(line)
        print(
            f"workload: pods={args.pods} (+{args.warmup} warm-up each), one at a time, "
            f"runtimes alternating; busybox `sleep 3600`, ExecSync `true`, "
            f"StopContainer timeout {args.stop_timeout}; runc, cgroupfs; CNI bridge+host-local"
            "+portmap+loopback; images by PullImage from a local docker-registry"
        )
        print(f"rktlet's Python bytecode: {bytecode_note(args.no_pyc_cache)}")
        if rk.error is not None:
            print(f"rktlet FAILED: {rk.error}")
        if ctd_error is not None:
            print(ctd_error)
        print_table(rk, ctd if ctd is not None and ctd.error is None else None, args.pods)
        for label, breakdown in breakdowns.items():
            if isinstance(breakdown, str):
                print(f"\n{label} breakdown: {breakdown}")
            else:
                print_breakdown(label, *breakdown)
        return 0 if rk.error is None else 1
    except (KeyboardInterrupt, SystemExit) as exc:
        log(f"interrupted ({exc!r})")
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for kept in base.rglob("*"):
                if kept.name in ("daemon.log", "registry.log", "strace.txt", "config.toml"):
                    rel = kept.relative_to(base)
                    shutil.copy(kept, args.keep_logs / "_".join(rel.parts))
        log("cleaning up")
        cleanups.run()


if __name__ == "__main__":
    sys.exit(main())
