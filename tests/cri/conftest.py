"""A real rktlet daemon for end-to-end tests, inside a network namespace of the test's.

The daemon runs in a fresh network namespace (``lo`` plus the pod bridge it
makes), so the bridge, veths and iptables rules of its pods never touch the
host's network; the tests reach pods from inside that namespace.  Images come
from the offline fixture builder, imported into the daemon's store.  Whatever
the tests leave -- pods, monitors, mounts, namespaces -- is removed afterwards,
even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2, api_pb2_grpc
from tests.conftest import kill_tree

REPO = Path(__file__).resolve().parents[2]
IMAGES = (
    "busybox",
    "httpd",
    "user-uid",
    "user-name",
    "user-uid-gid",
    "user-name-gid",
    "owners",
    "volume-a",
    "volume-b",
)


def _require_tools() -> None:
    for tool in ("runc", "ip", "nsenter", "catatonit"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/install.sh installs it)")


@pytest.fixture(scope="session")
def image_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fixtures.build_images import build_all, write_oci_archive

    out = tmp_path_factory.mktemp("cri-images")
    layout = build_all(out / "layout")
    return {
        name: write_oci_archive(
            layout,
            f"rktlet/{name}:latest",
            out / f"{name}.tar",
            image_name=f"docker.io/rktlet/{name}:latest",
        )
        for name in IMAGES
    }


@contextlib.contextmanager
def test_netns() -> Iterator[str]:
    name = f"rktlet-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class Daemon:
    """One ``rktlet serve`` process and a CRI client for it."""

    def __init__(
        self, base: Path, run_dir: Path, netns: str, extra_args: list[str] | None = None
    ) -> None:
        self.base = base
        self.root = base / "root"
        self.run_dir = run_dir
        self.socket = str(run_dir / "rktlet.sock")
        self.netns = netns
        self.cni_conf_dir = base / "cni"
        self.cni_conf_dir.mkdir(exist_ok=True)
        self.log_dir = base / "pod-logs"
        self.log_file = base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.runtime: Any = None
        self.images: Any = None
        #: More ``rktlet serve`` flags (e.g. ``--metrics-address``).
        self.extra_args = list(extra_args or [])

    def command(self) -> list[str]:
        return [
            "nsenter",
            f"--net={self.netns}",
            sys.executable,
            "-m",
            "cri.cli",
            "serve",
            "--socket",
            self.socket,
            "--root",
            str(self.root),
            "--run-dir",
            str(self.run_dir),
            "--cni-conf-dir",
            str(self.cni_conf_dir),
            "--log-level",
            "debug",
            "--default-subnet",
            "10.89.0.0/24",
            *self.extra_args,
        ]

    def start(self) -> None:
        log = open(self.log_file, "ab")  # noqa: SIM115 - the daemon owns it from here
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=REPO)
        log.close()
        self.channel = grpc.insecure_channel(
            f"unix://{self.socket}", options=[("grpc.max_receive_message_length", 40 << 20)]
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_file.read_text()[-3000:]}")
            try:
                grpc.channel_ready_future(self.channel).result(timeout=1)
                break
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError("daemon did not come up") from None
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def import_images(self, archives: dict[str, Path]) -> None:
        for archive in archives.values():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cri.cli",
                    "image",
                    "--root",
                    str(self.root),
                    "import",
                    str(archive),
                ],
                check=True,
                capture_output=True,
                cwd=REPO,
            )

    # -- helpers for tests ---------------------------------------------------------

    def pod_config(self, name: str, **overrides: Any) -> api_pb2.PodSandboxConfig:
        uid = secrets.token_hex(8)
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=uid),
            hostname=name,
            log_directory=str(self.log_dir / f"default_{name}_{uid}"),
            linux=api_pb2.LinuxPodSandboxConfig(),
        )
        for key, value in overrides.items():
            field = getattr(config, key)
            if hasattr(field, "CopyFrom"):
                field.CopyFrom(value)
            elif hasattr(field, "extend"):
                field.extend(value)
            else:
                setattr(config, key, value)
        return config

    def run_pod(self, name: str, **overrides: Any) -> tuple[str, api_pb2.PodSandboxConfig]:
        config = self.pod_config(name, **overrides)
        reply = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        return reply.pod_sandbox_id, config

    def container_config(
        self, name: str, image: str, command: list[str], **fields: Any
    ) -> api_pb2.ContainerConfig:
        fields.setdefault("log_path", f"{name}/0.log")
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=f"docker.io/rktlet/{image}:latest"),
            command=command,
            **fields,
        )

    def run_container(
        self,
        pod_id: str,
        pod_config: api_pb2.PodSandboxConfig,
        config: api_pb2.ContainerConfig,
        *,
        start: bool = True,
    ) -> str:
        reply = self.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config
            )
        )
        if start:
            self.runtime.StartContainer(
                api_pb2.StartContainerRequest(container_id=reply.container_id)
            )
        return str(reply.container_id)

    def wait_exited(self, container_id: str, timeout: float = 60) -> Any:
        """ContainerStatus once the container has exited (GetContainerEvents is the event)."""
        events = self.runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=timeout)
        try:
            status = self.runtime.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id=container_id)
            ).status
            if status.state == api_pb2.ContainerState.CONTAINER_EXITED:
                return status
            for event in events:
                if (
                    event.container_id == container_id
                    and event.container_event_type
                    == api_pb2.ContainerEventType.CONTAINER_STOPPED_EVENT
                ):
                    break
        finally:
            events.cancel()
        return self.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)
        ).status

    def cleanup_pods(self) -> None:
        if self.runtime is None:
            return
        with contextlib.suppress(grpc.RpcError):
            for pod in self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
                with contextlib.suppress(grpc.RpcError):
                    self.runtime.RemovePodSandbox(
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120
                    )


def _force_cleanup(daemon: Daemon) -> None:
    """Last resort after the daemon: monitors, runc containers, mounts, namespaces."""
    runc_root = daemon.run_dir / "runc"
    if runc_root.exists():
        listed = subprocess.run(
            ["runc", "--root", str(runc_root), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        for container_id in listed.stdout.split():
            subprocess.run(
                ["runc", "--root", str(runc_root), "delete", "--force", container_id],
                capture_output=True,
                check=False,
            )
    pods = daemon.run_dir / "pods"
    if pods.exists():
        for pod in pods.iterdir():
            state = pod / "state.json"
            with contextlib.suppress(Exception):
                import json

                kill_tree(int(json.loads(state.read_text())["monitor"]["pid"]))
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    prefixes = (str(daemon.base), str(daemon.run_dir))
    for mount in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(daemon.run_dir, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path: Path, image_archives: dict[str, Path]) -> Iterator[Daemon]:
    _require_tools()
    run_dir = Path(f"/run/rktlet-t-{secrets.token_hex(4)}")
    with test_netns() as netns:
        d = Daemon(tmp_path, run_dir, netns)
        try:
            d.import_images(image_archives)
            d.start()
            yield d
        finally:
            try:
                d.cleanup_pods()
            finally:
                d.stop()
                _force_cleanup(d)
                if os.environ.get("RKTLET_TEST_KEEP_LOG") and d.log_file.exists():
                    print(d.log_file.read_text()[-20000:])


# -- the real crictl -------------------------------------------------------------------

#: Names a directory holding the Kubernetes node binaries (crictl, kubelet, ...).
E2E_BIN_ENV = "RKTLET_E2E_BIN"


def e2e_binary(name: str) -> str | None:
    """``name`` from ``$RKTLET_E2E_BIN``, else from PATH; None when neither has it."""
    directory = os.environ.get(E2E_BIN_ENV)
    if directory:
        path = Path(directory) / name
        return str(path) if os.access(path, os.X_OK) else None
    return shutil.which(name)


class Crictl:
    """The real crictl, run inside the daemon's network namespace (where its streaming
    server listens), against the daemon's socket."""

    def __init__(self, binary: str, daemon: Daemon) -> None:
        self.binary = binary
        self.daemon = daemon
        self.config = daemon.base / "crictl.yaml"
        endpoint = f"unix://{daemon.socket}"
        self.config.write_text(
            f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 60\n"
        )

    def argv(self, *args: str) -> list[str]:
        return [
            "nsenter",
            f"--net={self.daemon.netns}",
            self.binary,
            "--config",
            str(self.config),
            *args,
        ]

    def run(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(self.argv(*args), input=input, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"crictl {' '.join(args)}: exit {proc.returncode}\n{proc.stderr.decode()}"
            )
        return proc

    def json_file(self, name: str, document: dict[str, Any]) -> str:
        import json

        path = self.daemon.base / name
        path.write_text(json.dumps(document))
        return str(path)


@pytest.fixture(scope="session")
def crictl_binary() -> str:
    binary = e2e_binary("crictl")
    if binary is None:
        pytest.skip(f"crictl not found (set {E2E_BIN_ENV} to the directory holding it, or PATH)")
    return binary


@pytest.fixture
def crictl(crictl_binary: str, daemon: Daemon) -> Crictl:
    # crictl_binary comes first: without crictl the test skips before a daemon starts.
    return Crictl(crictl_binary, daemon)
