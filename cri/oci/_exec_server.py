"""A long-lived exec helper: ``runc exec --detach`` on request, reporting exit statuses.

Usage: ``python -I -S _exec_server.py SOCKET READY_FD``.  Standard library only.

It does what ``_exec_shim.py`` does for one exec, for every exec of the daemon,
without an interpreter start per exec.  A request is one connection: a JSON line
``{"argv": [...runc exec --detach --pid-file P ...], "pid_file": P}`` sent with
three file descriptors (SCM_RIGHTS) that become runc's -- and so the exec'd
process's -- stdin, stdout and stderr.  The helper is a child subreaper: the exec'd
process is re-parented to it when runc exits, so it can wait for it.  Once runc has
started the process the helper says so, ``{"started": <pid>}``; the answer is then
one more JSON line: ``{"status": <wait status>}``.  When runc itself fails the only
line is ``{"runc": <exit code>}``.

One thread reaps every child (``waitpid(-1)``) and hands statuses to the
connection threads waiting for them; a status that arrives before anyone waits
(a process that exited at once) is kept for a while, as are the statuses of
orphans nobody asked about, which are dropped oldest first.
"""

import ctypes
import json
import os
import socket
import sys
import threading

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
KEEP_UNCLAIMED = 4096


class Reaper:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.children = threading.Condition(self.lock)
        self.waiting: dict[int, list[int]] = {}
        self.unclaimed: dict[int, int] = {}
        self.spawned = 0

    def run(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                with self.lock:
                    # No child at all: sleep until one is spawned.
                    self.children.wait_for(lambda: self.spawned > 0, timeout=1.0)
                    self.spawned = 0
                continue
            except InterruptedError:
                continue
            with self.lock:
                slot = self.waiting.pop(pid, None)
                if slot is not None:
                    slot.append(status)
                    self.children.notify_all()
                else:
                    self.unclaimed[pid] = status
                    while len(self.unclaimed) > KEEP_UNCLAIMED:
                        del self.unclaimed[next(iter(self.unclaimed))]

    def note_spawn(self) -> None:
        with self.lock:
            self.spawned += 1
            self.children.notify_all()

    def wait_for(self, pid: int) -> int:
        with self.lock:
            if pid in self.unclaimed:
                return self.unclaimed.pop(pid)
            slot: list[int] = []
            self.waiting[pid] = slot
            self.children.wait_for(lambda: bool(slot))
            return slot[0]


def handle(conn: socket.socket, reaper: Reaper) -> None:
    fds: list[int] = []
    answer: dict[str, object]
    try:
        msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
        while not msg.endswith(b"\n"):
            more = conn.recv(1 << 16)
            if not more:
                break
            msg += more
        request = json.loads(msg)
        argv = request["argv"]
        pid_file = request["pid_file"]
        if len(fds) != 3:
            raise ValueError("three file descriptors (stdin, stdout, stderr) are required")
        for fd in fds:
            os.set_inheritable(fd, False)
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        with reaper.lock:
            # Spawn under the lock, so the reaper cannot see the pid before we wait.
            runc = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
            reaper.spawned += 1
            reaper.children.notify_all()
        for fd in fds:
            os.close(fd)
        fds = []
        code = os.waitstatus_to_exitcode(reaper.wait_for(runc))
        if code != 0:
            answer = {"runc": code}
        else:
            with open(pid_file, encoding="ascii") as f:
                target = int(f.read().strip())
            # A tty exec's input may flow once the process runs (as containerd's shim
            # does it): input written sooner is echoed by the terminal before any output.
            try:
                conn.sendall(json.dumps({"started": target}).encode() + b"\n")
            except OSError:
                pass
            answer = {"status": reaper.wait_for(target), "pid": target}
    except Exception as exc:  # report, never take the helper down
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for fd in fds:
            os.close(fd)
    try:
        conn.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


def main() -> int:
    path, ready_fd = sys.argv[1], int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(ready_fd, b"error prctl(PR_SET_CHILD_SUBREAPER) failed\n")
        return 1
    # Exec sessions end with the daemon that holds their streams: so does the helper.
    libc.prctl(PR_SET_PDEATHSIG, 15, 0, 0, 0)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(128)
    reaper = Reaper()
    threading.Thread(target=reaper.run, daemon=True, name="reaper").start()
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, reaper), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
