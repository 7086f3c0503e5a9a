"""The daemon's side of the exec helper (``_exec_server.py``).

One helper process per daemon runs every ``runc exec --detach`` and reports the
exec'd process's wait status, so an exec costs a unix-socket round trip instead
of starting an interpreter (the one-shot ``_exec_shim.py``).  Requests are made
with non-blocking sockets on the event loop; any number can be in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_exec_server.py")


class ExecHelperError(RuntimeError):
    """The helper could not be started or did not answer."""


class ExecHelper:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            self._proc = await asyncio.to_thread(self._spawn)

    def _spawn(self) -> subprocess.Popen[bytes]:
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _SERVER, self.socket_path, str(ready_w)],
                pass_fds=(ready_w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(ready_w)
        try:
            with os.fdopen(ready_r, "rb") as ready:
                answer = ready.readline()
        except OSError:
            answer = b""
        if answer.strip() != b"ready":
            proc.kill()
            proc.wait()
            raise ExecHelperError(f"exec helper failed to start: {answer.decode().strip()}")
        return proc

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._proc = None

    async def submit(
        self, argv: Sequence[str], pid_file: str, stdio: Sequence[int]
    ) -> socket.socket:
        """Hand ``argv`` (a ``runc exec --detach --pid-file``) and ``stdio`` to the helper.

        When this returns the helper holds its own copies of ``stdio``: the caller
        may close them.  :meth:`result` then waits for the report.
        """
        if self._proc is None or self._proc.poll() is not None:
            await self.start()
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.socket_path)
            line = json.dumps({"argv": list(argv), "pid_file": pid_file}).encode() + b"\n"
            # A fresh socket's buffer takes this small message at once.
            socket.send_fds(sock, [line], list(stdio))
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    async def result(sock: socket.socket, started: asyncio.Event | None = None) -> dict[str, Any]:
        """The helper's report for a submitted exec (closes ``sock``).

        ``started`` is set when runc has started the process, before it ends.
        """
        loop = asyncio.get_running_loop()
        buffer = b""
        answer: dict[str, Any] | None = None
        try:
            while chunk := await loop.sock_recv(sock, 4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        answer = json.loads(line)
                    except ValueError:
                        raise ExecHelperError(f"the exec helper said {line[:200]!r}") from None
                    if answer is not None and "started" in answer:
                        if started is not None:
                            started.set()
                        answer = None
        finally:
            sock.close()
        if answer is None:
            raise ExecHelperError("the exec helper closed without an answer")
        return answer
