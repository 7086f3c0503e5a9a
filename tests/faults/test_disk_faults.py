"""Full and read-only disks under the log directory and under the daemon's state.

Each test mounts a small tmpfs of its own (and unmounts it, even on failure):
the pod log directory, or the daemon's ``--root``.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2
from tests.faults import crilog
from tests.faults.conftest import FaultDaemon, assert_no_leaks, wait_for


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write until the filesystem is full; the filler file is returned (delete to free)."""
    filler = directory / name
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    # Small writes may still fit in the last block: fill that too.
    with open(filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 512)
    return filler


@pytest.mark.timeout(120)
def test_log_dir_full_then_freed(fdaemon: FaultDaemon) -> None:
    control = fdaemon.base / "control"
    control.mkdir()
    with small_tmpfs(fdaemon.base / "small-logs", "512k") as logs:
        pod_config = fdaemon.pod_config("disk-full")
        pod_config.log_directory = str(logs / "pod")
        reply = fdaemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_config))
        pod_id = reply.pod_sandbox_id
        fdaemon.ids.add(pod_id)
        filler = fill(logs)
        script = (
            "i=0; while [ ! -e /control/stop ]; do echo $i; i=$((i+1)); sleep 0.002; done; "
            "echo $i > /control/last"
        )
        config = fdaemon.container_config(
            "writer",
            "busybox",
            ["sh", "-c", script],
            mounts=[api_pb2.Mount(container_path="/control", host_path=str(control))],
        )
        ctr = fdaemon.run_container(pod_id, pod_config, config)

        def message() -> str:
            return fdaemon.status(ctr).message

        wait_for(lambda: "still dropping" in message(), 20, "drops to be reported")
        assert "ENOSPC" in message()
        filler.unlink()
        wait_for(lambda: "still dropping" not in message(), 20, "writes to resume")
        log_path = Path(fdaemon.status(ctr).log_path)
        size = log_path.stat().st_size
        wait_for(lambda: log_path.stat().st_size > size + 2000, 20, "logging to go on")
        (control / "stop").touch()
        fdaemon.wait_exited(ctr)
        last = int((control / "last").read_text())
        numbers = [int(line) for line in crilog.terminated(crilog.read_lines(log_path))]
        # Whole lines only, in order, none twice; what is missing is what was reported.
        assert numbers == sorted(set(numbers))
        assert numbers[-1] == last - 1
        final = message()
        assert "still dropping" not in final
        dropped = int(final.split("log: ", 1)[1].split(" lines", 1)[0])
        assert dropped == last - len(numbers) > 0
        daemon_log = fdaemon.log_file.read_text()
        assert daemon_log.count("cannot write its log") == 1, "one warning per episode"
        assert daemon_log.count("log writes work again") == 1
        fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)


@contextlib.contextmanager
def state_on(
    daemon: FaultDaemon, mount: Callable[[Path], contextlib.AbstractContextManager[Path]]
) -> Iterator[Path]:
    """The daemon's --root on a filesystem of the test's (images copied in)."""
    daemon.stop()
    saved = daemon.base / "root-saved"
    daemon.root.rename(saved)
    try:
        with mount(daemon.root) as root:
            subprocess.run(["cp", "-a", f"{saved}/.", str(root)], check=True)
            daemon.start()
            try:
                yield root
            finally:
                daemon.cleanup_pods()
                daemon.stop()
                _unmount_below(daemon.root)
    finally:
        daemon.root.rmdir()
        saved.rename(daemon.root)
        daemon.start()


def _unmount_below(path: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


def _running_pod(daemon: FaultDaemon, name: str) -> tuple[str, str, Path]:
    pod_id, pod_config = daemon.run_pod(name)
    config = daemon.container_config(
        "ticker",
        "busybox",
        ["sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done"],
    )
    ctr = daemon.run_container(pod_id, pod_config, config)
    return pod_id, ctr, daemon.log_path(ctr)


@pytest.mark.timeout(180)
def test_state_dir_full(fdaemon: FaultDaemon) -> None:
    with state_on(fdaemon, lambda p: small_tmpfs(p, "64m")) as root:
        pod_id, ctr, log_path = _running_pod(fdaemon, "before-full")
        filler = fill(root)
        with pytest.raises(grpc.RpcError) as err:
            fdaemon.run_pod("while-full")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "no space" in err.value.details().lower()
        # Reads work; the running pod keeps logging; nothing half-made is listed.
        pods = fdaemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
        assert [p.id for p in pods] == [pod_id]
        size = log_path.stat().st_size
        wait_for(lambda: log_path.stat().st_size > size, 10, "the pod to keep logging")
        filler.unlink()
        again, _ = fdaemon.run_pod("after-full")
        assert fdaemon.pod_status(again).state == api_pb2.PodSandboxState.SANDBOX_READY
        fdaemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr, timeout=5))
        crilog.check_sequence(crilog.terminated(crilog.read_lines(log_path)))
        for pod in (pod_id, again):
            fdaemon.remove_pod(pod)
        assert_no_leaks(fdaemon, own_mounts=[root])
        assert "Traceback" not in fdaemon.log_file.read_text()


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[None]:
    """``path`` made read-only by a bind mount over itself (as an operator or a failing
    disk's remount would), for a daemon started on it."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.timeout(180)
def test_state_dir_read_only(fdaemon: FaultDaemon) -> None:
    pod_id, ctr, log_path = _running_pod(fdaemon, "before-ro")
    fdaemon.stop()
    with read_only_bind(fdaemon.root):
        fdaemon.start()
        # Reads are served; the pod keeps running and logging.
        assert fdaemon.status(ctr).state == api_pb2.ContainerState.CONTAINER_RUNNING
        assert [
            p.id for p in fdaemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
        ] == [pod_id]
        size = log_path.stat().st_size
        wait_for(lambda: log_path.stat().st_size > size, 10, "the pod to keep logging")
        # Writes get a clear, retryable error; nothing is half-made.
        with pytest.raises(grpc.RpcError) as err:
            fdaemon.run_pod("while-ro")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "read-only" in err.value.details().lower()
        with pytest.raises(grpc.RpcError) as err:
            fdaemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        fdaemon.stop()
    # Writable again: the next daemon carries on where the first left off.
    fdaemon.start()
    assert [
        p.metadata.name
        for p in fdaemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    ] == ["before-ro"]
    fdaemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr, timeout=5))
    crilog.check_sequence(crilog.terminated(crilog.read_lines(log_path)))
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)
    assert "Traceback" not in fdaemon.log_file.read_text()
