"""Run ``runc exec --detach`` and report the exit status of the process it started.

Usage: ``python -I -S _exec_shim.py STATUS_FD -- RUNC_ARGV…`` (RUNC_ARGV must contain
``--detach`` and ``--pid-file PATH``).  Standard library only, and run as a script: it
starts on every ExecSync, so it must start fast.

Why it exists: a foreground ``runc exec`` copies the process's output through pipes of
its own and only exits once those reach EOF — which never happens while a background
child of the exec'd command holds them, so the ExecSync would hang for as long as that
child lives.  With ``--detach`` runc hands our pipes straight to the process and returns
at once; the process is then orphaned, and because this shim is a child subreaper it is
re-parented here, so the shim can ``waitpid`` it and learn its exit status.  The status
goes to STATUS_FD as one JSON line: ``{"status": <wait status>}``, or ``{"runc": <exit
code>}`` when runc itself failed (its error is in its log file).
"""

import ctypes
import json
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    status_fd = int(sys.argv[1])
    argv = sys.argv[3:]
    pid_file = argv[argv.index("--pid-file") + 1]
    os.set_inheritable(status_fd, False)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(status_fd, b'{"error": "prctl(PR_SET_CHILD_SUBREAPER) failed"}\n')
        return 1

    runc = os.posix_spawnp(argv[0], argv, os.environ)
    # The process now owns stdin/stdout/stderr; holding them here would delay the
    # caller's EOF until this shim exits.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    _, runc_status = os.waitpid(runc, 0)
    code = os.waitstatus_to_exitcode(runc_status)
    if code != 0:
        os.write(status_fd, json.dumps({"runc": code}).encode() + b"\n")
        return 0
    with open(pid_file, encoding="ascii") as f:
        target = int(f.read().strip())
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os.write(status_fd, b'{"error": "the exec\'d process was never adopted"}\n')
            return 1
        if pid == target:
            os.write(status_fd, json.dumps({"status": status}).encode() + b"\n")
            return 0


if __name__ == "__main__":
    sys.exit(main())
