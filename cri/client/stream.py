"""Interactive exec and attach for the ``rktlet`` client, over the CRI streaming server.

Our stdin goes to the session's stdin stream (EOF closes it), its stdout and stderr
come to ours; with a terminal, ours is put in raw mode for the session and its size is
sent at start and on SIGWINCH.  The exit code is the remote command's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import termios
import tty as ttymod
from collections.abc import Iterator

from streaming import remotecommand as rc
from streaming.client import SpdyExec

EXIT_STREAM_FAILED = 1


@contextlib.contextmanager
def _raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd, termios.TCSANOW)  # TCSAFLUSH would drop typed-ahead input
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _copy_out(stream: object, fd: int) -> None:
    if stream is None:
        return
    read = stream.read  # type: ignore[attr-defined]
    while chunk := await read():
        view = memoryview(chunk)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            view = view[written:]


async def _copy_in(session: SpdyExec) -> None:
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        loop.add_reader(fd, readable)
    except (PermissionError, ValueError):  # a regular file: read it whole
        data = await asyncio.to_thread(sys.stdin.buffer.read)
        if data:
            await session.write_stdin(data)
        await session.close_stdin()
        return
    try:
        while data := await queue.get():
            await session.write_stdin(data)
        await session.close_stdin()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


async def run_session(url: str, *, stdin: bool, tty: bool) -> int:
    """Run one exec or attach session to its end; the remote exit code."""
    try:
        session = await SpdyExec.connect(url, stdin=stdin, stdout=True, stderr=not tty, tty=tty)
    except (OSError, ValueError) as exc:
        print(f"rktlet: streaming session at {url}: {exc}", file=sys.stderr)
        return EXIT_STREAM_FAILED
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    resize_installed = False

    async def send_size() -> None:
        size = shutil.get_terminal_size()
        with contextlib.suppress(ConnectionError):
            await session.resize(size.columns, size.lines)

    with _raw_terminal(sys.stdin.fileno(), tty and stdin):
        try:
            if tty and session.resize_stream is not None and os.isatty(sys.stdout.fileno()):
                await send_size()
                loop.add_signal_handler(
                    signal.SIGWINCH, lambda: tasks.append(asyncio.ensure_future(send_size()))
                )
                resize_installed = True
            if stdin:
                tasks.append(asyncio.create_task(_copy_in(session)))
            outputs = asyncio.gather(
                _copy_out(session.stdout, sys.stdout.fileno()),
                _copy_out(session.stderr, sys.stderr.fileno()),
            )
            chunks = []
            while chunk := await session.error.read():
                chunks.append(chunk)
            await outputs
            status = rc.parse_status(b"".join(chunks), session.version)
        finally:
            if resize_installed:
                loop.remove_signal_handler(signal.SIGWINCH)
            for task in tasks:
                task.cancel()
            await session.close()
    if status.success:
        return 0
    if status.exit_code is not None:
        return status.exit_code
    print(f"rktlet: {status.message or 'the session failed'}", file=sys.stderr)
    return EXIT_STREAM_FAILED
