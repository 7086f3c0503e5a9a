"""``iottymux monitor``: run one pod's monitor, detached or in the foreground.

``--detach`` double-forks (the monitor gets its own session and is re-parented
away from the caller, so it outlives it), waits until the control socket
accepts connections, prints the monitor's pid and exits 0; on a start failure it
prints the reason and exits 1.  Without ``--detach`` the monitor runs in the
calling process (under systemd, for example); ``--ready-fd`` then names a
descriptor on which ``ready <pid>`` is written once the socket is up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from iottymux import pagemerge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from iottymux.forkserver import ForkServer

PR_SET_CHILD_SUBREAPER = 36


def load_libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _set_subreaper(libc: Any) -> None:
    import ctypes

    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), "prctl(PR_SET_CHILD_SUBREAPER)")


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(libc: Any) -> None:
    # Every read allocates ~1 MiB twice (the read, the framed copy).  By default
    # glibc serves such blocks with mmap, or trims the heap after each free, so
    # every read faults in fresh pages; keep them on the heap instead.  The
    # idle-time malloc_trim below still hands the memory back when the pod is quiet.
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 4 << 20)
        mallopt(M_TRIM_THRESHOLD, 32 << 20)


def _idle_hook(libc: Any, ksm_run: str = pagemerge.KSM_RUN) -> Callable[[], None] | None:
    """What a monitor does when its pod goes quiet.

    After a burst of output, the read and framing buffers (a few MiB) stay in
    glibc's heap; handing them back keeps an idle monitor's RSS at its start-up
    size.  While the host's ksmd runs, mappings made since are offered to it
    (pagemerge.py); the offering is set up only then, for the same reason.
    """
    trim = getattr(libc, "malloc_trim", None)
    merge = pagemerge.enabled() and hasattr(libc, "madvise")
    if trim is None and not merge:
        return None
    offer: pagemerge.Offer | None = None

    def on_idle() -> None:
        nonlocal offer
        if trim is not None:
            trim(0)
        if merge and pagemerge.ksm_running(ksm_run):
            if offer is None:
                offer = pagemerge.Offer(libc)
            offer()

    return on_idle


def offer_pages(libc: Any) -> None:
    """Offer this process's private memory to KSM unless turned off (pagemerge.py)."""
    if pagemerge.enabled() and hasattr(libc, "madvise"):
        pagemerge.advise(libc)


def protect_from_oom() -> None:
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


def serve_monitor(
    run_dir: str, ready_fd: int, *, detached: bool, libc: Any = None, protect: bool = True
) -> int:
    """Run the monitor of ``run_dir`` in this process; ``ready <pid>`` goes to ``ready_fd``.

    ``detached``: this process was forked to be the monitor (by ``--detach`` or the
    fork server); it leaves its caller's directory, stdio and descriptors behind.
    """
    from iottymux.monitor import Monitor, run_monitor

    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    if detached:
        os.chdir("/")
        _redirect_stdio(run_dir)
        keep = [ready_fd] if ready_fd >= 0 else []
        _close_fds_except(keep)
    if libc is None:  # not forked from a fork server, which did this before forking
        libc = load_libc()
        tune_malloc(libc)
        offer_pages(libc)
    _set_subreaper(libc)
    if protect:
        protect_from_oom()
    answered = ready_fd < 0

    def ready(monitor: Monitor) -> None:
        nonlocal answered
        if not answered:
            answered = True
            os.write(ready_fd, b"ready %d\n" % os.getpid())
            os.close(ready_fd)
        notify_systemd(f"READY=1\nMAINPID={os.getpid()}")

    try:
        run_monitor(run_dir, ready, on_idle=_idle_hook(libc))
    except BaseException as exc:
        if not answered:
            try:
                os.write(ready_fd, f"error {exc}\n".encode())
            except OSError:
                pass
        import traceback

        traceback.print_exc()
        return 1
    return 0


def notify_systemd(state: str) -> bool:
    """sd_notify: tell the service manager our state, when it asked (NOTIFY_SOCKET).

    Under ``systemd-run --service-type=notify`` this is what makes systemd-run
    return only once the control socket accepts connections.
    """
    address = os.environ.pop("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    import socket

    target = "\0" + address[1:] if address[0] == "@" else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), target)
        except OSError as exc:
            print(f"iottymux monitor: cannot notify systemd: {exc}", file=sys.stderr)
            return False
    return True


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
            code = serve_monitor(run_dir, w, detached=True)
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


USAGE = """usage: iottymux monitor --run-dir DIR [--detach | --ready-fd FD]

  --run-dir DIR   the pod's run directory (control socket, state, attach sockets)
  --detach        double-fork, print the monitor's pid once it is ready, and exit
  --ready-fd FD   in the foreground, write 'ready PID' to FD once ready
"""


def main(argv: Sequence[str]) -> int:
    # Parsed by hand: argparse (and the re module it loads) would add a few
    # milliseconds to the start of every pod.
    run_dir = ""
    detach = False
    ready_fd = -1
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            sys.stdout.write((__doc__ or "") + "\n" + USAGE)
            return 0
        if arg == "--detach":
            detach = True
            continue
        name, has_value, value = arg.partition("=")
        if name in ("--run-dir", "--ready-fd"):
            if not has_value:
                if not args:
                    sys.stderr.write(f"iottymux monitor: {name} needs a value\n{USAGE}")
                    return 2
                value = args.pop(0)
            if name == "--run-dir":
                run_dir = value
            elif value.isdigit():
                ready_fd = int(value)
            else:
                sys.stderr.write(f"iottymux monitor: --ready-fd: not a number: {value!r}\n")
                return 2
            continue
        sys.stderr.write(f"iottymux monitor: unknown argument {arg!r}\n{USAGE}")
        return 2
    if not run_dir:
        sys.stderr.write(f"iottymux monitor: --run-dir is required\n{USAGE}")
        return 2
    run_dir = os.path.abspath(run_dir)
    if detach:
        return _detach(run_dir)
    return serve_monitor(run_dir, ready_fd, detached=False)


def monitor_argv(run_dir: str) -> list[str]:
    """The command line of a monitor in the foreground (also its title when forked).

    ``-S`` skips site-packages (the monitor needs only the standard library and
    this package, found through ``PYTHONPATH``): a faster start, a smaller RSS.
    """
    return [sys.executable, "-S", "-m", "iottymux", "monitor", "--run-dir", run_dir]


def monitor_environment() -> dict[str, str]:
    """This process's environment, with what a monitor's interpreter needs."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root
    # Every pod starts a monitor: it must load cached bytecode, not recompile.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def monitor_command(run_dir: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start a detached monitor."""
    return [*monitor_argv(run_dir), "--detach"], monitor_environment()


def systemd_running() -> bool:
    """Whether the host's service manager is systemd (sd_booted's test)."""
    return os.path.isdir("/run/systemd/system")


def systemd_run_command(run_dir: str, unit: str) -> tuple[list[str], dict[str, str]]:
    """The monitor as a transient systemd service, the way rktlet started rkt pods.

    KillMode=process: stopping the unit must not kill the containers' processes
    behind the monitor's back (the monitor stops them itself); notify: systemd-run
    returns once the monitor said READY=1, i.e. its control socket is up.
    """
    argv, env = monitor_command(run_dir)
    argv = [a for a in argv if a != "--detach"]
    runner = [
        "systemd-run",
        f"--unit={unit}",
        "--service-type=notify",
        "--collect",
        "--quiet",
        "--property=KillMode=process",
        "--property=OOMScoreAdjust=-999",
        f"--setenv=PYTHONPATH={env['PYTHONPATH']}",
    ]
    return [*runner, *argv], env


def start_detached(
    run_dir: str,
    timeout: float = 30.0,
    *,
    unit: str = "",
    fork_server: ForkServer | None = None,
) -> int:
    """Start a monitor for ``run_dir`` that outlives the caller; its pid once it is ready.

    Under systemd (and when ``unit`` names the transient unit to use) the monitor runs
    as its own service.  Otherwise it is forked by ``fork_server`` when one is given
    and can take the request, and else started as a new interpreter that
    double-forks away from the caller (``iottymux monitor --detach``).
    """
    import subprocess

    run_dir = os.path.abspath(run_dir)
    if unit and systemd_running() and os.environ.get("RKTLET_NO_SYSTEMD") != "1":
        argv, env = systemd_run_command(run_dir, unit)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"systemd-run exited {done.returncode}")
        shown = subprocess.run(
            ["systemctl", "show", "--property=MainPID", "--value", unit],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return int(shown.stdout.strip())
    if fork_server is not None:
        from iottymux.forkserver import ForkServerUnavailable

        try:
            return fork_server.start_monitor(run_dir, timeout)
        except ForkServerUnavailable as exc:
            import logging

            logging.getLogger("iottymux").warning(
                "starting the monitor of %s without the fork server: %s", run_dir, exc
            )
    argv, env = monitor_command(run_dir)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"monitor exited with {done.returncode}")
    return int(done.stdout.strip())
