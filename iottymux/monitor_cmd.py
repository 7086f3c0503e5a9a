"""``iottymux monitor``: run one pod's monitor, detached or in the foreground.

``--detach`` double-forks (the monitor gets its own session and is re-parented
away from the caller, so it outlives it), waits until the control socket
accepts connections, prints the monitor's pid and exits 0; on a start failure it
prints the reason and exits 1.  Without ``--detach`` the monitor runs in the
calling process (under systemd, for example); ``--ready-fd`` then names a
descriptor on which ``ready <pid>`` is written once the socket is up.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), "prctl(PR_SET_CHILD_SUBREAPER)")


def _protect_from_oom() -> None:
    # Losing the monitor loses the pod's logs and attach; ask the OOM killer to
    # spare it.  Hosts without CAP_SYS_RESOURCE refuse a lower value: a warning.
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError as exc:
        print(f"iottymux monitor: cannot lower oom_score_adj: {exc.strerror}", file=sys.stderr)


def _redirect_stdio(run_dir: str) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(
        os.path.join(run_dir, "monitor.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _serve(run_dir: str, ready_fd: int, *, detached: bool) -> int:
    from iottymux.monitor import Monitor, run_monitor

    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    if detached:
        os.chdir("/")
        _redirect_stdio(run_dir)
        keep = [ready_fd] if ready_fd >= 0 else []
        _close_fds_except(keep)
    _set_subreaper()
    _protect_from_oom()

    def ready(monitor: Monitor) -> None:
        if ready_fd >= 0:
            os.write(ready_fd, b"ready %d\n" % os.getpid())
            os.close(ready_fd)

    try:
        run_monitor(run_dir, ready)
    except BaseException as exc:
        if ready_fd >= 0:
            try:
                os.write(ready_fd, f"error {exc}\n".encode())
            except OSError:
                pass
        traceback.print_exc()
        return 1
    return 0


def _close_fds_except(keep: list[int]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if low < 65536 else low)


def _detach(run_dir: str) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            code = _serve(run_dir, w, detached=True)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    os.close(r)
    answer = b"".join(chunks).decode(errors="replace").strip()
    if answer.startswith("ready "):
        print(answer.split()[1])
        return 0
    reason = answer.removeprefix("error ") or "exited before it was ready"
    print(f"iottymux monitor: failed to start: {reason}", file=sys.stderr)
    return 1


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="iottymux monitor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-dir",
        required=True,
        help="the pod's run directory (control socket, state, attach sockets)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="double-fork, print the monitor's pid once it is ready, and exit",
    )
    parser.add_argument(
        "--ready-fd",
        type=int,
        default=-1,
        help="in the foreground, write 'ready PID' to this fd when ready",
    )
    args = parser.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    if args.detach:
        return _detach(run_dir)
    return _serve(run_dir, args.ready_fd, detached=False)
