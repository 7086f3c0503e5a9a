"""Streaming benchmark: rktlet's CRI daemon against containerd's, real containers, same client.

Both sides are whole CRI runtimes running real runc containers; the URLs come from
their CRI ``Exec`` and ``PortForward`` RPCs, and both are driven by this package's SPDY
client (``streaming.client``: it speaks like client-go, the same streams in the same
order, FIN on EOF, GOAWAY at the end).  Measured on each side:

* exec round trip: connect to a fresh exec URL, run ``true`` in the container (rktlet:
  ``runc exec`` under its subreaper shim; containerd: through its shim), read the
  status, close.  The URL is fetched before the clock starts (the CRI call is not part
  of the streaming path).  p50 and p95 over --execs sessions, one at a time.
* port-forward throughput: one HTTP/1.0 GET of a --size-mib file from busybox httpd in
  the pod, through a port-forward session (the daemon dials into the pod's netns), in
  MB/s (10^6 bytes/s) from opening the connection to the last byte.

There are --runs rounds (at least 3); in each, both runtimes do --execs execs and
--downloads downloads, the order of the runtimes alternating round by round so drift
in the machine's load falls on both alike.  Printed: each round's figures, the medians
over the rounds, the ratios rktlet/containerd, the machine and the versions.  Three
execs and one short GET per runtime come first as a warm-up and are not counted.

Setup (as in ``bench/lifecycle.py``, through ``bench/_cri_peer.py``), all private and
removed at the end even on failure or SIGTERM:

- each daemon runs in a network namespace of its own; its streaming server listens on
  127.0.0.1 *inside* it, so the client runs in a thread that has entered that
  namespace (``NetNS.call``), with a docker-registry on 127.0.0.1 there holding the
  fixture images, pulled by CRI PullImage;
- one pod per runtime (CNI bridge + host-local + portmap + loopback, cgroupfs, cgroup
  parent /rktlet-bench-<id>/<runtime>) with two containers: busybox ``sleep 3600`` (the
  exec target) and the fixture httpd image running
  ``sh -c 'head -c SIZE /dev/zero > /www/big; exec httpd -f -p 80 -h /www'``;
- containerd (Debian's package, CRI plugin): generated config, pause image from the
  registry, runtime ``io.containerd.runc.v2``;
- rktlet's Python caches its bytecode under the temp dir (``PYTHONPYCACHEPREFIX``), as
  an installed package has it (--no-pyc-cache: the environment as it is).

If containerd cannot run here, the reason is printed and rktlet's figures still are.

Usage (as root)::

    .venv/bin/python bench/streaming.py [--execs 100] [--runs 3] [--downloads 1]
        [--size-mib 256] [--no-containerd] [--no-pyc-cache] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._cri_peer import (
    ContainerdDaemon,
    CriDaemon,
    NetNS,
    PeerError,
    RktletDaemon,
    make_run_dir,
    python_env,
    remove_cgroup_tree,
    start_registry,
    write_conflist,
)
from bench.lifecycle import Cleanups, describe_rpc_error, log, machine_lines, version_lines
from cri.api import api_pb2
from streaming.client import SpdyPortForward, spdy_exec

IMAGES = {
    "busybox": "rktlet/busybox:latest",
    "httpd": "rktlet/httpd:latest",
    "pause": "rktlet/pause:latest",
}
MB = 1_000_000
HTTP_PORT = 80
RPC_TIMEOUT = 120.0
WARMUP_EXECS = 3


# -- one runtime under test ---------------------------------------------------------------


@dataclass
class Side:
    """A daemon, its pod and containers, and what was measured on it."""

    label: str
    daemon: CriDaemon
    registry_host: str
    cgroup_parent: str
    log_root: Path
    version: str = "?"
    pod_id: str = ""
    exec_target: str = ""
    error: str | None = None
    p50s: list[float] = field(default_factory=list)
    p95s: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    def image(self, name: str) -> str:
        return f"{self.registry_host}/{IMAGES[name]}"

    def exec_url(self, cmd: list[str]) -> str:
        request = api_pb2.ExecRequest(container_id=self.exec_target, cmd=cmd, stdout=True)
        return str(self.daemon.runtime.Exec(request, timeout=RPC_TIMEOUT).url)

    def port_forward_url(self) -> str:
        request = api_pb2.PortForwardRequest(pod_sandbox_id=self.pod_id, port=[HTTP_PORT])
        return str(self.daemon.runtime.PortForward(request, timeout=RPC_TIMEOUT).url)

    def in_netns(self, fn: Callable[[], Any]) -> Any:
        """``fn()``'s coroutine run to completion in a thread inside the daemon's netns."""
        return self.daemon.netns.call(lambda: asyncio.run(fn()))


def make_pod(side: Side, size: int) -> None:
    """One pod: busybox ``sleep`` (exec target) and httpd serving ``size`` bytes as /big."""
    rt = side.daemon.runtime
    uid = secrets.token_hex(8)
    log_directory = side.log_root / f"bench_stream_{uid}"
    log_directory.mkdir(parents=True)
    pod_config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="stream", namespace="bench", uid=uid),
        hostname="stream",
        log_directory=str(log_directory),
        linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=side.cgroup_parent),
    )
    side.pod_id = rt.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=pod_config), timeout=RPC_TIMEOUT
    ).pod_sandbox_id
    script = f"head -c {size} /dev/zero > /www/big; exec httpd -f -p {HTTP_PORT} -h /www"
    ids = []
    for name, image, command in (
        ("shell", "busybox", ["sleep", "3600"]),
        ("httpd", "httpd", ["sh", "-c", script]),
    ):
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=side.image(image)),
            command=command,
            log_path=f"{name}/0.log",
            linux=api_pb2.LinuxContainerConfig(),
        )
        container_id = rt.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=side.pod_id, config=config, sandbox_config=pod_config
            ),
            timeout=RPC_TIMEOUT,
        ).container_id
        rt.StartContainer(
            api_pb2.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
        )
        ids.append(container_id)
    side.exec_target = ids[0]


# -- measurements ---------------------------------------------------------------------------


async def _get(side: Side, path: str, method: str = "GET") -> tuple[int, float]:
    """One HTTP/1.0 request through a fresh port-forward session: (bytes, seconds).

    The clock starts when the connection is opened (after the SPDY upgrade) and stops at
    the last byte; the response must be a 200.
    """
    forward = await SpdyPortForward.connect(side.port_forward_url())
    try:
        start = time.perf_counter()
        data, error = await forward.open(HTTP_PORT)
        await data.write(f"{method} {path} HTTP/1.0\r\nHost: pod\r\n\r\n".encode())
        await data.close()
        head = b""
        received = 0
        while chunk := await data.read(1 << 20):
            if len(head) < 64:
                head += chunk[:64]
            received += len(chunk)
        elapsed = time.perf_counter() - start
        problem = b""
        while chunk := await error.read():
            problem += chunk
    finally:
        await forward.close()
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
        detail = problem.decode(errors="replace") or head[:64].decode(errors="replace")
        raise RuntimeError(f"{method} {path}: no 200 ({detail!r})")
    return received, elapsed


def wait_http(side: Side, timeout: float = 120.0) -> None:
    """Until httpd answers through port-forward (it starts once /www/big is written)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            side.in_netns(lambda: _get(side, "/index.html", "HEAD"))
            return
        except Exception as exc:  # refused, reset, 404 while httpd starts: try again
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.label}: httpd never answered: {exc!r}") from None
            time.sleep(0.2)


async def _exec_true(side: Side, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        url = side.exec_url(["true"])  # blocking CRI call, before the clock starts
        start = time.perf_counter()
        result = await spdy_exec(url, stderr=False, timeout=30)
        samples.append(time.perf_counter() - start)
        if result.exit_code != 0:
            raise RuntimeError(f"exec of true exited {result.exit_code}: {result.status!r}")
    return samples


async def _downloads(side: Side, runs: int, size: int) -> list[float]:
    rates = []
    for _ in range(runs):
        received, elapsed = await _get(side, "/big")
        if received < size:
            raise RuntimeError(f"download ended after {received} of {size} body bytes")
        rates.append(received / elapsed / MB)
    return rates


def warm_up(side: Side) -> None:
    side.in_netns(lambda: _exec_true(side, WARMUP_EXECS))
    side.in_netns(lambda: _get(side, "/index.html"))


def measure_round(side: Side, execs: int, downloads: int, size: int) -> str:
    lat_ms = sorted(x * 1000 for x in side.in_netns(lambda: _exec_true(side, execs)))
    p50 = statistics.median(lat_ms)
    p95 = quantile95(lat_ms)
    rate = statistics.median(side.in_netns(lambda: _downloads(side, downloads, size)))
    side.p50s.append(p50)
    side.p95s.append(p95)
    side.rates.append(rate)
    return f"exec p50 {p50:7.2f} ms  p95 {p95:7.2f} ms   port-forward {rate:8.1f} MB/s"


def quantile95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


# -- setup ----------------------------------------------------------------------------------


def setup_side(
    label: str,
    base: Path,
    layout: Path,
    token: str,
    cleanups: Cleanups,
    log_root: Path,
    pycache: Path | None,
) -> Side:
    """Netns, registry, CNI config and daemon for ``label``; started, images pulled."""
    short = "r" if label == "rktlet" else "c"
    netns = NetNS(f"rktlet-bench-s{short}").create()
    cleanups.add(f"delete {label}'s netns", netns.delete)
    refs = set(IMAGES.values()) if label == "containerd" else {IMAGES["busybox"], IMAGES["httpd"]}
    registry = start_registry(netns, base, layout, refs)
    cleanups.add(f"stop {label}'s registry", registry.stop)
    cni_dir = base / "cni"
    daemon: CriDaemon
    if label == "rktlet":
        write_conflist(
            cni_dir, name="rkt-sbench", bridge="rks0", subnet="10.93.0.0/24", ipam_dir=base / "ipam"
        )
        run_dir = make_run_dir("rktlet-sbench")
        cleanups.add("remove rktlet's run dir", lambda: shutil.rmtree(run_dir, ignore_errors=True))
        daemon = RktletDaemon(
            base / "daemon",
            run_dir,
            netns,
            cni_conf_dir=cni_dir,
            insecure_registries=[registry.host],
            env=python_env(pycache),
        )
    else:
        write_conflist(
            cni_dir, name="ctd-sbench", bridge="cts0", subnet="10.92.0.0/24", ipam_dir=base / "ipam"
        )
        daemon = ContainerdDaemon(
            base / "daemon",
            netns,
            sandbox_image=f"{registry.host}/{IMAGES['pause']}",
            cni_conf_dir=cni_dir,
            plain_http_registries=[registry.host],
        )
    side = Side(label, daemon, registry.host, f"/rktlet-bench-{token}/{label}-stream", log_root)
    daemon.cgroup_parents.add(side.cgroup_parent)
    cleanups.add(f"{label}: pods, daemon, leftovers", daemon.cleanup)
    daemon.start()
    side.version = daemon.version()
    images = [side.image("busybox"), side.image("httpd")]
    if isinstance(daemon, ContainerdDaemon):
        images.insert(0, daemon.sandbox_image)
    for image in images:
        daemon.pull(image)
    problems = daemon.not_ready()
    if problems:
        raise PeerError(f"{label} Status not ready: {'; '.join(problems)}")
    return side


# -- report ---------------------------------------------------------------------------------


def print_summary(sides: list[Side]) -> None:
    print(
        f"\n{'medians over rounds':<20} {'exec p50 ms':>12} {'exec p95 ms':>12} "
        f"{'port-forward MB/s':>18}"
    )
    done = [s for s in sides if s.error is None and s.p50s]
    for side in done:
        print(
            f"{side.label:<20} {statistics.median(side.p50s):12.2f} "
            f"{statistics.median(side.p95s):12.2f} {statistics.median(side.rates):18.1f}"
        )
    if len(done) == 2:
        rk, ctd = done
        print(
            "ratio rktlet/containerd: "
            f"exec p50 {statistics.median(rk.p50s) / statistics.median(ctd.p50s):.2f}x, "
            f"p95 {statistics.median(rk.p95s) / statistics.median(ctd.p95s):.2f}x "
            "(lower is better); "
            f"port-forward {statistics.median(rk.rates) / statistics.median(ctd.rates):.2f}x "
            "(higher is better)"
        )


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=100, help="exec sessions per round")
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians over them)")
    parser.add_argument("--downloads", type=int, default=1, help="downloads per round")
    parser.add_argument("--size-mib", type=int, default=256, help="size of the download")
    parser.add_argument("--no-containerd", action="store_true", help="rktlet only")
    parser.add_argument(
        "--no-pyc-cache", action="store_true", help="run rktlet in this environment as it is"
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here")
    args = parser.parse_args(argv)
    if args.execs < 1 or args.runs < 1 or args.downloads < 1 or args.size_mib < 1:
        parser.error("--execs, --runs, --downloads and --size-mib must be positive")
    if os.geteuid() != 0:
        print("streaming.py: needs root (network namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "runc", "catatonit", "docker-registry", "busybox"):
        if shutil.which(tool) is None:
            print(f"streaming.py: {tool} is not installed (scripts/install.sh --dev)")
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    from fixtures.build_images import build_all

    size = args.size_mib * 1024 * 1024
    token = secrets.token_hex(4)
    base = Path(tempfile.mkdtemp(prefix="rktlet-bench-streaming-"))
    cleanups = Cleanups()
    cleanups.add("remove the temp dir", lambda: shutil.rmtree(base, ignore_errors=True))
    cleanups.add("remove the cgroups", lambda: remove_cgroup_tree(f"/rktlet-bench-{token}"))
    ctd_error: str | None = None
    load_before = os.getloadavg()
    try:
        layout = build_all(base / "images" / "layout")
        log_root = base / "pod-logs"
        pycache = None if args.no_pyc_cache else base / "pycache"
        rk = setup_side("rktlet", base / "rktlet", layout, token, cleanups, log_root, pycache)
        sides = [rk]
        if args.no_containerd:
            ctd_error = "containerd: not run (--no-containerd)"
        else:
            ctd: Side | None = None
            try:
                ctd = setup_side(
                    "containerd", base / "containerd", layout, token, cleanups, log_root, None
                )
                sides.append(ctd)
            except (PeerError, grpc.RpcError, OSError, RuntimeError) as exc:
                ctd_error = f"containerd cannot run here: {describe_rpc_error(exc)}"
                log(ctd_error)
        for side in sides:
            log(f"{side.label}: pod with httpd writing {args.size_mib} MiB, exec target")
            make_pod(side, size)
        for side in sides:
            wait_http(side)
            warm_up(side)
        for r in range(args.runs):
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                if side.error is not None:
                    continue
                try:
                    figures = measure_round(side, args.execs, args.downloads, size)
                    log(f"round {r + 1}/{args.runs} {side.label:<10} {figures}")
                except Exception as exc:  # whatever went wrong, the other runtime goes on
                    side.error = f"round {r + 1}: {describe_rpc_error(exc)}"
                    log(f"{side.label}: failed: {side.error}")
        load_after = os.getloadavg()

        print("\n== bench/streaming.py: CRI streaming, rktlet vs containerd, real containers ==")
        for line in machine_lines():
            print(line)
        print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (1 min)")
        for line in version_lines(
            sides, ("containerd", "runc", "containernetworking-plugins", "busybox-static")
        ):
            print(line)
        print(
            f"workload: {args.runs} rounds, runtimes alternating; per round and runtime "
            f"{args.execs} execs of `true` in a busybox container (one at a time, fresh CRI "
            f"Exec URL each, not timed) and {args.downloads} HTTP/1.0 GET of {args.size_mib} "
            "MiB from busybox httpd in the pod through CRI PortForward; client: "
            "streaming.client (SPDY/3.1) in the daemon's netns; runc, cgroupfs, CNI bridge"
        )
        print(
            "rktlet's Python bytecode: "
            + ("as this environment has it" if args.no_pyc_cache else "cached in the temp dir")
        )
        if ctd_error is not None:
            print(ctd_error)
        print(f"\n{'round':<6} {'runtime':<11} {'exec p50 ms':>12} {'p95 ms':>9} {'MB/s':>9}")
        for side in sides:
            for r, (p50, p95, rate) in enumerate(
                zip(side.p50s, side.p95s, side.rates, strict=True), 1
            ):
                print(f"{r:<6} {side.label:<11} {p50:12.2f} {p95:9.2f} {rate:9.1f}")
            if side.error is not None:
                print(f"{side.label} FAILED: {side.error}")
        print_summary(sides)
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
                if kept.name in ("daemon.log", "registry.log", "config.toml"):
                    rel = kept.relative_to(base)
                    shutil.copy(kept, args.keep_logs / "_".join(rel.parts))
        log("cleaning up")
        cleanups.run()


if __name__ == "__main__":
    sys.exit(main())
