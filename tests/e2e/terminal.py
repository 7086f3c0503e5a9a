"""Driving a client (``kubectl exec -it``, ``crictl exec -it``) from a pseudo-terminal.

The client gets a new pty as its controlling terminal (``setsid --ctty``), so that it
goes raw and gets SIGWINCH when the test resizes the terminal, as under a person's
shell.  It is started with ``subprocess`` (no Python-level fork in this process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence


class Terminal:
    def __init__(self, argv: Sequence[str], rows: int = 24, cols: int = 80) -> None:
        self.master, slave = pty.openpty()
        self.resize(rows, cols)
        try:
            self.proc = subprocess.Popen(
                ["setsid", "--ctty", "--wait", *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                close_fds=True,
            )
        finally:
            os.close(slave)
        self.output = b""

    def resize(self, rows: int, cols: int) -> None:
        # TIOCSWINSZ on the master: the kernel signals the terminal's foreground group.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read_once(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False at the end of output."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave end is closed
            return False
        if not data:
            return False
        self.output += data
        return True

    def read_until(self, needle: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen in {timeout} s: {self.output!r}")
            if not self._read_once(min(left, 0.5)):
                raise AssertionError(f"output ended before {needle!r}: {self.output!r}")
        return self.output

    def wait(self, timeout: float = 60) -> int:
        """The client's exit code, once it ended (its output read to the end)."""
        deadline = time.monotonic() + timeout
        while self._read_once(0.2):
            if self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the client did not end in {timeout} s: {self.output!r}")
        return self.proc.wait(max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)
