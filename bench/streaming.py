"""Streaming server benchmark: rktlet's server against containerd's, same client.

Measured, for each server, with this package's SPDY client (it speaks like
client-go: the same streams, the same order, FIN on EOF, GOAWAY at the end):

* exec round trip: connect to an exec URL, run ``true``, read the status, close.
  p50 and p95 over --execs runs.  The URL is fetched before the clock starts
  (the CRI call is not part of the streaming path).
* port-forward throughput: one HTTP GET of a --size-mb file through a
  port-forward session, MB/s (median over --downloads).

rktlet runs in this process over the test-double runtime of
``tests/streaming/hostruntime.py`` (host processes; the CRI daemon with
containers does not exist yet), so its exec spawns ``true`` on the host where
containerd's goes through its shim and ``runc exec`` into a container: the
exec figures compare whole paths, not only the protocol code.  Port-forward
goes to the same HTTP server on 127.0.0.1 for both (a host-network pod).

containerd (Debian's package, CRI plugin) is started by this script with private
root, state and socket directories, and an image built here from busybox-static
and imported with ``ctr``; if it cannot run, the script says why and prints
rktlet's figures alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streaming import ExecRequest, PortForwardRequest, Server  # noqa: E402
from streaming.client import SpdyPortForward, spdy_exec  # noqa: E402
from tests.streaming.hostruntime import HostRuntime  # noqa: E402

MB = 1_000_000
IMAGE = "rktlet.local/bench:1"


# --- measurements -------------------------------------------------------------------


async def exec_latencies(get_url: Callable[[], Awaitable[str]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        url = await get_url()
        start = time.perf_counter()
        result = await spdy_exec(url, timeout=30)
        samples.append(time.perf_counter() - start)
        if result.exit_code != 0:
            raise RuntimeError(f"exec of true failed: {result.status}")
    return samples


async def download_rates(
    get_url: Callable[[], Awaitable[str]], port: int, size: int, runs: int
) -> list[float]:
    rates = []
    request = b"GET /big.bin HTTP/1.0\r\nHost: pod\r\n\r\n"
    for _ in range(runs):
        pf = await SpdyPortForward.connect(await get_url())
        try:
            start = time.perf_counter()
            data, _error = await pf.open(port)
            await data.write(request)
            await data.close()
            received = 0
            while chunk := await data.read(1 << 20):
                received += len(chunk)
            elapsed = time.perf_counter() - start
        finally:
            await pf.close()
        if received < size:
            raise RuntimeError(f"download ended after {received} of {size} bytes")
        rates.append(received / elapsed / MB)
    return rates


def summary(name: str, lat: list[float], rates: list[float]) -> dict[str, float]:
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p95 = lat_ms[min(len(lat_ms) - 1, round(0.95 * (len(lat_ms) - 1)))]
    rate = statistics.median(rates)
    print(
        f"{name:<11} exec true: p50 {p50:7.2f} ms  p95 {p95:7.2f} ms   "
        f"port-forward: {rate:8.1f} MB/s  (runs: {len(lat)} execs, {len(rates)} downloads)"
    )
    return {"p50": p50, "p95": p95, "rate": rate}


# --- the HTTP target ----------------------------------------------------------------


def start_http(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "streaming" / "httpserver.py"), str(root)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


# --- rktlet -------------------------------------------------------------------------


async def serve_rktlet() -> None:
    """The rktlet side, in its own process like containerd: one URL per stdin line."""
    runtime = HostRuntime()
    runtime.netns["hostpod"] = None
    server = Server(runtime)
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if line == "exec":
                url = server.get_exec(ExecRequest("c", ("true",), stdout=True, stderr=True))
            else:
                url = server.get_port_forward(PortForwardRequest("hostpod"))
            print(url, flush=True)
    finally:
        await server.stop()
        await runtime.close()


async def bench_rktlet(port: int, size: int, args: argparse.Namespace) -> dict[str, float]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-rktlet",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    async def ask(kind: str) -> str:
        stdin.write(kind.encode() + b"\n")
        await stdin.drain()
        return (await stdout.readline()).decode().strip()

    async def exec_url() -> str:
        return await ask("exec")

    async def pf_url() -> str:
        return await ask("pf")

    try:
        await exec_latencies(exec_url, 3)  # warm-up
        lat = await exec_latencies(exec_url, args.execs)
        rates = await download_rates(pf_url, port, size, args.downloads)
    finally:
        stdin.close()
        await child.wait()
    return summary("rktlet", lat, rates)


# --- containerd ---------------------------------------------------------------------


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def build_image(path: Path) -> None:
    """An OCI archive: busybox-static as /bin with sh, true and sleep."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name in ("bin", "tmp"):
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        members.append((info, None))
    info = tarfile.TarInfo("bin/busybox")
    info.size, info.mode = len(busybox), 0o755
    members.append((info, busybox))
    for tool in ("sh", "true", "sleep", "cat"):
        link = tarfile.TarInfo(f"bin/{tool}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        members.append((link, None))
    layer_tar = _tar_bytes(members)
    layer = gzip.compress(layer_tar, 1)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep", "1000000"], "Env": ["PATH=/bin"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
            },
        }
    ).encode()

    def desc(media: str, blob: bytes) -> dict[str, Any]:
        return {
            "mediaType": media,
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
        }

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        }
    ).encode()
    mdesc = desc("application/vnd.oci.image.manifest.v1+json", manifest)
    mdesc["annotations"] = {
        "io.containerd.image.name": IMAGE,
        "org.opencontainers.image.ref.name": "1",
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [mdesc]}).encode()
    blobs = [config, layer, manifest]
    members = []
    for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        members.append((info, data))
    for blob in blobs:
        info = tarfile.TarInfo("blobs/sha256/" + hashlib.sha256(blob).hexdigest())
        info.size = len(blob)
        members.append((info, blob))
    path.write_bytes(_tar_bytes(members))


CONTAINERD_CONFIG = """
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "{image}"
  enable_selinux = false
  # This host lacks CAP_SYS_RESOURCE: runc could not lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
"""


class Containerd:
    def __init__(self, work: Path, snapshotter: str) -> None:
        self.work = work
        self.sock = str(work / "containerd.sock")
        (work / "cni").mkdir(exist_ok=True)
        config = work / "config.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                root=work / "root",
                state=work / "state",
                sock=self.sock,
                image=IMAGE,
                cni=work / "cni",
                snapshotter=snapshotter,
            )
        )
        self.log = open(work / "containerd.log", "wb")  # noqa: SIM115 (lives as long as the daemon)
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("containerd did not start: " + self.tail())
            time.sleep(0.05)

    def tail(self) -> str:
        self.log.flush()
        return (self.work / "containerd.log").read_text(errors="replace")[-1500:]

    def ctr(self, *args: str) -> None:
        subprocess.run(
            ["ctr", "-a", self.sock, "-n", "k8s.io", *args], check=True, capture_output=True
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def bench_containerd(port: int, size: int, args: argparse.Namespace) -> dict[str, float]:
    import grpc

    from cri.api import api_pb2, api_pb2_grpc

    work = Path(tempfile.mkdtemp(prefix="rktlet-bench-ctrd-"))
    ctrd = Containerd(work, args.snapshotter)
    channel = None
    pod_id = ""
    try:
        ctrd.wait_ready()
        build_image(work / "image.tar")
        ctrd.ctr("images", "import", "--all-platforms", str(work / "image.tar"))
        channel = grpc.aio.insecure_channel(f"unix://{ctrd.sock}")
        rt = api_pb2_grpc.RuntimeServiceStub(channel)
        linux = api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
            )
        )
        pod_config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="bench", uid="bench-uid", namespace="default"),
            linux=linux,
            log_directory=str(work / "logs"),
        )
        pod_id = (
            await rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_config))
        ).pod_sandbox_id
        ctr_config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"),
            image=api_pb2.ImageSpec(image=IMAGE),
            command=["/bin/sleep", "1000000"],
            log_path="c.log",
        )
        ctr_id = (
            await rt.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=ctr_config, sandbox_config=pod_config
                )
            )
        ).container_id
        await rt.StartContainer(api_pb2.StartContainerRequest(container_id=ctr_id))

        async def exec_url() -> str:
            req = api_pb2.ExecRequest(container_id=ctr_id, cmd=["true"], stdout=True, stderr=True)
            return str((await rt.Exec(req)).url)

        async def pf_url() -> str:
            req = api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[port])
            return str((await rt.PortForward(req)).url)

        await exec_latencies(exec_url, 3)
        lat = await exec_latencies(exec_url, args.execs)
        rates = await download_rates(pf_url, port, size, args.downloads)
        return summary("containerd", lat, rates)
    except Exception as exc:
        raise RuntimeError(f"{exc}\n--- containerd log tail ---\n{ctrd.tail()}") from exc
    finally:
        if channel is not None:
            if pod_id:
                with contextlib.suppress(Exception):
                    rt = api_pb2_grpc.RuntimeServiceStub(channel)
                    await rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
                    await rt.RemovePodSandbox(
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
                    )
            await channel.close()
        ctrd.stop()
        subprocess.run(["umount", "-R", str(work / "state")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


# --- main ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="rktlet-bench-www-") as www:
        root = Path(www)
        with open(root / "big.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mb):
                f.write(block)
        http, port = start_http(root)
        try:
            print(
                f"exec: {args.execs} x `true`; port-forward: GET of {args.size_mb} MiB "
                f"x {args.downloads}; client: streaming.client (SPDY/3.1)"
            )
            ours = await bench_rktlet(port, size, args)
            if args.skip_containerd:
                return
            if shutil.which("containerd") is None:
                print("containerd: not installed (apt-get install containerd); rktlet figures only")
                return
            try:
                theirs = await bench_containerd(port, size, args)
            except Exception as exc:
                print(f"containerd: could not be measured here: {exc}")
                return
            print(
                f"ratios rktlet/containerd: exec p50 {ours['p50'] / theirs['p50']:.2f}x, "
                f"p95 {ours['p95'] / theirs['p95']:.2f}x (lower is better); "
                f"port-forward {ours['rate'] / theirs['rate']:.2f}x (higher is better)"
            )
        finally:
            http.kill()
            http.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--downloads", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--snapshotter", default="overlayfs")
    parser.add_argument("--skip-containerd", action="store_true")
    parser.add_argument("--serve-rktlet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(serve_rktlet() if args.serve_rktlet else run(args))


if __name__ == "__main__":
    main()
