"""The per-pod monitor: owns every app's stdio, writes CRI logs, reaps apps.

Theory of operation
-------------------
One process per pod, single-threaded, around one ``epoll`` selector.  Every
file descriptor it watches carries its own callback:

* each app output (a pipe read end, or a pty master) is read with one
  pipe-sized ``read`` per wake-up; the bytes go to the app's log (one framing
  pass, one ``write``) and to the app's other outputs (attach, later);
* the control socket and its connections speak :mod:`iottymux.control`;
* a self-pipe registered with :func:`signal.set_wakeup_fd` turns ``SIGCHLD``
  and ``SIGTERM`` into readable bytes, so signals are handled in the loop and
  never interrupt a half-done operation.

Nothing in the loop ever waits on a client or on the disk beyond one ``write``
of one batch: a client that does not read has its replies buffered (and is
dropped past a bound), and a log batch that the disk refuses is dropped and
counted (:mod:`iottymux.logwriter`), so the app's pipes keep draining.

The monitor is a child subreaper: an OCI runtime's container init is
re-parented to it when ``runc`` exits, and orphans of the apps are reaped here.
When an app's main process exits, the monitor drains its output to EOF (or to
what is there, if a descendant still holds the pipe), writes the unfinished
line (as a ``P`` record: the app wrote no newline), records the exit in the
state file (write + fsync + rename), and only then answers waiters and
subscribers.

App life cycle::

    add ──▶ created ──start──▶ running ──(process exits)──▶ exited ──remove──▶ gone
               └────────────remove──────────────────────────────────┘
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from iottymux import attachproto, control, state
from iottymux.attach import DEFAULT_QUEUE_SIZE, DEFAULT_RING_SIZE, AttachEndpoint
from iottymux.control import ControlCodec, ControlError, invalid
from iottymux.logformat import DEFAULT_MAX_LINE_SIZE, STDERR, STDOUT
from iottymux.logwriter import AppLog
from iottymux.loop import Loop
from iottymux.oci import OciSpec, receive_console
from iottymux.spawn import SpawnError, Stdio, make_pipe, make_pty, spawn
from iottymux.unixsock import listen_unix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: One read per wake-up, as large as a raised pipe: fewer wake-ups, and lines
#: are rarely cut by the read size (the framer reassembles them anyway).
READ_SIZE = 1 << 20

#: A bound on the reads made in one go when draining an app that exited or is
#: being reopened, so a descendant that keeps writing cannot hold the loop.
DRAIN_READS = 256

#: Replies and events buffered for a control client that does not read.
MAX_CLIENT_BUFFER = 8 << 20

#: Seconds without events, after a burst of output, before the idle hook runs.
IDLE_AFTER = 1.0

#: How long a shutdown waits for killed apps to be reaped.
SHUTDOWN_GRACE = 10.0

_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("._-")


def valid_app_name(name: object) -> bool:
    """``[a-z0-9][a-z0-9._-]{0,127}`` (without importing ``re`` at start-up)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 128
        and name[0] in _NAME_FIRST
        and all(c in _NAME_REST for c in name)
    )


INPUT_MODES = ("null", "stream", "tty")
OUTPUT_MODES = ("null", "log", "stream", "tty")


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class Output:
    """One readable output of an app: a pipe, or the pty master."""

    __slots__ = ("attachable", "eof", "fd", "kind", "logged", "stream")

    def __init__(self, fd: int, stream: bytes, logged: bool, attachable: bool) -> None:
        self.fd = fd
        self.stream = stream
        self.logged = logged
        self.attachable = attachable
        #: The attach frame kind this output's bytes travel in.
        self.kind = attachproto.STDOUT if stream == STDOUT else attachproto.STDERR
        self.eof = False


class App:
    """An app of the pod: its configuration, stdio, log and life."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.command: list[str] = spec["command"]
        self.env: list[str] | None = spec.get("env")
        self.cwd: str | None = spec.get("cwd")
        self.modes: dict[str, str] = {
            "stdin": spec.get("stdin", "null"),
            "stdout": spec.get("stdout", "log"),
            "stderr": spec.get("stderr", "log"),
        }
        self.tty = "tty" in self.modes.values()
        self.log_path: str | None = spec.get("log_path")
        self.max_line_size: int = spec.get("max_line_size", DEFAULT_MAX_LINE_SIZE)
        self.stdin_once: bool = spec.get("stdin_once", False)
        self.attach_queue_size: int = spec.get("attach_queue_size", DEFAULT_QUEUE_SIZE)
        self.ring_size: int = spec.get("ring_size", DEFAULT_RING_SIZE)
        self.attach: AttachEndpoint | None = None
        #: Set for an OCI container: the runtime creates and starts the process.
        self.oci: OciSpec | None = spec.get("oci")
        #: For an OCI tty container: where the runtime sends the pty master.
        self.console: socket.socket | None = None
        self.console_path = ""
        #: A request answered when the runtime's create/start/delete ends.
        self.pending: tuple[ControlConnection, Any] | None = None
        self.state = "created"
        self.pid = 0
        self.created_at = time.time_ns()
        self.started_at = 0
        self.finished_at = 0
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.reason = ""
        self.message = ""
        self.log: AppLog | None = None
        self.outputs: list[Output] = []
        #: Write end of the app's stdin pipe, or the pty master (attach writes).
        self.stdin_fd = -1
        self.pty_master = -1
        #: The child's ends, held from add until start.
        self.child_stdio = Stdio()
        self._child_fds: list[int] = []
        #: Control connections waiting for this app's exit, with request ids.
        self.waiters: list[tuple[ControlConnection, Any]] = []

    # -- stdio -----------------------------------------------------------

    def open_stdio(self) -> None:
        """Create pipes / pty and the log file; on failure nothing is left open."""
        try:
            logs = any(self.modes[s] in ("log", "stream", "tty") for s in ("stdout", "stderr"))
            if logs and self.log_path:
                self.log = AppLog(self.log_path, self.max_line_size, tty=self.tty)
            if self.tty and self.oci is not None:
                # The runtime makes the pty; its master arrives on this socket.
                self.console = listen_unix(self.console_path, mode=0o600)
                return
            if self.tty:
                master, slave = make_pty()
                self._child_fds.append(slave)
                self.pty_master = master
                _nonblocking(master)
                self.child_stdio = Stdio(
                    stdin=slave if self.modes["stdin"] == "tty" else -1,
                    stdout=slave if self.modes["stdout"] == "tty" else -1,
                    stderr=slave if self.modes["stderr"] == "tty" else -1,
                    ctty=slave,
                )
                self.outputs.append(Output(master, STDOUT, self.log is not None, True))
                if self.modes["stdin"] == "tty":
                    self.stdin_fd = master
                return
            stdio = Stdio()
            if self.modes["stdin"] == "stream":
                r, w = make_pipe()
                self._child_fds.append(r)
                _nonblocking(w)
                self.stdin_fd = w
                stdio.stdin = r
            for name, stream in (("stdout", STDOUT), ("stderr", STDERR)):
                if self.modes[name] == "null":
                    continue
                r, w = make_pipe()
                self._child_fds.append(w)
                _nonblocking(r)
                setattr(stdio, name, w)
                attachable = self.modes[name] == "stream"
                self.outputs.append(Output(r, stream, self.log is not None, attachable))
            self.child_stdio = stdio
        except BaseException:
            self.close_stdio()
            raise

    def close_child_ends(self) -> None:
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds.clear()
        self.child_stdio = Stdio()

    def adopt_console(self, master: int) -> None:
        """The OCI runtime sent the container's pty master."""
        self.pty_master = master
        self.outputs.append(Output(master, STDOUT, self.log is not None, True))
        if self.modes["stdin"] == "tty":
            self.stdin_fd = master
        if self.attach is not None:
            self.attach.resize_fd = master
            self.attach.stdin_fd = self.stdin_fd

    def close_console(self) -> None:
        if self.console is not None:
            self.console.close()
            self.console = None
            try:
                os.unlink(self.console_path)
            except FileNotFoundError:
                pass

    def stdin_closed(self, fd: int) -> None:
        """The attach endpoint ended the app's stdin (StdinOnce)."""
        if fd == self.stdin_fd:
            self.stdin_fd = -1
        if fd != self.pty_master:
            os.close(fd)

    def discard_log(self) -> None:
        """The app was never created: its log file goes (the kubelet counts them)."""
        if self.log is not None:
            self.log.discard()
            self.log = None

    def close_stdio(self) -> None:
        self.close_console()
        if self.attach is not None:
            self.attach.close()
            self.attach = None
        self.close_child_ends()
        for output in self.outputs:
            if output.fd >= 0 and output.fd != self.pty_master:
                os.close(output.fd)
            output.fd = -1
        self.outputs.clear()
        if self.stdin_fd >= 0 and self.stdin_fd != self.pty_master:
            os.close(self.stdin_fd)
        self.stdin_fd = -1
        if self.pty_master >= 0:
            os.close(self.pty_master)
            self.pty_master = -1
        if self.log is not None:
            self.log.close()
            self.log = None

    # -- reporting ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "app": self.name,
            "state": self.state,
            "pid": self.pid,
            "command": self.command,
            "stdin": self.modes["stdin"],
            "stdout": self.modes["stdout"],
            "stderr": self.modes["stderr"],
            "log_path": self.log_path,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "message": self.message,
        }
        if self.log is not None:
            result["log"] = self.log.stats_dict()
        if self.attach is not None:
            result["attach"] = self.attach.status()
        if self.oci is not None:
            result["oci"] = self.oci.as_dict()
        return result

    def exit_event(self) -> dict[str, Any]:
        return {
            "event": "exited",
            "app": self.name,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "finished_at": self.finished_at,
            "reason": self.reason,
        }


class ControlConnection:
    """One client of the control socket."""

    __slots__ = ("closed", "codec", "fd", "outbuf", "sock", "subscribed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.codec = ControlCodec()
        self.outbuf = bytearray()
        self.subscribed = False
        self.closed = False


class Monitor:
    """The event loop of one pod's monitor."""

    def __init__(
        self,
        run_dir: str,
        *,
        log: Callable[[str], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.run_dir = os.path.abspath(run_dir)
        self.control_path = os.path.join(self.run_dir, "control.sock")
        self.state_path = os.path.join(self.run_dir, "state.json")
        self.started_at = time.time_ns()
        self.apps: dict[str, App] = {}
        self._by_pid: dict[int, App] = {}
        #: Runtime processes (create, start, delete) and what to do when they end.
        self._helpers: dict[int, Callable[[int], None]] = {}
        self._console_seq = 0
        self._conns: dict[int, ControlConnection] = {}
        self.loop = Loop()
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._stopping = False
        self._stop_deadline = 0.0
        self._shutdown_waiters: list[tuple[ControlConnection, Any]] = []
        self._listener: socket.socket | None = None
        self._signal_r = -1
        self._signal_w = -1
        #: Called once the loop has been idle for IDLE_AFTER seconds after
        #: output was handled (the monitor command returns freed heap then).
        self._on_idle = on_idle
        self._busy = False

    # -- setup -------------------------------------------------------------

    def setup(self) -> None:
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _note_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.loop.add_reader(self._signal_r, self._on_signals)
        self._write_state()
        self._listener = listen_unix(self.control_path, mode=0o600)
        self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def close(self) -> None:
        for app in list(self.apps.values()):
            self._unwatch_outputs(app)
            app.close_stdio()
        for conn in list(self._conns.values()):
            self._drop_conn(conn)
        if self._listener is not None:
            self.loop.forget(self._listener.fileno())
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.control_path)
            except FileNotFoundError:
                pass
        signal.set_wakeup_fd(-1)
        for fd in (self._signal_r, self._signal_w):
            if fd >= 0:
                os.close(fd)
        self._signal_r = self._signal_w = -1
        self.loop.close()

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Serve until a shutdown completes."""
        run_once = self.loop.run_once
        while True:
            timeout = None
            if self._stopping:
                if self._shutdown_done():
                    break
                timeout = max(0.0, self._stop_deadline - time.monotonic())
                if timeout == 0.0:
                    self._log("shutdown: apps still not reaped, exiting anyway")
                    break
            elif self._busy and self._on_idle is not None:
                timeout = IDLE_AFTER
            handled = run_once(timeout)
            if not handled and self._busy and not self._stopping:
                self._busy = False
                if self._on_idle is not None:
                    self._on_idle()
        self._finish_shutdown()

    # -- signals and reaping -------------------------------------------------

    def _on_signals(self) -> None:
        try:
            received = os.read(self._signal_r, 512)
        except BlockingIOError:
            return
        if signal.SIGCHLD in received:
            self._reap()
        if signal.SIGTERM in received or signal.SIGINT in received:
            self._begin_shutdown()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            helper = self._helpers.pop(pid, None)
            if helper is not None:
                helper(status)
                continue
            app = self._by_pid.pop(pid, None)
            if app is not None:
                self._app_exited(app, status)

    def _app_exited(self, app: App, status: int) -> None:
        app.finished_at = time.time_ns()
        if os.WIFSIGNALED(status):
            app.signal = os.WTERMSIG(status)
            app.exit_code = 128 + app.signal
            app.reason = "Signaled"
        else:
            app.exit_code = os.WEXITSTATUS(status)
            app.reason = "Completed" if app.exit_code == 0 else "Error"
        self._record_exit(app)

    def _record_exit(self, app: App) -> None:
        """The app's exit status is set: log what it left, persist, then tell everyone."""
        # Everything the app wrote before it died is in the pipes now: log it
        # before the exit becomes visible to anyone.
        for output in list(app.outputs):
            if not output.eof:
                self._drain(app, output)
        app.state = "exited"
        self._write_state()
        event = app.exit_event()
        if app.attach is not None:
            app.attach.app_exited(
                {"exit_code": app.exit_code, "signal": app.signal, "reason": app.reason}
            )
        for conn, request_id in app.waiters:
            self._reply(conn, request_id, {"ok": True, **app.status()})
        app.waiters.clear()
        self._broadcast(event)

    # -- outputs -------------------------------------------------------------

    def _watch_outputs(self, app: App) -> None:
        for output in app.outputs:
            self.loop.add_reader(output.fd, functools.partial(self._read_once, app, output))

    def _unwatch_outputs(self, app: App) -> None:
        for output in app.outputs:
            if not output.eof:
                self.loop.remove_reader(output.fd)

    def _read_once(self, app: App, output: Output) -> bool:
        """One read; False when nothing more is there right now (or at EOF)."""
        try:
            data = os.read(output.fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            # EIO is how a pty master reports that every slave fd is closed.
            if exc.errno != errno.EIO:
                self._log(f"{app.name}: read error on {output.stream.decode()}: {exc}")
            data = b""
        if not data:
            self._output_eof(app, output)
            return False
        self._busy = True
        if output.logged and app.log is not None:
            app.log.write(output.stream, data)
        if output.attachable and app.attach is not None:
            app.attach.broadcast(output.kind, data)
        return True

    def _drain(self, app: App, output: Output) -> None:
        for _ in range(DRAIN_READS):
            if not self._read_once(app, output):
                return

    def _output_eof(self, app: App, output: Output) -> None:
        output.eof = True
        self.loop.remove_reader(output.fd)
        if app.log is not None:
            if app.tty:
                # stdout and stderr share the pty; one framer is in use.
                app.log.end_of_stream(STDOUT)
            else:
                app.log.end_of_stream(output.stream)

    # -- control socket ------------------------------------------------------

    def _on_accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._log(f"accept failed: {exc}")
                return
            sock.setblocking(False)
            conn = ControlConnection(sock)
            self._conns[conn.fd] = conn
            self.loop.add_reader(conn.fd, functools.partial(self._on_conn_readable, conn))

    def _on_conn_readable(self, conn: ControlConnection) -> None:
        if conn.closed:
            return
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_conn(conn)
            return
        broken: control.ProtocolError | None = None
        try:
            messages = conn.codec.receive_data(data)
        except control.ProtocolError as exc:
            broken, messages = exc, exc.messages
        for message in messages:
            if conn.closed:
                return
            self._handle(conn, message)
        if broken is not None:
            error = {"code": "InvalidArgument", "message": str(broken)}
            self._send(conn, {"ok": False, "error": error})
            self._drop_conn(conn)

    def _handle(self, conn: ControlConnection, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op = message.get("op")
        try:
            if op not in control.OPS:
                raise invalid(f"op: unknown operation {op!r}")
            handler = getattr(self, f"_op_{op}")
            result = handler(conn, request_id, message)
        except ControlError as exc:
            self._reply(conn, request_id, {"ok": False, "error": exc.as_dict()})
            return
        except Exception as exc:  # a bug must not take the pod's logging down
            self._log(f"internal error handling {op!r}: {exc!r}")
            self._reply(
                conn, request_id, {"ok": False, "error": {"code": "Internal", "message": repr(exc)}}
            )
            return
        if result is not None:
            self._reply(conn, request_id, {"ok": True, **result})

    def _reply(self, conn: ControlConnection, request_id: Any, body: dict[str, Any]) -> None:
        self._send(conn, {"id": request_id, **body})

    def _broadcast(self, event: dict[str, Any]) -> None:
        for conn in list(self._conns.values()):
            if conn.subscribed:
                self._send(conn, event)

    def _send(self, conn: ControlConnection, message: dict[str, Any]) -> None:
        if conn.closed:
            return
        conn.outbuf += ControlCodec.encode(message)
        self._flush_conn(conn)

    def _flush_conn(self, conn: ControlConnection) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                break
            except OSError:
                self._drop_conn(conn)
                return
            del conn.outbuf[:sent]
        if len(conn.outbuf) > MAX_CLIENT_BUFFER:
            self._log("dropping a control client that does not read its replies")
            self._drop_conn(conn)
            return
        if conn.outbuf:
            self.loop.add_writer(conn.fd, functools.partial(self._flush_conn, conn))
        else:
            self.loop.remove_writer(conn.fd)

    def _drop_conn(self, conn: ControlConnection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self.loop.forget(conn.fd)
        conn.sock.close()
        for app in self.apps.values():
            app.waiters = [(c, i) for c, i in app.waiters if c is not conn]
        self._shutdown_waiters = [(c, i) for c, i in self._shutdown_waiters if c is not conn]

    # -- operations ----------------------------------------------------------

    def _app(self, message: dict[str, Any]) -> App:
        name = message.get("app")
        if not isinstance(name, str) or not name:
            raise invalid("app: a non-empty app name is required")
        app = self.apps.get(name)
        if app is None:
            raise ControlError("NotFound", f"app {name!r} not found")
        return app

    def _op_ping(self, conn: ControlConnection, rid: Any, msg: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": control.PROTOCOL_VERSION}

    def _op_add(
        self, conn: ControlConnection, rid: Any, msg: dict[str, Any]
    ) -> dict[str, Any] | None:
        if self._stopping:
            raise ControlError("FailedPrecondition", "monitor is shutting down")
        name, spec = validate_add(msg)
        if name in self.apps:
            raise ControlError("AlreadyExists", f"app {name!r} already exists")
        app = App(name, spec)
        if app.oci is not None and app.tty:
            # Short, because the runtime dials it by path (sun_path limit).
            self._console_seq += 1
            app.console_path = os.path.join(self.run_dir, f"cs{self._console_seq}")
        try:
            app.open_stdio()
        except OSError as exc:
            raise ControlError(
                "FailedPrecondition",
                f"log_path: cannot create {app.log_path!r}: {exc.strerror}"
                if app.log is None and app.log_path
                else f"cannot set up stdio: {exc}",
            ) from None
        try:
            app.attach = AttachEndpoint(
                self.loop,
                os.path.join(self.run_dir, "apps", name),
                name,
                tty=app.tty,
                stdin_fd=app.stdin_fd,
                stdin_once=app.stdin_once,
                queue_size=app.attach_queue_size,
                ring_size=app.ring_size,
                resize_fd=app.pty_master,
                on_stdin_closed=app.stdin_closed,
                log=self._log,
            )
        except OSError as exc:
            app.discard_log()
            app.close_stdio()
            raise ControlError("Internal", f"cannot create the attach endpoint: {exc}") from None
        self.apps[name] = app
        if app.oci is not None:
            # Until the runtime has created the container only the runtime itself can
            # write to these pipes (its errors): they are not the app's output.
            self._oci_create(conn, rid, app)
            return None
        self._watch_outputs(app)
        self._write_state()
        return {"app": name}

    # -- OCI containers --------------------------------------------------------

    def _run_helper(self, argv: list[str], stdio: Stdio, done: Callable[[int], None]) -> None:
        pid = spawn(argv, stdio)
        self._helpers[pid] = done

    def _oci_create(self, conn: ControlConnection, rid: Any, app: App) -> None:
        assert app.oci is not None
        app.state = "creating"
        log_mark = app.oci.log_size()
        try:
            argv = app.oci.create_argv(app.console_path if app.tty else None)
            self._run_helper(
                argv, app.child_stdio, lambda status: self._oci_created(app, status, log_mark)
            )
        except SpawnError as exc:
            app.discard_log()
            self._forget_app(app)
            raise ControlError("FailedPrecondition", f"oci.runtime: {exc.strerror}") from None
        app.pending = (conn, rid)
        return None

    def _oci_created(self, app: App, status: int, log_mark: int) -> None:
        assert app.oci is not None
        pending, app.pending = app.pending, None
        master = None
        if app.console is not None:
            master = receive_console(app.console)
            app.close_console()
        if status != 0 or (app.tty and master is None):
            if master is not None:
                os.close(master)
            app.discard_log()
            self._forget_app(app)
            self._runtime_failed(app, pending, "create", status, log_mark)
            return
        try:
            app.pid = app.oci.read_pid()
        except (OSError, ValueError) as exc:
            app.pid = 0
            self._log(f"{app.name}: no pid file from the runtime: {exc}")
        if master is not None:
            app.adopt_console(master)
        self._watch_outputs(app)
        app.close_child_ends()
        if app.pid:
            self._by_pid[app.pid] = app
        app.state = "created"
        self._write_state()
        if pending is not None:
            self._reply(pending[0], pending[1], {"ok": True, "app": app.name, "pid": app.pid})

    def _runtime_failed(
        self,
        app: App,
        pending: tuple[ControlConnection, Any] | None,
        verb: str,
        status: int,
        log_mark: int,
    ) -> None:
        """Answer a request whose runtime command failed, with the runtime's own words."""
        assert app.oci is not None
        reason = app.oci.last_error(log_mark) or f"{app.oci.runtime} {verb} exited with {status}"
        if pending is not None:
            error = {"code": "Internal", "message": f"cannot {verb} container: {reason}"}
            self._reply(pending[0], pending[1], {"ok": False, "error": error})

    def _oci_start(self, conn: ControlConnection, rid: Any, app: App) -> None:
        assert app.oci is not None
        log_mark = app.oci.log_size()
        app.started_at = time.time_ns()
        app.state = "running"
        if app.attach is not None:
            app.attach.app_started()

        def started(status: int) -> None:
            pending, app.pending = app.pending, None
            if status != 0:
                self._runtime_failed(app, pending, "start", status, log_mark)
                return
            self._write_state()
            if pending is not None:
                self._reply(
                    pending[0],
                    pending[1],
                    {"ok": True, "pid": app.pid, "started_at": app.started_at},
                )

        app.pending = (conn, rid)
        self._run_helper(app.oci.start_argv(), Stdio(), started)

    def _forget_app(self, app: App) -> None:
        """Undo an app whose creation failed: nothing of it is left."""
        self._unwatch_outputs(app)
        app.close_stdio()
        self.apps.pop(app.name, None)
        self._write_state()

    def _op_start(
        self, conn: ControlConnection, rid: Any, msg: dict[str, Any]
    ) -> dict[str, Any] | None:
        app = self._app(msg)
        if app.state != "created":
            raise ControlError("FailedPrecondition", f"app {app.name!r} is {app.state}")
        if app.oci is not None:
            try:
                self._oci_start(conn, rid, app)
                return None
            except SpawnError as exc:
                raise ControlError("FailedPrecondition", f"oci.runtime: {exc.strerror}") from None
        env = None
        if app.env is not None:
            env = dict(item.split("=", 1) for item in app.env)
        try:
            pid = spawn(app.command, app.child_stdio, env=env, cwd=app.cwd)
        except SpawnError as exc:
            app.close_child_ends()
            app.exit_code = 127 if exc.errno == errno.ENOENT else 126
            app.finished_at = time.time_ns()
            app.reason = "StartError"
            app.message = str(exc.strerror)
            self._record_exit(app)
            raise ControlError("FailedPrecondition", str(exc.strerror)) from None
        app.close_child_ends()
        app.pid = pid
        app.started_at = time.time_ns()
        app.state = "running"
        if app.attach is not None:
            app.attach.app_started()
        self._by_pid[pid] = app
        self._write_state()
        return {"pid": pid, "started_at": app.started_at}

    def _op_signal(self, conn: ControlConnection, rid: Any, msg: dict[str, Any]) -> dict[str, Any]:
        app = self._app(msg)
        signum = parse_signal(msg.get("signal"))
        if app.state != "running":
            raise ControlError("FailedPrecondition", f"app {app.name!r} is {app.state}")
        try:
            os.kill(app.pid, signum)
        except ProcessLookupError:
            pass  # exited; the exit is on its way through SIGCHLD
        return {}

    def _op_status(self, conn: ControlConnection, rid: Any, msg: dict[str, Any]) -> dict[str, Any]:
        apps = [self._app(msg)] if "app" in msg else list(self.apps.values())
        return {"apps": [app.status() for app in apps], "monitor": self._monitor_status()}

    def _op_reopen(self, conn: ControlConnection, rid: Any, msg: dict[str, Any]) -> dict[str, Any]:
        app = self._app(msg)
        if app.state != "running":
            raise ControlError("FailedPrecondition", f"app {app.name!r} is not running")
        if app.log is None:
            raise ControlError("FailedPrecondition", f"app {app.name!r} has no log file")
        # What the app wrote before this request belongs to the old file.
        for output in list(app.outputs):
            if output.logged and not output.eof:
                self._drain(app, output)
        try:
            app.log.reopen()
        except OSError as exc:
            raise ControlError(
                "Internal", f"log_path: cannot reopen {app.log.path!r}: {exc.strerror}"
            ) from None
        return {"log_path": app.log.path}

    def _op_wait(
        self, conn: ControlConnection, rid: Any, msg: dict[str, Any]
    ) -> dict[str, Any] | None:
        app = self._app(msg)
        if app.state == "running":
            app.waiters.append((conn, rid))
            return None
        return app.status()

    def _op_remove(
        self, conn: ControlConnection, rid: Any, msg: dict[str, Any]
    ) -> dict[str, Any] | None:
        app = self._app(msg)
        if app.state in ("running", "creating"):
            raise ControlError(
                "FailedPrecondition", f"app {app.name!r} is {app.state}; stop it first"
            )
        if app.pending is not None:
            raise ControlError("FailedPrecondition", f"app {app.name!r} is busy")
        if app.oci is not None:
            self._oci_remove(conn, rid, app)
            return None
        self._forget_app(app)
        return {}

    def _oci_remove(self, conn: ControlConnection, rid: Any, app: App) -> None:
        assert app.oci is not None
        log_mark = app.oci.log_size()

        def deleted(status: int) -> None:
            pending, app.pending = app.pending, None
            if status != 0:
                self._runtime_failed(app, pending, "delete", status, log_mark)
                return
            self._by_pid.pop(app.pid, None)
            self._forget_app(app)
            if pending is not None:
                self._reply(pending[0], pending[1], {"ok": True})

        app.pending = (conn, rid)
        self._run_helper(app.oci.delete_argv(), Stdio(), deleted)

    def _op_subscribe(
        self, conn: ControlConnection, rid: Any, msg: dict[str, Any]
    ) -> dict[str, Any]:
        conn.subscribed = True
        return {}

    def _op_shutdown(self, conn: ControlConnection, rid: Any, msg: dict[str, Any]) -> None:
        self._shutdown_waiters.append((conn, rid))
        self._begin_shutdown()
        return None

    # -- shutdown ------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = time.monotonic() + SHUTDOWN_GRACE
        for app in self.apps.values():
            if app.state == "running":
                try:
                    os.kill(app.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _shutdown_done(self) -> bool:
        return all(app.state != "running" for app in self.apps.values())

    def _finish_shutdown(self) -> None:
        self._write_state()
        for conn, rid in self._shutdown_waiters:
            self._reply(conn, rid, {"ok": True})
            # Replies are tiny; give each client one blocking chance to get it.
            if conn.outbuf and not conn.closed:
                try:
                    conn.sock.setblocking(True)
                    conn.sock.settimeout(1.0)
                    conn.sock.sendall(conn.outbuf)
                except OSError:
                    pass
        self._shutdown_waiters.clear()

    # -- state ---------------------------------------------------------------

    def _monitor_status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "rss_bytes": _rss_bytes(),
            "apps": len(self.apps),
        }

    def _write_state(self) -> None:
        snapshot = {
            "monitor": {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "control": self.control_path,
            },
            "apps": {name: app.status() for name, app in self.apps.items()},
        }
        try:
            state.write_state(self.state_path, snapshot)
        except OSError as exc:
            # The run dir is tmpfs in production; if even that fails the
            # monitor keeps serving and says so.
            self._log(f"cannot write {self.state_path}: {exc}")


def _note_signal(signum: int, frame: object) -> None:
    """Signals are handled from the wake-up pipe; the handler only has to exist."""


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def parse_signal(value: Any) -> int:
    if isinstance(value, bool):
        raise invalid("signal: must be a number or a name like SIGTERM")
    if isinstance(value, int):
        signum = value
    elif isinstance(value, str) and value:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            signum = int(signal.Signals[name])
        except KeyError:
            raise invalid(f"signal: unknown signal {value!r}") from None
    else:
        raise invalid("signal: must be a number or a name like SIGTERM")
    if not 1 <= signum <= signal.SIGRTMAX:
        raise invalid(f"signal: {signum} is out of range")
    return signum


def validate_add(msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check an ``add`` request; every error names its field."""
    name = msg.get("app")
    if not isinstance(name, str) or not valid_app_name(name):
        raise invalid(f"app: {name!r} is not a valid app name ([a-z0-9][a-z0-9._-]*, <= 128)")
    oci = None
    if msg.get("oci") is not None:
        oci = OciSpec.from_request(msg["oci"])
    command = msg.get("command")
    if oci is not None and command is None:
        command = ["(oci)"]  # the process comes from the bundle's config.json
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, str) for a in command)
        or not command[0]
    ):
        raise invalid("command: must be a non-empty list of strings")
    if any("\0" in a for a in command):
        raise invalid("command: arguments may not contain NUL")
    spec: dict[str, Any] = {"command": command, "oci": oci}
    env = msg.get("env")
    if env is not None:
        if not isinstance(env, list) or not all(
            isinstance(e, str) and "=" in e and not e.startswith("=") and "\0" not in e for e in env
        ):
            raise invalid("env: must be a list of 'NAME=value' strings")
        spec["env"] = env
    cwd = msg.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise invalid("cwd: must be an absolute path")
        spec["cwd"] = cwd
    for field, modes, default in (
        ("stdin", INPUT_MODES, "null"),
        ("stdout", OUTPUT_MODES, "log"),
        ("stderr", OUTPUT_MODES, "log"),
    ):
        mode = msg.get(field, default)
        if mode not in modes:
            raise invalid(f"{field}: mode must be one of {'|'.join(modes)}, not {mode!r}")
        spec[field] = mode
    tty_streams = [f for f in ("stdin", "stdout", "stderr") if spec[f] == "tty"]
    if tty_streams and spec["stdout"] != "tty":
        raise invalid("stdout: a tty app has its stdout on the tty")
    if tty_streams and any(spec[f] not in ("tty", "null") for f in ("stdin", "stderr")):
        raise invalid("stderr: tty and pipe streams cannot be mixed in one app")
    log_path = msg.get("log_path")
    if log_path is not None:
        if not isinstance(log_path, str) or not log_path.startswith("/") or "\0" in log_path:
            raise invalid("log_path: must be an absolute path")
        spec["log_path"] = os.path.normpath(log_path)
    elif any(spec[f] == "log" for f in ("stdout", "stderr")):
        raise invalid("log_path: required when a stream's mode is 'log'")
    max_line = msg.get("max_line_size", DEFAULT_MAX_LINE_SIZE)
    if isinstance(max_line, bool) or not isinstance(max_line, int) or not 1 <= max_line <= 1 << 24:
        raise invalid("max_line_size: must be an integer from 1 to 16777216")
    spec["max_line_size"] = max_line
    stdin_once = msg.get("stdin_once", False)
    if not isinstance(stdin_once, bool):
        raise invalid("stdin_once: must be true or false")
    spec["stdin_once"] = stdin_once
    for size_field, size_default, low, high in (
        ("attach_queue_size", DEFAULT_QUEUE_SIZE, 4096, 1 << 30),
        ("ring_size", DEFAULT_RING_SIZE, 0, 1 << 24),
    ):
        value = msg.get(size_field, size_default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(f"{size_field}: must be an integer from {low} to {high}")
        spec[size_field] = value
    return name, spec


def run_monitor(
    run_dir: str,
    ready: Callable[[Monitor], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> None:
    """Set up and run a monitor in this process until it shuts down."""
    monitor = Monitor(run_dir, on_idle=on_idle)
    monitor.setup()
    try:
        if ready is not None:
            ready(monitor)
        monitor.run()
    finally:
        monitor.close()


__all__ = ["App", "Monitor", "parse_signal", "run_monitor", "validate_add"]
