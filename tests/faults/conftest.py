"""Fault injection against a real daemon: the fixture, the leak check, the probes.

Each test gets its own ``rktlet serve`` in its own network namespace (as in
``tests/cri``), with only the busybox image, metrics served inside that
namespace, and a ``bin`` directory of its own placed first in the daemon's
PATH, where a test may put a wrapper that injects a fault into runc.  The
daemon's own fault hook (``RKTLET_FAULT_KILL_AT``, see :mod:`cri.faults`) is set
per start.

:func:`assert_no_leaks` is the common end of every test: no process, mount,
network namespace, cgroup (in any hierarchy), runc state, monitor, daemon file
descriptor or file of the test's pods and containers is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2
from tests.cri import conftest as cri_conftest
from tests.cri import test_metrics
from tests.cri.conftest import Daemon, image_archives

__all__ = ["image_archives"]  # the session's test images, shared with tests/cri

METRICS_PORT = test_metrics.PORT  # inside the test's own network namespace


class FaultDaemon(Daemon):
    """A daemon whose environment (fault hook, PATH) the test controls."""

    def __init__(self, base: Path, run_dir: Path, netns: str) -> None:
        self.bin_dir = base / "bin"
        self.bin_dir.mkdir()
        # CNI plugins: the real ones, linked, beside any fault plugin a test adds.
        self.cni_bin_dir = base / "cni-bin"
        self.cni_bin_dir.mkdir()
        for plugin in Path("/usr/lib/cni").iterdir():
            (self.cni_bin_dir / plugin.name).symlink_to(plugin)
        super().__init__(
            base,
            run_dir,
            netns,
            [
                "--metrics-address",
                f"127.0.0.1:{METRICS_PORT}",
                "--cni-bin-dir",
                str(self.cni_bin_dir),
            ],
        )
        self.env: dict[str, str] = {}
        #: Every pod and container id the test made, for the leak check.
        self.ids: set[str] = set()

    def start(self, **env: str) -> None:
        saved = dict(os.environ)
        os.environ["PATH"] = f"{self.bin_dir}:{saved.get('PATH', '/usr/bin:/bin')}"
        os.environ.pop("RKTLET_FAULT_KILL_AT", None)
        os.environ.update(env)
        try:
            super().start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def run_pod(self, name: str, **overrides: Any) -> tuple[str, api_pb2.PodSandboxConfig]:
        pod_id, config = super().run_pod(name, **overrides)
        self.ids.add(pod_id)
        return pod_id, config

    def run_container(self, *args: Any, **kwargs: Any) -> str:
        container_id = super().run_container(*args, **kwargs)
        self.ids.add(container_id)
        return container_id

    def wait_daemon_dead(self, timeout: float = 30) -> int:
        """Wait for a daemon that kills itself (the fault hook); its exit status."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        return code

    def status(self, container_id: str) -> api_pb2.ContainerStatus:
        status: api_pb2.ContainerStatus = self.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id)
        ).status
        return status

    def pod_status(self, pod_id: str) -> api_pb2.PodSandboxStatus:
        status: api_pb2.PodSandboxStatus = self.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        ).status
        return status

    def monitor_state(self, pod_id: str) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "pods" / pod_id / "state.json").read_text()))

    def monitor_pid(self, pod_id: str) -> int:
        return int(self.monitor_state(pod_id)["monitor"]["pid"])

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def log_path(self, container_id: str) -> Path:
        return Path(self.status(container_id).log_path)

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the metrics endpoint (0 when there is none)."""
        found = test_metrics.value(test_metrics.scrape(self), name, **labels)
        return found if found is not None else 0.0


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> float:
    """Poll ``predicate`` (for states with no event to wait on); seconds it took."""
    started = time.monotonic()
    delay = 0.005
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return time.monotonic() - started


def wait_stopped_event(daemon: FaultDaemon, container_ids: Iterable[str], action: Any) -> float:
    """Run ``action`` and wait for a CONTAINER_STOPPED event for each id; seconds taken."""
    wanted = set(container_ids)
    events = daemon.runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=30)
    try:
        # The stream is open once the first message or the server's headers arrive;
        # a Status call after subscribing orders the two.
        daemon.runtime.Version(api_pb2.VersionRequest())
        started = time.monotonic()
        action()
        for event in events:
            if event.container_event_type == api_pb2.ContainerEventType.CONTAINER_STOPPED_EVENT:
                wanted.discard(event.container_id)
                if not wanted:
                    return time.monotonic() - started
    except grpc.RpcError as exc:
        raise AssertionError(f"no stop event for {sorted(wanted)}: {exc.details()}") from None
    finally:
        events.cancel()
    raise AssertionError(f"no stop event for {sorted(wanted)}")


# -- leaks ---------------------------------------------------------------------------


def _processes_of(ids: set[str], run_dir: Path, exclude: set[int]) -> list[str]:
    found = []
    run = str(run_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/cgroup", "rb") as f:
                cgroup = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue
        if any(i.encode() in cgroup for i in ids) or (b"iottymux" in cmdline and run in cmdline):
            shown = cmdline.replace(b"\0", b" ")[:120]
            found.append(f"{entry}: {shown!r}")
    return found


def _cgroups_of(ids: set[str]) -> list[str]:
    """Cgroup directories (three levels deep) whose names carry one of ``ids``.

    Walked with scandir, not glob: other daemons on the machine (and this one, for
    containers it is still removing) delete cgroups while we look, and a directory
    gone between listing and entering it is simply not there.
    """
    found: list[str] = []

    def walk(path: str, depth: int) -> None:
        try:
            entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if any(i in entry.name for i in ids):
                found.append(entry.path)
            if depth < 3:
                walk(entry.path, depth + 1)

    for hierarchy in os.scandir("/sys/fs/cgroup"):
        if hierarchy.is_dir(follow_symlinks=False):
            walk(hierarchy.path, 1)
    return found


@dataclass
class Snapshot:
    daemon_pid: int
    fds: int
    extra: dict[str, Any] = field(default_factory=dict)


def snapshot(daemon: FaultDaemon) -> Snapshot:
    pid = daemon.proc.pid if daemon.proc is not None else 0
    fds = len(os.listdir(f"/proc/{pid}/fd")) if pid else 0
    return Snapshot(pid, fds)


def assert_no_leaks(
    daemon: FaultDaemon, before: Snapshot | None = None, *, own_mounts: Iterable[Path] = ()
) -> None:
    """Nothing of the test's pods and containers is left anywhere (but ``own_mounts``)."""
    ids = set(daemon.ids)
    for pod in daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        ids.add(pod.id)
    for ctr in daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers:
        ids.add(ctr.id)
    problems: list[str] = []
    exclude = {os.getpid()}
    if daemon.proc is not None:
        exclude.add(daemon.proc.pid)
    problems += [f"process {p}" for p in _processes_of(ids, daemon.run_dir, exclude)]
    problems += [f"cgroup {p}" for p in _cgroups_of(ids)]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    prefixes = (str(daemon.base), str(daemon.run_dir))
    allowed = {str(p) for p in own_mounts}
    problems += [f"mount {m}" for m in mounts if m.startswith(prefixes) and m not in allowed]
    for directory in (
        daemon.run_dir / "netns",
        daemon.run_dir / "pods",
        daemon.run_dir / "runc",
        daemon.root / "containers",
        daemon.root / "sandboxes",
    ):
        if directory.exists():
            problems += [f"file {p}" for p in directory.iterdir()]
    rootfs = daemon.root / "rootfs"
    if rootfs.exists():
        problems += [f"rootfs {p}" for p in rootfs.iterdir() if p.name in ids]
    pods = daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    problems += [f"pod record {p.id}" for p in pods]
    if before is not None and daemon.proc is not None and before.daemon_pid == daemon.proc.pid:
        fds = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
        if fds > before.fds:
            problems.append(f"daemon fds: {before.fds} before, {fds} after")
    assert not problems, "left behind:\n  " + "\n  ".join(problems)


@pytest.fixture
def fdaemon(tmp_path: Path, image_archives: dict[str, Path]) -> Iterator[FaultDaemon]:
    cri_conftest._require_tools()
    run_dir = Path(f"/run/rktlet-f-{secrets.token_hex(4)}")
    with cri_conftest.test_netns() as netns:
        d = FaultDaemon(tmp_path, run_dir, netns)
        try:
            d.import_images({"busybox": image_archives["busybox"]})
            d.start()
            yield d
        finally:
            try:
                if d.proc is None:
                    with contextlib.suppress(Exception):
                        d.start()
                d.cleanup_pods()
            finally:
                d.stop()
                cri_conftest._force_cleanup(d)
                if os.environ.get("RKTLET_TEST_KEEP_LOG") and d.log_file.exists():
                    print(d.log_file.read_text()[-20000:])


def counting_script(n: int | None = None, delay: str = "0") -> list[str]:
    """A busybox shell loop printing 0, 1, 2, ... (forever when ``n`` is None)."""
    limit = f"[ $i -lt {n} ]" if n is not None else ":"
    pause = f"; sleep {delay}" if delay != "0" else ""
    return ["sh", "-c", f"i=0; while {limit}; do echo $i; i=$((i+1)){pause}; done"]


def run_logged(
    daemon: FaultDaemon, pod_name: str, command: list[str], **fields: Any
) -> tuple[str, str]:
    pod_id, pod_config = daemon.run_pod(pod_name)
    ctr = daemon.run_container(
        pod_id, pod_config, daemon.container_config("app", "busybox", command, **fields)
    )
    return pod_id, ctr


def run_quietly(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)
