"""The monitor fork server: monitors forked from a pre-loaded process, detached as ever.

Real processes throughout: a fork server started the way the daemon starts it, real
monitors, real apps; liveness is observed through pidfds and /proc.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from iottymux.control import ControlClient
from iottymux.forkserver import ForkServer, ForkServerUnavailable, MonitorStartError
from iottymux.monitor_cmd import start_detached
from tests.conftest import kill_tree, pid_alive


@pytest.fixture
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` (not our child) exits within ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(name)


def parent_of(pid: int) -> int:
    return int(status_field(pid, "PPid"))


def log_one_line(run_dir: Path, log: Path, text: str) -> bytes:
    with ControlClient(str(run_dir / "control.sock")) as client:
        client.request("add", app="a", command=["echo", text], log_path=str(log))
        client.request("start", app="a")
        client.request("wait", app="a")
    return log.read_bytes()


def test_forked_monitor_serves_its_pod_detached_from_the_fork_server(
    fork_server: ForkServer, monitors: list[int], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    pid = fork_server.start_monitor(str(run_dir))
    monitors.append(pid)
    server = fork_server.pid
    assert server is not None and pid != server
    # A session of its own (not leading it: it can never get a controlling
    # terminal), nobody's child of ours: detached exactly like --detach.
    assert os.getsid(pid) not in (pid, os.getsid(0), os.getsid(server))
    assert parent_of(pid) not in (server, os.getpid())
    # ps and pgrep tell it apart from the fork server and from other pods.
    assert cmdline(pid).endswith(f"-S -m iottymux monitor --run-dir {run_dir}")
    log = tmp_path / "logs" / "0.log"
    assert log_one_line(run_dir, log, "forked").endswith(b" stdout F forked\n")


def test_a_long_run_dir_still_shows_whole_on_the_command_line(
    fork_server: ForkServer, monitors: list[int], tmp_path: Path
) -> None:
    run_dir = tmp_path.joinpath(*["a-rather-long-directory-name"] * 10) / "run"
    pid = fork_server.start_monitor(str(run_dir))
    monitors.append(pid)
    assert len(str(run_dir)) > 300
    assert cmdline(pid).endswith(f"iottymux monitor --run-dir {run_dir}")


def test_neither_the_fork_server_nor_a_monitor_holds_the_clients_descriptors(
    fork_server: ForkServer, monitors: list[int], tmp_path: Path
) -> None:
    marker = tmp_path / "daemon-state.db"
    marker_fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o600)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The worst case: descriptors the daemon left inheritable.
        os.set_inheritable(marker_fd, True)
        listener.set_inheritable(True)
        listener.bind(str(tmp_path / "daemon.sock"))
        listener.listen()
        run_dir = tmp_path / "run"
        pid = fork_server.start_monitor(str(run_dir))
        monitors.append(pid)
        server = fork_server.pid
        assert server is not None
        listener_inode = f"socket:[{os.fstat(listener.fileno()).st_ino}]"
        for proc in (server, pid):
            targets = {
                int(fd): os.readlink(f"/proc/{proc}/fd/{fd}")
                for fd in os.listdir(f"/proc/{proc}/fd")
            }
            assert str(marker) not in targets.values()
            assert listener_inode not in targets.values()
        server_fds = sorted(int(fd) for fd in os.listdir(f"/proc/{server}/fd"))
        assert len(server_fds) == 4, "stdio and the request socket, nothing else"
        monitor_fds = {
            int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
        }
        assert monitor_fds[0] == "/dev/null"
        assert monitor_fds[1] == monitor_fds[2] == str(run_dir / "monitor.log")
    finally:
        os.close(marker_fd)
        listener.close()


def test_a_forked_monitor_has_the_signal_state_of_an_interpreter_started_one(
    fork_server: ForkServer, monitors: list[int], tmp_path: Path
) -> None:
    forked = fork_server.start_monitor(str(tmp_path / "forked"))
    monitors.append(forked)
    started = start_detached(str(tmp_path / "started"))
    monitors.append(started)
    assert "--detach" in cmdline(started) and "--detach" not in cmdline(forked)
    for field in ("SigBlk", "SigIgn", "SigCgt"):
        assert status_field(forked, field) == status_field(started, field), field
    assert int(status_field(forked, "SigBlk"), 16) == 0


def test_signals_blocked_in_the_clients_thread_are_not_blocked_in_monitors(
    monitors: list[int], tmp_path: Path
) -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM})
    server = ForkServer()
    try:
        pid = server.start_monitor(str(tmp_path / "run"))
        monitors.append(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        server.close()
    assert int(status_field(pid, "SigBlk"), 16) == 0
    # SIGTERM reaches it: a clean shutdown removes the control socket.
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    assert not (tmp_path / "run" / "control.sock").exists()


def test_a_killed_fork_server_is_replaced_on_the_next_start(
    fork_server: ForkServer, monitors: list[int], tmp_path: Path
) -> None:
    first = fork_server.start_monitor(str(tmp_path / "one"))
    monitors.append(first)
    old_server = fork_server.pid
    assert old_server is not None
    os.kill(old_server, signal.SIGKILL)
    assert wait_gone(old_server)
    second = fork_server.start_monitor(str(tmp_path / "two"))
    monitors.append(second)
    assert fork_server.pid not in (None, old_server)
    assert "--detach" not in cmdline(second), "forked by the new fork server, not the fallback"
    assert pid_alive(first), "the old server's monitor is unaffected"
    log = tmp_path / "logs" / "0.log"
    assert log_one_line(tmp_path / "two", log, "second").endswith(b" stdout F second\n")


def test_closing_the_client_stops_the_fork_server(fork_server: ForkServer, tmp_path: Path) -> None:
    server = fork_server.pid
    assert server is None, "started on first use only"
    pid = fork_server.start_monitor(str(tmp_path / "run"))
    try:
        server = fork_server.pid
        assert server is not None
        fork_server.close()
        assert fork_server.pid is None
        assert not pid_alive(server)
        assert pid_alive(pid)
    finally:
        kill_tree(pid)


def test_a_monitor_that_cannot_start_says_why(
    fork_server: ForkServer, monitors: list[int], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(MonitorStartError, match="Not a directory"):
        fork_server.start_monitor(str(blocker / "run"))
    # The fork server is fine and serves the next pod.
    pid = fork_server.start_monitor(str(tmp_path / "run"))
    monitors.append(pid)
    assert pid_alive(pid)


@pytest.mark.parametrize("python", ["/nonexistent/python3", "/bin/true"])
def test_without_a_working_fork_server_the_monitor_starts_the_old_way(
    python: str, monitors: list[int], tmp_path: Path
) -> None:
    broken = ForkServer(python=python)
    try:
        with pytest.raises(ForkServerUnavailable):
            broken.start_monitor(str(tmp_path / "direct"))
        pid = start_detached(str(tmp_path / "run"), fork_server=broken)
        monitors.append(pid)
    finally:
        broken.close()
    assert "--detach" in cmdline(pid)
    log = tmp_path / "logs" / "0.log"
    assert log_one_line(tmp_path / "run", log, "fallback").endswith(b" stdout F fallback\n")
