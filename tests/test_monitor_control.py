"""The monitor as a process: control protocol, life cycle, reaping, detaching."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from iottymux.control import ControlClient, ControlCodec, ControlError, ProtocolError
from iottymux.state import read_state
from tests.conftest import MonitorHandle, kill_tree, pid_alive, start_monitor

PY = sys.executable


def raw_exchange(path: str, payload: bytes) -> list[dict[str, Any]]:
    """Send raw bytes on a fresh connection; read replies until the monitor closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


# -- the codec, fed bytes ----------------------------------------------------


def test_codec_splits_messages_fed_byte_by_byte() -> None:
    wire = b'{"id":1,"op":"ping"}\n\n{"id":2,"op":"status","app":"a"}\n{"id":3'
    codec = ControlCodec()
    messages = []
    for i in range(len(wire)):
        messages += codec.receive_data(wire[i : i + 1])
    assert messages == [{"id": 1, "op": "ping"}, {"id": 2, "op": "status", "app": "a"}]
    assert codec.receive_data(b',"op":"ping"}\n') == [{"id": 3, "op": "ping"}]


@pytest.mark.parametrize(
    ("wire", "message"),
    [(b"not json\n", "not JSON"), (b"[1, 2]\n", "JSON object"), (b"x" * (1 << 20 + 1), "longer")],
)
def test_codec_rejects_garbage(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        ControlCodec().receive_data(wire)


def test_encoded_messages_are_single_lines() -> None:
    encoded = ControlCodec.encode({"id": 1, "text": "two\nlines"})
    assert encoded.count(b"\n") == 1 and encoded.endswith(b"\n")


# -- requests and their errors ---------------------------------------------------


def test_control_socket_is_private(monitor: MonitorHandle) -> None:
    mode = os.stat(monitor.control_path).st_mode & 0o777
    assert mode == 0o600
    assert monitor.request("ping")["pid"] == monitor.pid


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"app": "Bad Name", "command": ["true"]}, "InvalidArgument", "app:"),
        ({"app": "a" * 129, "command": ["true"]}, "InvalidArgument", "app:"),
        ({"app": "ok", "command": []}, "InvalidArgument", "command:"),
        ({"app": "ok", "command": "true"}, "InvalidArgument", "command:"),
        ({"app": "ok", "command": ["true"], "env": ["NOEQUALS"]}, "InvalidArgument", "env:"),
        ({"app": "ok", "command": ["true"], "cwd": "relative"}, "InvalidArgument", "cwd:"),
        ({"app": "ok", "command": ["true"], "stdout": "file"}, "InvalidArgument", "stdout:"),
        ({"app": "ok", "command": ["true"], "stdin": "log"}, "InvalidArgument", "stdin:"),
        (
            {"app": "ok", "command": ["true"], "stdin": "tty", "stdout": "log"},
            "InvalidArgument",
            "stdout:",
        ),
        ({"app": "ok", "command": ["true"]}, "InvalidArgument", "log_path:"),
        (
            {"app": "ok", "command": ["true"], "log_path": "x.log"},
            "InvalidArgument",
            "log_path:",
        ),
        (
            {"app": "ok", "command": ["true"], "log_path": "/x", "max_line_size": 0},
            "InvalidArgument",
            "max_line_size:",
        ),
    ],
)
def test_add_errors_name_the_field(
    monitor: MonitorHandle, fields: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(ControlError) as err:
        monitor.request("add", **fields)
    assert err.value.code == code
    assert err.value.message.startswith(field)
    # Nothing half-created is left behind.
    assert monitor.request("status")["apps"] == []


def test_unknown_op_and_missing_app(monitor: MonitorHandle) -> None:
    with pytest.raises(ControlError) as unknown:
        monitor.request("explode")
    assert (unknown.value.code, unknown.value.message.split(":")[0]) == ("InvalidArgument", "op")
    for op in ("start", "signal", "reopen", "wait", "remove"):
        with pytest.raises(ControlError) as missing:
            monitor.request(op, app="ghost", signal="TERM")
        assert missing.value.code == "NotFound", op


def test_bad_signal_is_invalid_argument(monitor: MonitorHandle, tmp_path: Path) -> None:
    monitor.request("add", app="s", command=["sleep", "60"], log_path=str(tmp_path / "s.log"))
    monitor.request("start", app="s")
    for bad in ("SIGNOPE", 0, 999, True, None):
        with pytest.raises(ControlError) as err:
            monitor.request("signal", app="s", signal=bad)
        assert err.value.code == "InvalidArgument" and err.value.message.startswith("signal:")
    monitor.request("signal", app="s", signal=int(signal.SIGTERM))
    assert monitor.request("wait", app="s")["signal"] == signal.SIGTERM


def test_garbage_on_the_socket_gets_an_error_and_a_close(monitor: MonitorHandle) -> None:
    replies = raw_exchange(monitor.control_path, b'{"id": 1, "op": "ping"}\nthis is not json\n')
    assert replies[0]["ok"] is True
    assert replies[1]["ok"] is False and replies[1]["error"]["code"] == "InvalidArgument"
    # The monitor is unharmed.
    assert monitor.request("ping")["pid"] == monitor.pid


def test_life_cycle_rules(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = str(tmp_path / "a.log")
    monitor.request("add", app="a", command=["sleep", "60"], log_path=log)
    with pytest.raises(ControlError) as dup:
        monitor.request("add", app="a", command=["true"], log_path=log)
    assert dup.value.code == "AlreadyExists"
    monitor.request("start", app="a")
    with pytest.raises(ControlError) as again:
        monitor.request("start", app="a")
    assert again.value.code == "FailedPrecondition"
    with pytest.raises(ControlError) as busy:
        monitor.request("remove", app="a")
    assert busy.value.code == "FailedPrecondition"
    monitor.request("signal", app="a", signal="SIGKILL")
    monitor.request("wait", app="a")
    monitor.request("remove", app="a")
    assert monitor.request("status")["apps"] == []
    assert read_state(str(monitor.run_dir / "state.json"))["apps"] == {}
    assert Path(log).exists(), "the log belongs to the kubelet; remove must not delete it"


def test_start_failure_is_reported_and_recorded(monitor: MonitorHandle, tmp_path: Path) -> None:
    monitor.request("add", app="nope", command=["/does/not/exist"], log_path=str(tmp_path / "n"))
    with pytest.raises(ControlError) as err:
        monitor.request("start", app="nope")
    assert err.value.code == "FailedPrecondition"
    assert "No such file" in err.value.message
    status = monitor.request("status", app="nope")["apps"][0]
    assert (status["state"], status["exit_code"], status["reason"]) == ("exited", 127, "StartError")


def test_env_and_working_directory(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = tmp_path / "env.log"
    monitor.run_app(
        "env",
        ["sh", "-c", 'echo "$GREETING from $(pwd)"'],
        env=["GREETING=hello", "PATH=/usr/bin:/bin"],
        cwd=str(tmp_path),
        log_path=str(log),
    )
    assert log.read_bytes().endswith(f" stdout F hello from {tmp_path}\n".encode())


def test_null_streams_are_not_logged(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = tmp_path / "quiet.log"
    status = monitor.run_app(
        "quiet",
        ["sh", "-c", "echo out; echo err >&2"],
        stdout="null",
        stderr="log",
        log_path=str(log),
    )
    assert status["exit_code"] == 0
    assert log.read_bytes().endswith(b" stderr F err\n")
    assert b"stdout" not in log.read_bytes()


# -- events, reaping, shutdown ---------------------------------------------------


def test_exit_event_comes_after_the_log_is_complete(monitor: MonitorHandle, tmp_path: Path) -> None:
    log = tmp_path / "last.log"
    watcher = monitor.new_client()
    try:
        watcher.request("subscribe")
        monitor.request(
            "add",
            app="last",
            command=[PY, "-c", "import os; os.write(1, b'x' * 300000 + b'\\nlast words\\n')"],
            log_path=str(log),
        )
        monitor.request("start", app="last")
        event = watcher.receive()
        # At the moment the exit is reported, the last line is already in the file
        # and the exit is already in the state file.
        assert log.read_bytes().endswith(b" stdout F last words\n")
        assert event["event"] == "exited" and event["app"] == "last" and event["exit_code"] == 0
        saved = read_state(str(monitor.run_dir / "state.json"))
        assert saved["apps"]["last"]["finished_at"] == event["finished_at"]
    finally:
        watcher.close()


@pytest.mark.timeout(60)
def test_a_subscribed_client_keeps_events_while_waiting_for_answers(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    log = tmp_path / "ev.log"
    # The requesting client is itself subscribed: the exit event arrives on the
    # same connection, in between answers, and must be set aside, not looped on.
    monitor.request("subscribe")
    monitor.request("add", app="ev", command=["true"], log_path=str(log))
    monitor.request("start", app="ev")
    final = monitor.request("wait", app="ev")
    for _ in range(3):
        assert monitor.request("ping")["ok"] is True
    event = monitor.client.receive()
    assert event["event"] == "exited" and event["app"] == "ev"
    assert event["finished_at"] == final["finished_at"]


def test_orphans_of_an_app_are_reparented_and_reaped(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    pid_file = tmp_path / "orphan.pid"
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    # The app leaves a background child behind that outlives it.
    script = f"(read x < {fifo}) >/dev/null 2>&1 & echo $! > {pid_file}"
    monitor.run_app("parent", ["sh", "-c", script], log_path=str(tmp_path / "p.log"))
    orphan = int(pid_file.read_text())
    with open(f"/proc/{orphan}/stat", "rb") as f:
        ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    assert ppid == monitor.pid, "the monitor is the subreaper of its apps' descendants"
    # The pidfd turns readable when the orphan dies; the monitor reaps it from
    # its loop on SIGCHLD.  By the third ping answered after that, the loop has
    # gone round once entirely after the signal was pending.  Opened before the
    # release: once released, the orphan may be dead and reaped at once.
    pidfd = os.pidfd_open(orphan)
    with open(fifo, "w") as release:
        release.write("go\n")
    try:
        assert select.select([pidfd], [], [], 10)[0], "orphan did not exit"
    finally:
        os.close(pidfd)
    for _ in range(3):
        monitor.request("ping")
    assert not os.path.exists(f"/proc/{orphan}"), "orphan left as a zombie"


def test_shutdown_kills_apps_records_them_and_exits(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pid = start_monitor(run_dir)
    try:
        with ControlClient(str(run_dir / "control.sock")) as client:
            client.request(
                "add", app="long", command=["sleep", "600"], log_path=str(tmp_path / "l")
            )
            app_pid = client.request("start", app="long")["pid"]
            assert client.request("shutdown")["ok"] is True
        pidfd = os.pidfd_open(pid)  # the monitor is not our child
        try:
            assert select.select([pidfd], [], [], 15)[0], "monitor did not exit"
        finally:
            os.close(pidfd)
        assert not pid_alive(app_pid)
        assert not (run_dir / "control.sock").exists()
        saved = read_state(str(run_dir / "state.json"))
        assert saved["apps"]["long"]["signal"] == signal.SIGKILL
    finally:
        kill_tree(pid)


def test_sigterm_shuts_the_monitor_down_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pid = start_monitor(run_dir)
    try:
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGTERM)
        assert select.select([pidfd], [], [], 15)[0], "monitor ignored SIGTERM"
        os.close(pidfd)
        assert not (run_dir / "control.sock").exists()
    finally:
        kill_tree(pid)


# -- detaching and reconnecting --------------------------------------------------


#: How a starter gets a detached monitor: as ``iottymux monitor --detach`` does, and
#: forked by a fork server of its own (the daemon's way), which must die with it.
STARTERS = {
    "interpreter": "from iottymux.monitor_cmd import start_detached\n"
    "print(start_detached(RUN_DIR), 0, flush=True)",
    "fork server": "from iottymux.forkserver import ForkServer\n"
    "server = ForkServer()\n"
    "print(server.start_monitor(RUN_DIR), server.pid, flush=True)",
}


@pytest.mark.parametrize("how", sorted(STARTERS))
def test_monitor_survives_the_death_of_its_starter(tmp_path: Path, how: str) -> None:
    run_dir = tmp_path / "run"
    starter_code = "\n".join(
        [
            "import sys, time",
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})",
            f"RUN_DIR = {str(run_dir)!r}",
            STARTERS[how],
            "time.sleep(3600)",
        ]
    )
    starter = subprocess.Popen(
        [PY, "-c", starter_code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    monitor_pid = 0
    try:
        assert starter.stdout is not None
        monitor_pid, server_pid = (int(x) for x in starter.stdout.readline().split())
        assert os.getsid(monitor_pid) != os.getsid(starter.pid)
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
        if server_pid:
            # The daemon's death is its fork server's: it reads the hang-up and exits.
            pidfd = os.pidfd_open(server_pid)
            try:
                assert select.select([pidfd], [], [], 15)[0], "the fork server outlived its client"
            finally:
                os.close(pidfd)
        assert pid_alive(monitor_pid)
        log = tmp_path / "after.log"
        with ControlClient(str(run_dir / "control.sock")) as client:
            assert client.request("ping")["pid"] == monitor_pid
            client.request("add", app="a", command=["echo", "still here"], log_path=str(log))
            client.request("start", app="a")
            client.request("wait", app="a")
        assert log.read_bytes().endswith(b" stdout F still here\n")
    finally:
        if starter.poll() is None:
            os.killpg(starter.pid, signal.SIGKILL)
            starter.wait()
        if starter.stdout is not None:
            starter.stdout.close()
        if monitor_pid:
            kill_tree(monitor_pid)


def test_new_client_after_the_old_one_died_mid_request(
    monitor: MonitorHandle, tmp_path: Path
) -> None:
    monitor.request("add", app="keep", command=["sleep", "600"], log_path=str(tmp_path / "k"))
    monitor.request("start", app="keep")
    dying_code = textwrap.dedent(f"""
        import socket, sys, time
        s = socket.socket(socket.AF_UNIX)
        s.connect({monitor.control_path!r})
        s.sendall(b'{{"id": 1, "op": "subscribe"}}\\n{{"id": 2, "op": "sta')
        s.recv(100)
        print("connected", flush=True)
        time.sleep(3600)
    """)
    dying = subprocess.Popen([PY, "-c", dying_code], stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout is not None and dying.stdout.readline().strip() == "connected"
    finally:
        dying.kill()
        dying.wait()
        if dying.stdout is not None:
            dying.stdout.close()
    # The daemon restarts: a brand-new client sees the same apps and can act.
    with ControlClient(monitor.control_path) as fresh:
        status = fresh.request("status")
        assert [a["app"] for a in status["apps"]] == ["keep"]
        assert status["apps"][0]["state"] == "running"
        fresh.request("signal", app="keep", signal="TERM")
        assert fresh.request("wait", app="keep")["signal"] == signal.SIGTERM
