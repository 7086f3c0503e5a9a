"""Starting an app's process with stdio the monitor owns.

The monitor creates every app's stdio itself (pipes, or a pty) and hands the
child ends to the process it starts.  For a host process that is the app; for an
OCI container it is ``runc create``, which passes the same descriptors on to the
container's init (for a tty, runc sends the pty master back over a console
socket instead).  Either way the process is started here, by :func:`spawn`: a
plain ``fork`` + ``exec`` from the single-threaded monitor, with exec failures
reported back through a close-on-exec pipe, as ``subprocess`` does (but without
its child bookkeeping, which would race the monitor's own ``waitpid(-1)``).
"""

from __future__ import annotations

import fcntl
import os
import signal
import termios
from collections.abc import Mapping, Sequence

#: What a pipe is raised to, where the kernel allows (fs.pipe-max-size).
PIPE_SIZE = 1 << 20


class SpawnError(OSError):
    """The process could not be started (exec or setup failed in the child)."""


class Stdio:
    """The child's ends of its three standard streams (-1: /dev/null)."""

    __slots__ = ("stdin", "stdout", "stderr", "ctty")

    def __init__(self, stdin: int = -1, stdout: int = -1, stderr: int = -1, ctty: int = -1) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: A pty slave to make the controlling terminal of the child's session.
        self.ctty = ctty


def make_pipe() -> tuple[int, int]:
    """A pipe (read end, write end), raised to :data:`PIPE_SIZE` if allowed."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Unprivileged users are capped by fs.pipe-max-size; 64 KiB still works.
        pass
    return r, w


def make_pty() -> tuple[int, int]:
    """A pty pair (master, slave), both close-on-exec, in raw-ish output mode.

    Output processing is left on (ONLCR), as a terminal app expects; the log
    writer turns the resulting ``\\r\\n`` back into ``\\n``.
    """
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_inheritable(slave, False)
    return master, slave


def _child(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None, stdio: Stdio, err_w: int
) -> None:
    """Runs in the forked child; never returns."""
    try:
        os.setsid()
        # Python ignores SIGPIPE and may have handlers installed; an exec'd
        # app must start with default dispositions and an empty signal mask.
        for signum in (
            signal.SIGPIPE,
            signal.SIGCHLD,
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGQUIT,
            signal.SIGXFSZ,
        ):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        null = -1
        targets = (stdio.stdin, stdio.stdout, stdio.stderr)
        if -1 in targets:
            null = os.open(os.devnull, os.O_RDWR)
        # dup everything above 2 first, so that dup2 onto 0..2 cannot clobber
        # a source descriptor that happens to be 0..2 itself.
        sources = [os.dup(fd if fd >= 0 else null) for fd in targets]
        for target, source in enumerate(sources):
            os.dup2(source, target, inheritable=True)
        if stdio.ctty >= 0:
            fcntl.ioctl(0 if stdio.stdin == stdio.ctty else stdio.ctty, termios.TIOCSCTTY, 0)
        if cwd:
            os.chdir(cwd)
        if env is None:
            os.execvp(argv[0], list(argv))
        else:
            os.execvpe(argv[0], list(argv), dict(env))
    except OSError as exc:
        code = exc.errno or 0
        message = f"{code}:{exc.strerror or exc}".encode()
        try:
            os.write(err_w, message[:4000])
        finally:
            os._exit(127)
    except BaseException as exc:  # pragma: no cover - last resort in the child
        try:
            os.write(err_w, f"0:{exc!r}".encode()[:4000])
        finally:
            os._exit(127)


def spawn(
    argv: Sequence[str],
    stdio: Stdio,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    """Start ``argv`` in a new session with ``stdio``; return its pid.

    Raises :class:`SpawnError` (with the child's errno) when the exec fails; the
    failed child has been reaped by then.
    """
    if not argv:
        raise ValueError("empty command")
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(err_r)
            _child(argv, env, cwd, stdio, err_w)
        os.close(err_w)
        err_w = -1
        chunks = []
        while chunk := os.read(err_r, 4096):
            chunks.append(chunk)
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)
    if chunks:
        os.waitpid(pid, 0)
        code_text, _, message = b"".join(chunks).decode(errors="replace").partition(":")
        code = int(code_text) if code_text.isdigit() else 0
        raise SpawnError(code, f"cannot run {argv[0]!r}: {message}")
    return pid
