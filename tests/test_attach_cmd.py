"""``iottymux attach`` end to end: the real command in a real pty, real monitors, real apps.

Each test runs ``python -m iottymux attach`` as a subprocess inside a pty made by
ptyprocess (the test plays the user at the keyboard and reads the screen), against
a monitor started by the ``monitor`` fixture.  Synchronisation is by events only:
expected output (with deadlines), control requests such as ``wait``, and the exit
of the attach process observed through a pidfd.  The terminal state is read with
``tcgetattr`` on the pty master, which reports the slave's attributes even after
the attach process has exited, so a terminal left raw is caught.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ptyprocess import PtyProcess

from iottymux import attachproto as proto
from iottymux.attach_cmd import DetachScanner, parse_detach_keys
from iottymux.attachclient import AttachClient, endpoint_path, read_endpoints
from tests.conftest import REPO, MonitorHandle

TIMEOUT = 15.0
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ATTACH = [sys.executable, "-m", "iottymux", "attach"]
LFLAG = 3


def default_pty_attrs() -> list[Any]:
    """What a fresh pty looks like: the state a restored terminal must be back in."""
    master, slave = os.openpty()
    try:
        return termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)


class Term:
    """``iottymux attach`` running in a pty; the test is its user."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80) -> None:
        self.proc = PtyProcess.spawn(
            [*ATTACH, *args], env=ENV, cwd=str(REPO), dimensions=(rows, cols)
        )
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.screen = bytearray()
        #: Where the next expect() starts looking.
        self.mark = 0
        self.eof = False
        self.status: int | None = None

    def _read(self, deadline: float) -> bool:
        """One read; False at the deadline or at EOF."""
        if self.eof:
            return False
        ready, _, _ = select.select([self.proc.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            data = os.read(self.proc.fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.screen += data
        return True

    def expect(self, pattern: bytes, timeout: float = TIMEOUT) -> re.Match[bytes]:
        """Wait until ``pattern`` (a regex) shows after the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.screen, self.mark)
            if match:
                self.mark = match.end()
                return match
            if not self._read(deadline):
                state = "exited" if self.eof else "timed out"
                raise AssertionError(
                    f"{state} waiting for {pattern!r}; screen after mark: "
                    f"{bytes(self.screen[self.mark :])!r}"
                )

    def write(self, data: bytes) -> None:
        self.proc.write(data)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Read the screen to EOF, then return the exit status (128+N for signal N)."""
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        ready, _, _ = select.select([self.pidfd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"attach did not exit; screen: {bytes(self.screen)!r}"
        self.proc.wait()
        if self.proc.signalstatus is not None:
            self.status = 128 + self.proc.signalstatus
        else:
            self.status = self.proc.exitstatus
        assert self.status is not None
        return self.status

    def exited_unread(self, timeout: float = TIMEOUT) -> bool:
        """Whether the process exits within ``timeout``, without draining its output."""
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(ready)

    def wait_blocked_writing_stdout(self, timeout: float = TIMEOUT) -> None:
        """Poll /proc until the process sits in write(1, ...): our terminal is full."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(f"/proc/{self.proc.pid}/syscall") as f:
                # "<nr> <arg0> ...": write is syscall 1 on x86-64.
                if f.read().split()[:2] == ["1", "0x1"]:
                    return
            time.sleep(0.01)
        raise AssertionError("attach never blocked writing to its terminal")

    def attrs(self) -> list[Any]:
        return termios.tcgetattr(self.proc.fd)

    def is_raw(self) -> bool:
        lflag = self.attrs()[LFLAG]
        return not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)

    def close(self) -> None:
        if self.proc.isalive():
            self.proc.kill(signal.SIGKILL)
            self.proc.wait()
        self.proc.close(force=True)
        os.close(self.pidfd)


@pytest.fixture
def terms() -> Iterator[list[Term]]:
    started: list[Term] = []
    try:
        yield started
    finally:
        for term in started:
            term.close()


def attach(terms: list[Term], *args: str, rows: int = 24, cols: int = 80) -> Term:
    term = Term(list(args), rows=rows, cols=cols)
    terms.append(term)
    return term


def run_attach(
    *args: str, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ATTACH, *args],
        env=ENV,
        cwd=str(REPO),
        stdin=stdin,
        capture_output=True,
        timeout=TIMEOUT,
    )


def tty_app(monitor: MonitorHandle, name: str, script: str, **fields: Any) -> None:
    monitor.request(
        "add",
        app=name,
        command=["sh", "-c", script],
        stdin="tty",
        stdout="tty",
        stderr="tty",
        **fields,
    )
    monitor.request("start", app=name)


def stream_app(monitor: MonitorHandle, name: str, script: str, **fields: Any) -> None:
    monitor.request(
        "add",
        app=name,
        command=["sh", "-c", script],
        stdin="stream",
        stdout="stream",
        stderr="stream",
        **fields,
    )
    monitor.request("start", app=name)


def app_state(monitor: MonitorHandle, name: str) -> str:
    state: str = monitor.request("status", app=name)["apps"][0]["state"]
    return state


def target(monitor: MonitorHandle, app: str) -> list[str]:
    return ["--run-dir", str(monitor.run_dir), "--app", app]


def wait_for_output(monitor: MonitorHandle, app: str, marker: bytes) -> None:
    """Block until the app has printed ``marker`` (seen through an attach of our own)."""
    with AttachClient(endpoint_path(str(monitor.run_dir), app), stdin=False, replay=True) as c:
        seen = b""
        while marker not in seen:
            kind, payload = c.next_frame()
            assert kind in (proto.STDOUT, proto.STDERR), (kind, payload)
            seen += payload


# -- tty apps --------------------------------------------------------------------


def test_typing_into_cat_echoes_through_a_raw_terminal(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    tty_app(monitor, "cat", "echo READY; exec cat")
    term = attach(terms, "--replay", *target(monitor, "cat"))
    term.expect(b"READY\r\n")
    # App output has arrived, so the session runs: our terminal must be raw,
    # or the echo below could be our own terminal's instead of the app's.
    assert term.is_raw()
    term.write(b"hello\r")
    # The app's terminal echoes the line, then cat writes it back.
    term.expect(b"hello\r\nhello\r\n")
    term.write(b"\x10\x11")
    term.expect(b"detached from app 'cat'")
    assert term.wait() == 0


def test_stty_size_follows_the_attached_terminal_and_its_resizes(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    tty_app(monitor, "size", "echo READY; read a; stty size; read b; stty size; exec cat")
    term = attach(terms, "--replay", *target(monitor, "size"), rows=30, cols=100)
    term.expect(b"READY")
    term.write(b"\r")
    term.expect(rb"\r\n30 100\r\n")
    term.proc.setwinsize(40, 132)
    term.write(b"\r")
    term.expect(rb"\r\n40 132\r\n")
    term.write(b"\x10\x11")
    assert term.wait() == 0


def test_detach_leaves_the_app_running_with_its_stdin_open_and_restores_the_terminal(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    before = default_pty_attrs()
    tty_app(monitor, "cat", "echo READY; exec cat")
    first = attach(terms, "--replay", *target(monitor, "cat"))
    first.expect(b"READY")
    assert first.is_raw()
    first.write(b"one\r")
    first.expect(b"one\r\none\r\n")
    first.write(b"\x10\x11")
    first.expect(b"detached from app 'cat'; it keeps running")
    assert first.wait() == 0
    assert first.attrs() == before
    assert app_state(monitor, "cat") == "running"
    # The app's stdin survived the detach: a new attacher's keys still reach cat.
    second = attach(terms, "--replay", *target(monitor, "cat"))
    second.expect(b"one\r\none\r\n")
    second.write(b"two\r")
    second.expect(b"two\r\ntwo\r\n")
    second.write(b"\x10\x11")
    assert second.wait() == 0
    assert second.attrs() == before
    assert app_state(monitor, "cat") == "running"


def test_custom_detach_keys_and_broken_sequences_pass_through(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    # -ixon so that ctrl-q reaches cat; cat -v shows control bytes as ^X.
    tty_app(monitor, "catv", "stty -ixon -echo; echo READY; exec cat -v")
    term = attach(terms, "--replay", "--detach-keys", "ctrl-x,x", *target(monitor, "catv"))
    term.expect(b"READY")
    # The default sequence is now ordinary input, and so is a ctrl-x not followed by x.
    term.write(b"a\x10\x11b\x18y\r")
    term.expect(rb"a\^P\^Qb\^Xy\r\n")
    term.write(b"\x18x")
    term.expect(b"detached")
    assert term.wait() == 0
    assert app_state(monitor, "catv") == "running"


def test_disabled_detach_keys_reach_the_app(monitor: MonitorHandle, terms: list[Term]) -> None:
    tty_app(monitor, "catv", "stty -ixon -echo; echo READY; exec cat -v")
    term = attach(terms, "--replay", "--detach-keys", "", *target(monitor, "catv"))
    term.expect(b"READY")
    term.write(b"\x10\x11\r")
    term.expect(rb"\^P\^Q\r\n")
    monitor.request("signal", app="catv", signal="SIGKILL")
    assert term.wait() == 128 + signal.SIGKILL


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminating_signal_restores_the_terminal_and_leaves_the_app(
    monitor: MonitorHandle, terms: list[Term], signum: int
) -> None:
    before = default_pty_attrs()
    tty_app(monitor, "cat", "echo READY; exec cat")
    term = attach(terms, "--replay", *target(monitor, "cat"))
    term.expect(b"READY")
    assert term.is_raw()
    term.proc.kill(signum)
    assert term.wait() == 128 + signum
    assert term.attrs() == before
    assert app_state(monitor, "cat") == "running"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reads x86-64 syscall numbers")
def test_a_signal_interrupts_a_write_stuck_on_a_full_terminal(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    tty_app(monitor, "yes", "echo READY; read go; exec yes")
    term = attach(terms, "--replay", *target(monitor, "yes"))
    term.expect(b"READY")
    term.write(b"\r")
    term.expect(b"(y\r\n){1000}")
    # From here on nobody reads our terminal: the attach blocks writing to it.
    term.wait_blocked_writing_stdout()
    term.proc.kill(signal.SIGTERM)
    assert term.exited_unread(), "a write to a full terminal kept SIGTERM from ending attach"
    assert term.wait() == 128 + signal.SIGTERM
    assert term.attrs() == default_pty_attrs()


def test_replay_shows_output_printed_before_the_attach(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    tty_app(monitor, "early", "echo early-line; exec cat")
    wait_for_output(monitor, "early", b"early-line")
    plain = attach(terms, *target(monitor, "early"))
    plain.write(b"sentinel\r")
    plain.expect(b"sentinel\r\nsentinel\r\n")
    # Replayed output would have come first; without --replay it never comes.
    assert b"early-line" not in plain.screen
    plain.write(b"\x10\x11")
    assert plain.wait() == 0
    replayed = attach(terms, "--replay", *target(monitor, "early"))
    replayed.expect(b"early-line\r\n")
    # The ring holds everything since, in order.
    replayed.expect(b"sentinel\r\nsentinel\r\n")
    replayed.write(b"\x10\x11")
    assert replayed.wait() == 0


# -- exit codes -------------------------------------------------------------------


def test_attach_after_exit_prints_the_exit_and_returns_its_code(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    monitor.run_app(
        "done", ["sh", "-c", "echo bye; exit 7"], stdin="stream", stdout="stream", stderr="stream"
    )
    term = attach(terms, "--replay", *target(monitor, "done"))
    term.expect(b"bye\r\n")
    term.expect(b"app 'done' has exited \\(exit code 7, Error\\)")
    assert term.wait() == 7


@pytest.mark.parametrize("tty", [False, True])
def test_the_apps_exit_code_becomes_ours(
    monitor: MonitorHandle, terms: list[Term], tty: bool
) -> None:
    start = tty_app if tty else stream_app
    start(monitor, "seven", "echo READY; read line; exit 7")
    term = attach(terms, "--replay", *target(monitor, "seven"))
    term.expect(b"READY")
    term.write(b"go\r")
    assert term.wait() == 7
    # Exiting with the app prints nothing of ours.
    assert b"iottymux attach" not in term.screen
    assert term.attrs() == default_pty_attrs()


def test_an_app_killed_by_a_signal_gives_128_plus_the_signal(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    tty_app(monitor, "victim", "echo READY; exec cat")
    term = attach(terms, "--replay", *target(monitor, "victim"))
    term.expect(b"READY")
    monitor.request("signal", app="victim", signal="SIGKILL")
    assert term.wait() == 128 + signal.SIGKILL


# -- streams (no tty) -----------------------------------------------------------------


def test_stdin_eof_ends_a_stdin_once_apps_input(monitor: MonitorHandle, terms: list[Term]) -> None:
    stream_app(monitor, "once", "echo READY; cat; echo cat-ended", stdin_once=True)
    term = attach(terms, "--replay", *target(monitor, "once"))
    term.expect(b"READY\r\n")
    # Not raw: the app has no tty, so our terminal edits lines and echoes them.
    assert not term.is_raw()
    term.write(b"hi\r")
    term.expect(b"hi\r\nhi\r\n")
    term.write(b"\x04")  # ctrl-d: end of our stdin
    term.expect(b"cat-ended\r\n")
    assert term.wait() == 0
    assert app_state(monitor, "once") == "exited"


def test_piped_stdin_reaches_the_app_and_its_end_ends_a_stdin_once_app(
    monitor: MonitorHandle,
) -> None:
    stream_app(monitor, "sort", "sort; echo sorted >&2", stdin_once=True)
    done = subprocess.run(
        [*ATTACH, *target(monitor, "sort")],
        env=ENV,
        cwd=str(REPO),
        input=b"pear\napple\nfig\n",
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"apple\nfig\npear\n"
    assert done.stderr == b"sorted\n"


def test_stdout_and_stderr_arrive_on_our_stdout_and_stderr(monitor: MonitorHandle) -> None:
    monitor.run_app(
        "both",
        ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        stdin="null",
        stdout="stream",
        stderr="stream",
    )
    done = run_attach("--replay", *target(monitor, "both"))
    assert done.returncode == 3
    assert done.stdout == b"to-out\n"
    assert done.stderr.startswith(b"to-err\n")
    assert b"has exited (exit code 3" in done.stderr


def test_no_stdin_attaches_output_only(monitor: MonitorHandle, terms: list[Term]) -> None:
    tty_app(monitor, "cat", "echo READY; exec cat")
    term = attach(terms, "--replay", "--no-stdin", *target(monitor, "cat"))
    # READY\r\n, not READY\r\r\n: our terminal leaves the app's newlines alone...
    term.expect(b"READY\r\n")
    # ...but output-only attach keeps its input cooked, so ctrl-c can end it.
    assert not term.is_raw()
    assert not term.attrs()[1] & termios.OPOST
    term.write(b"typed-here\r")
    with AttachClient(endpoint_path(str(monitor.run_dir), "cat")) as other:
        other.send_stdin(b"from-other\r")
        seen = b""
        while b"from-other\r\n" not in seen:
            _kind, payload = other.next_frame()
            seen += payload
    # Output still reaches the output-only attacher...
    term.expect(b"from-other\r\nfrom-other\r\n")
    # ...but what was typed there never reached the app.
    assert b"typed-here" not in seen
    term.write(b"\x03")
    assert term.wait() == 128 + signal.SIGINT
    assert term.attrs() == default_pty_attrs()
    assert app_state(monitor, "cat") == "running"


# -- errors ----------------------------------------------------------------------------


def test_falling_behind_is_reported_from_the_monitors_error_frame(
    monitor: MonitorHandle, terms: list[Term]
) -> None:
    stream_app(
        monitor,
        "flood",
        "echo READY; read go; head -c 40000000 /dev/zero | tr '\\0' y; echo",
        attach_queue_size=65536,
    )
    term = attach(terms, "--replay", "--no-stdin", *target(monitor, "flood"))
    term.expect(b"READY")
    # Freeze the attacher, then let the app write far more than its queue and its
    # socket buffer (several MiB) can hold.
    term.proc.kill(signal.SIGSTOP)
    try:
        with AttachClient(
            endpoint_path(str(monitor.run_dir), "flood"), stdout=False, stderr=False
        ) as trigger:
            trigger.send_stdin(b"go\n")
            assert monitor.request("wait", app="flood")["exit_code"] == 0
    finally:
        term.proc.kill(signal.SIGCONT)
    term.expect(b"iottymux attach: the monitor ended the session: overflow: ", timeout=60)
    assert term.wait(timeout=60) == 125
    assert term.attrs() == default_pty_attrs()
    status = monitor.request("status", app="flood")["apps"][0]
    assert status["attach"]["overflow_disconnects"] == 1


def test_no_endpoint_is_an_error_with_exit_125(monitor: MonitorHandle) -> None:
    done = run_attach("--run-root", str(monitor.run_dir.parent), "run/missing")
    assert done.returncode == 125
    assert b"no attach endpoint at " in done.stderr
    assert str(monitor.run_dir / "apps" / "missing" / "attach.sock").encode() in done.stderr


def test_a_monitor_that_never_answers_times_out_with_125(tmp_path: Path) -> None:
    path = tmp_path / "attach.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(path))
        hung.listen(1)  # the connection is queued, never accepted, never answered
        done = run_attach("--timeout", "0.5", str(path))
    assert done.returncode == 125
    assert f"the monitor did not answer on {path} in time".encode() in done.stderr


def test_bad_arguments_exit_125_and_help_documents_the_exit_codes() -> None:
    bad = run_attach("--detach-keys", "ctrl-", "pod/app")
    assert bad.returncode == 125
    assert b"--detach-keys: invalid detach key 'ctrl-'" in bad.stderr
    assert run_attach().returncode == 125
    helped = run_attach("--help")
    assert helped.returncode == 0
    assert b"exit status:" in helped.stdout
    assert b"125 " in helped.stdout


def test_stream_mode_on_a_tty_app_is_refused(monitor: MonitorHandle) -> None:
    tty_app(monitor, "cat", "exec cat")
    done = run_attach("--mode", "stdout,stderr", *target(monitor, "cat"))
    assert done.returncode == 125
    assert b"app 'cat' has a tty" in done.stderr


# -- targets and list -----------------------------------------------------------------


def test_mode_list_prints_the_endpoints_through_every_target_form(monitor: MonitorHandle) -> None:
    tty_app(monitor, "web", "exec cat")
    app_dir = monitor.run_dir / "apps" / "web"
    sock = app_dir / "attach.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    expected = read_endpoints(str(app_dir))
    assert expected["attach"] == str(sock) and expected["tty"] is True
    forms = [
        [str(sock)],
        [str(app_dir)],
        ["--run-root", str(monitor.run_dir.parent), f"{monitor.run_dir.name}/web"],
        target(monitor, "web"),
    ]
    for form in forms:
        done = run_attach("--mode", "list", *form)
        assert done.returncode == 0, (form, done.stderr)
        assert json.loads(done.stdout) == expected, form


def test_pod_slash_app_target_attaches(monitor: MonitorHandle, terms: list[Term]) -> None:
    tty_app(monitor, "cat", "echo READY; exec cat")
    term = attach(
        terms, "--replay", "--run-root", str(monitor.run_dir.parent), f"{monitor.run_dir.name}/cat"
    )
    term.expect(b"READY")
    term.write(b"via-pod-app\r")
    term.expect(b"via-pod-app\r\nvia-pod-app\r\n")
    term.write(b"\x10\x11")
    assert term.wait() == 0


# -- detach keys, without a monitor ---------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "keys"),
    [
        ("ctrl-p,ctrl-q", b"\x10\x11"),
        ("ctrl-x,x", b"\x18x"),
        ("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_", b"\x00\x1b\x1c\x1d\x1e\x1f"),
        ("CTRL-A", b"\x01"),
        ("", b""),
    ],
)
def test_parse_detach_keys(spec: str, keys: bytes) -> None:
    assert parse_detach_keys(spec) == keys


@pytest.mark.parametrize("spec", ["ctrl-", "ctrl-1", "ab", ",", "ctrl-p,", " "])
def test_parse_detach_keys_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_detach_keys(spec)


def test_detach_scanner_holds_prefixes_across_reads_and_flushes_mismatches() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"ab\x10") == (b"ab", False)
    assert scanner.feed(b"c") == (b"\x10c", False)
    assert scanner.feed(b"\x10") == (b"", False)
    assert scanner.feed(b"\x10") == (b"\x10", False)
    assert scanner.feed(b"\x11rest") == (b"", True)
    overlapping = DetachScanner(b"aab")
    assert overlapping.feed(b"xaaab") == (b"xa", True)
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)
