"""The monitor fork server: pods' monitors started by ``fork``, not by a new interpreter.

Theory of operation
-------------------
A monitor is a whole Python interpreter per pod.  Started with ``exec``, every
one of them builds its own heap of modules, code and type objects (~5 MiB of
private pages).  The fork server is one small process that has imported
everything a monitor runs, frozen it out of the garbage collector's sight
(:func:`gc.freeze`, so a collection never writes to those objects), and then
does nothing but fork: each monitor starts as a copy-on-write image of that
heap, shares every page it does not write to, and is ready in a few
milliseconds instead of tens.

The fork server is started by its client (the rktlet daemon) with ``exec`` — it
is never forked from the daemon, whose gRPC threads make ``fork`` unsafe, and it
holds none of the daemon's state (SQLite, sockets, descriptors): only its end
of one ``SOCK_SEQPACKET`` socket pair.  A request is one datagram::

    b"monitor\\0" + run_dir        with one descriptor attached (SCM_RIGHTS):
                                    the write end of the caller's ready pipe

The fork server forks; the child starts a new session and forks again, exactly
as ``iottymux monitor --detach`` does, so the monitor is nobody's child and
outlives both the daemon and the fork server.  The monitor writes ``ready
<pid>`` (or ``error <reason>``) to the ready pipe, straight to the caller: the
fork server never waits for a monitor and serves the next request at once.
When the caller's end of the socket closes (the daemon exited or died), the
fork server exits; a new daemon starts a new one.

A monitor forked this way shows the command line of a monitor started by hand
(``python -S -m iottymux monitor --run-dir DIR``): it rewrites its argument
area, which the client leaves room for (:data:`TITLE_SPACE`), so ``ps`` and
``pgrep -f`` tell each pod's monitor apart.

The client, :class:`ForkServer`, starts the fork server on first use and again
whenever it finds it gone; when it cannot be started or dies mid-request,
:class:`ForkServerUnavailable` tells the caller to fall back to starting the
monitor the old way (:func:`iottymux.monitor_cmd.start_detached` does).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    import threading
    from collections.abc import Sequence
    from socket import socket as socket_type

#: The environment variable whose value is room for the monitors' titles (see
#: :func:`_title_area`); the fork server removes it from its environment.
TITLE_SPACE = "IOTTYMUX_TITLE_SPACE"
_TITLE_ROOM = 4096

_REQUEST = b"monitor\0"
#: A request's size bound: the verb and a path (PATH_MAX).
_MAX_REQUEST = 8192


class ForkServerUnavailable(Exception):
    """The fork server could not take the request; start the monitor the old way."""


class MonitorStartError(RuntimeError):
    """The monitor was forked but did not start; its reason is the message."""


# -- the server ---------------------------------------------------------------------


def serve(sock_fd: int) -> int:
    """Fork a monitor for every request on ``sock_fd`` until the client hangs up."""
    import gc
    import signal
    import socket

    # Whatever the client's thread had blocked, a monitor needs its signals.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    title = _title_area()
    os.environ.pop(TITLE_SPACE, None)
    # Everything a monitor runs, loaded once here and shared by every monitor.
    from iottymux import monitor, monitor_cmd

    libc = monitor_cmd.load_libc()
    monitor_cmd.tune_malloc(libc)
    # Inherited by every monitor forked from here (asking once also warns once).
    monitor_cmd.protect_from_oom()
    del monitor
    sock = socket.socket(fileno=sock_fd)
    os.set_inheritable(sock_fd, False)
    os.chdir("/")
    gc.collect()
    gc.freeze()
    # Once the heap is what every monitor starts from: each inherits the advice.
    monitor_cmd.offer_pages(libc)
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 1)
        except InterruptedError:
            continue
        if not message and not fds:
            return 0  # the client is gone
        if not fds:
            continue
        ready_fd = fds[0]
        if not message.startswith(_REQUEST):
            _answer(ready_fd, "error the fork server got a request it does not know")
            os.close(ready_fd)
            continue
        run_dir = os.fsdecode(message[len(_REQUEST) :])
        try:
            pid = os.fork()
        except OSError as exc:
            _answer(ready_fd, f"error cannot fork a monitor: {exc}")
            os.close(ready_fd)
            continue
        if pid == 0:  # pragma: no cover - runs in the child
            sock.close()
            _monitor_child(run_dir, ready_fd, libc, title)
        os.close(ready_fd)
        # The child only forks the monitor and exits: this is not a wait on the monitor.
        _reap(pid)


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _monitor_child(run_dir: str, ready_fd: int, libc: object, title: tuple[int, int, int]) -> None:
    """In the fork server's child: detach like ``--detach`` does, then be the monitor."""
    code = 1
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        from iottymux.monitor_cmd import monitor_argv, serve_monitor

        _set_title(title, monitor_argv(run_dir))
        code = serve_monitor(run_dir, ready_fd, detached=True, libc=libc, protect=False)
    except BaseException as exc:
        _answer(ready_fd, f"error {exc}")
    os._exit(code)


def _answer(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode(errors="replace") + b"\n")
    except OSError:
        pass


# -- process title --------------------------------------------------------------------


def _title_area() -> tuple[int, int, int]:
    """(start, end of argv, end of the room after it) of this process's argument area.

    The client puts :data:`TITLE_SPACE` first in the environment; its string sits
    right after the argument strings, so a title may run on into it (the kernel
    reads a title past the end of argv when argv's last byte is no longer NUL).
    """
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # proc(5) fields 48..51, counted from field 3 (the state) after the ')'
        arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    except (OSError, ValueError, IndexError):
        return 0, 0, 0
    end = arg_end
    prefix = f"{TITLE_SPACE}=".encode()
    if env_start == arg_end and env_end - env_start > len(prefix):
        first = ctypes.string_at(env_start, min(env_end - env_start, len(prefix) + _TITLE_ROOM))
        if first.startswith(prefix):
            end = env_start + first.find(b"\0") if b"\0" in first else env_start + len(first) - 1
    return arg_start, arg_end, end


def _set_title(area: tuple[int, int, int], argv: Sequence[str]) -> None:
    """Make /proc/self/cmdline read ``argv`` (cut to the room there is)."""
    import ctypes

    start, arg_end, end = area
    if not start or end <= start:
        return
    args = [os.fsencode(a) for a in argv]
    joined = b"\0".join(args)
    if len(joined) < arg_end - start:
        # Fits in argv: NUL-separated as exec left it, the rest NUL-filled.
        title = joined.ljust(arg_end - start, b"\0")
    else:
        # Runs on into the room after argv: one string, spaces between the words.
        title = b" ".join(args)[: end - start - 1] + b"\0"
    ctypes.memmove(start, title, len(title))


# -- the client --------------------------------------------------------------------------


class ForkServer:
    """A fork server of this process's: started on first use, again when found gone.

    Thread-safe: requests are single datagrams and each has its own ready pipe.
    """

    def __init__(self, *, python: str = "") -> None:
        import threading

        #: The interpreter that runs the fork server, and so every monitor it forks.
        self.python = python or sys.executable
        self._lock: threading.Lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket_type | None = None

    @property
    def pid(self) -> int | None:
        """The fork server's pid, if one runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start_monitor(self, run_dir: str, timeout: float = 30.0) -> int:
        """Fork a detached monitor for ``run_dir``; its pid once its control socket is up.

        Raises :class:`MonitorStartError` when the monitor failed to start (with its
        reason), :class:`ForkServerUnavailable` when no fork server could take the
        request (the caller then starts the monitor without one).
        """
        run_dir = os.path.abspath(run_dir)
        payload = _REQUEST + os.fsencode(run_dir)
        if len(payload) > _MAX_REQUEST or "\0" in run_dir:
            raise ForkServerUnavailable(f"run dir {run_dir!r} does not fit a request")
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                self._send(payload, w)
            finally:
                os.close(w)
            answer = _read_answer(r, timeout)
        finally:
            os.close(r)
        if answer.startswith("ready "):
            return int(answer.split()[1])
        if answer.startswith("error "):
            raise MonitorStartError(answer.removeprefix("error "))
        if not answer:
            raise ForkServerUnavailable("the fork server or its child died before the monitor ran")
        raise MonitorStartError(f"unexpected answer from the monitor: {answer!r}")

    def start(self) -> None:
        """Start the fork server now, if none runs, so the first pod does not wait for it."""
        with self._lock:
            if self._sock is None or self._proc is None or self._proc.poll() is not None:
                self._stop_locked()
                self._start_locked()

    def close(self) -> None:
        """Stop the fork server (monitors it started go on running)."""
        with self._lock:
            self._stop_locked()

    def _send(self, payload: bytes, ready_w: int) -> None:
        import socket

        for attempt in (1, 2):
            with self._lock:
                if self._sock is None or self._proc is None or self._proc.poll() is not None:
                    self._stop_locked()
                    self._start_locked()
                sock = self._sock
                assert sock is not None
                try:
                    socket.send_fds(sock, [payload], [ready_w])
                    return
                except OSError as exc:
                    # Gone since the check (EPIPE, ECONNRESET): once more with a new one.
                    self._stop_locked()
                    if attempt == 2:
                        reason = f"cannot reach the fork server: {exc}"
                        raise ForkServerUnavailable(reason) from None

    def _start_locked(self) -> None:
        import socket
        import subprocess

        from iottymux.monitor_cmd import monitor_environment

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {TITLE_SPACE: " " * _TITLE_ROOM}  # first: right after the arguments
        env.update(monitor_environment())
        argv = [self.python, "-S", "-m", "iottymux", "forkserver", "--fd", str(theirs.fileno())]
        try:
            self._proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                cwd="/",
            )
        except OSError as exc:
            ours.close()
            raise ForkServerUnavailable(f"cannot start the fork server: {exc}") from None
        finally:
            theirs.close()
        self._sock = ours

    def _stop_locked(self) -> None:
        import subprocess

        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is not None:
            # It exits as soon as it reads the hang-up; it may be mid-fork.
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _read_answer(fd: int, timeout: float) -> str:
    """The first line written to the ready pipe ('' if it closed without one)."""
    import select
    import time

    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise MonitorStartError(f"the monitor was not ready within {timeout:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks).decode(errors="replace").split("\n", 1)[0].strip()


USAGE = """usage: iottymux forkserver --fd FD

Internal: started by rktlet to start pods' monitors by fork.  FD is this
process's end of a SOCK_SEQPACKET socket pair; see iottymux/forkserver.py.
"""


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    if len(args) != 2 or args[0] != "--fd" or not args[1].isdigit():
        sys.stderr.write(USAGE)
        return 2
    return serve(int(args[1]))
