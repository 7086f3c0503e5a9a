"""Container environments (passwords, tokens) are readable by root only.

Checked the way an attacker would try: as an unprivileged user (uid 65534,
through setpriv), every file that holds a container's environment -- the state
database and its WAL files, the bundles' config.json, runc's and the monitor's
state -- must be unreadable, and the directories above them closed.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri.api import api_pb2
from tests.cri.conftest import Daemon

SECRET = "hunter2-s3cr3t"


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        check=False,
    )


@contextlib.contextmanager
def _crossable_ancestors(path: Path) -> Iterator[None]:
    """Let others cross the directories above ``path`` (pytest makes its base 0700),
    so that only the daemon's own modes stand between them and its files."""
    saved = []
    for parent in path.parents:
        mode = parent.stat().st_mode & 0o7777
        if mode & 0o001 == 0:
            saved.append((parent, mode))
            parent.chmod(mode | 0o001)
    try:
        yield
    finally:
        for parent, mode in saved:
            parent.chmod(mode)


@pytest.mark.timeout(120)
def test_container_secrets_are_not_readable_by_other_users(daemon: Daemon) -> None:
    with _crossable_ancestors(daemon.root):
        _check_secrets(daemon)


def _check_secrets(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("secrets")
    config = daemon.container_config(
        "app",
        "busybox",
        ["sleep", "3600"],
        envs=[api_pb2.KeyValue(key="PASSWORD", value=SECRET)],
    )
    ctr = daemon.run_container(pod_id, pod_config, config)
    holders = [
        daemon.root / "state.db",
        daemon.root / "state.db-wal",
        daemon.root / "state.db-shm",
        daemon.root / "containers" / ctr / "config.json",
        daemon.root / "sandboxes" / pod_id / "infra" / "config.json",
        daemon.run_dir / "runc" / ctr / "state.json",
    ]
    found = [p for p in holders if p.exists()]
    assert len(found) >= 5, found
    assert any(SECRET.encode() in p.read_bytes() for p in found), "the test checks nothing"
    for path in found:
        assert path.stat().st_mode & 0o077 == 0 or path.parent.stat().st_mode & 0o001 == 0, path
        denied = _as_nobody("cat", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
    # Crossable (user-namespaced pods reach their rootfs below it), not listable.
    assert daemon.root.stat().st_mode & 0o777 == 0o711
    assert (daemon.root / "containers").stat().st_mode & 0o777 == 0o700
    listing = _as_nobody("ls", str(daemon.root))
    assert listing.returncode != 0
    # Whatever nobody can find anywhere under the daemon's directories holds no secret.
    for top in (daemon.root, daemon.run_dir):
        grep = _as_nobody("grep", "-rl", SECRET, str(top))
        assert grep.stdout == "", grep.stdout
    for mode_path in (daemon.root / "state.db", daemon.root / "containers" / ctr / "config.json"):
        assert mode_path.stat().st_mode & 0o777 == 0o600, mode_path


@pytest.mark.timeout(120)
def test_log_symlinks_do_not_lead_the_monitor_outside_the_log_dir(daemon: Daemon) -> None:
    import grpc

    outside = daemon.base / "outside"
    outside.mkdir()
    pod_id, pod_config = daemon.run_pod("links")
    log_dir = Path(pod_config.log_directory)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "planted").symlink_to(outside)
    config = daemon.container_config("app", "busybox", ["echo", "hi"], log_path="planted/0.log")
    with pytest.raises(grpc.RpcError) as err:
        daemon.run_container(pod_id, pod_config, config)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith("log_path:")
    assert list(outside.iterdir()) == []
    assert daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []

    trailing = daemon.container_config("app", "busybox", ["echo", "hi"], log_path="app/")
    with pytest.raises(grpc.RpcError) as err:
        daemon.run_container(pod_id, pod_config, trailing)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("config.log_path:")

    # Rotation: the file is moved away and a symlink put in its place before the reopen.
    ticker = daemon.container_config(
        "ticker", "busybox", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]
    )
    ctr = daemon.run_container(pod_id, pod_config, ticker)
    log_path = Path(
        daemon.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=ctr)
        ).status.log_path
    )
    log_path.rename(log_path.with_suffix(".log.1"))
    log_path.symlink_to(outside / "rotated-through-link")
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=ctr))
    assert "cannot reopen" in err.value.details()
    assert list(outside.iterdir()) == []


@pytest.mark.timeout(120)
def test_metrics_on_a_unix_socket(tmp_path: Path, image_archives: dict[str, Path]) -> None:
    import secrets
    import socket

    from tests.cri import conftest as cri_conftest

    run_dir = Path(f"/run/rktlet-t-{secrets.token_hex(4)}")
    sock_path = run_dir / "metrics.sock"
    with cri_conftest.test_netns() as netns:
        d = Daemon(tmp_path, run_dir, netns, ["--metrics-address", f"unix://{sock_path}"])
        try:
            d.start()
            assert sock_path.stat().st_mode & 0o777 == 0o660
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(sock_path))
                sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.0 200")
            assert b"rktlet_monitors" in data
            d.stop()
            assert not sock_path.exists()
        finally:
            d.stop()
            cri_conftest._force_cleanup(d)
