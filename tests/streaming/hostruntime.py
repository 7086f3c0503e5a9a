"""A TEST DOUBLE of the container runtime: it runs real processes on the host.

The CRI daemon with real containers does not exist yet; until it does, the
streaming server is exercised end to end against this ``Runtime``, which runs
``exec`` commands as host processes (through a pty for tty, pipes otherwise),
keeps "containers" as long-lived host processes for ``attach`` (with
StdinOnce), and port-forwards into a network namespace given per pod (None:
host network).  It will be replaced by the adapter over the OCI runtime and
iottymux (``cri/streaming_runtime.py``) when the runtime lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streaming import portforward
from streaming.runtime import DuplexStream, OutputStream, ResizeQueue, Streams

READ = 65536


def exit_code(returncode: int) -> int:
    """A signal death as 128+N, the way shells and containerd report it."""
    return 128 - returncode if returncode < 0 else returncode


def set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def _read_fd(fd: int, size: int = READ) -> bytes:
    """Read a non-blocking fd from the loop; b"" at EOF (EIO on a pty master)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise
        ready = loop.create_future()
        loop.add_reader(fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def _write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        ready = loop.create_future()
        loop.add_writer(fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


async def _copy_to(reader: asyncio.StreamReader, out: OutputStream | None) -> None:
    while data := await reader.read(READ):
        if out is not None:
            with contextlib.suppress(ConnectionError):
                await out.write(data)
    if out is not None:
        await out.close()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class HostContainer:
    """A long-running host process standing in for a container (for attach)."""

    proc: asyncio.subprocess.Process
    stdin_once: bool
    subscribers: list[asyncio.Queue[tuple[int, bytes] | None]] = field(default_factory=list)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    stdin_closed: bool = False


class HostRuntime:
    """``streaming.runtime.Runtime`` over host processes.  Test use only."""

    def __init__(self) -> None:
        self.netns: dict[str, str | None] = {}
        self.containers: dict[str, HostContainer] = {}
        self.exec_calls = 0
        self.running: set[int] = set()
        #: Every terminal size applied to an exec's pty, in order.
        self.resizes: list[tuple[int, int]] = []
        #: Set whenever a process starts or ends or a pty is resized (tests wait on
        #: it, never poll).
        self.changed = asyncio.Event()

    def _started(self, pid: int) -> None:
        self.running.add(pid)
        self.changed.set()

    def _ended(self, pid: int) -> None:
        self.running.discard(pid)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()

    # --- exec ----------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: Streams,
        tty: bool,
        resize_queue: ResizeQueue | None,
    ) -> int:
        if container_id.startswith("missing"):
            raise LookupError(f"container {container_id} not found")
        self.exec_calls += 1
        if tty:
            return await self._exec_tty(cmd, streams, resize_queue)
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE if streams.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if streams.stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if streams.stderr else asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        self._started(proc.pid)
        tasks = []
        if proc.stdout is not None:
            tasks.append(asyncio.create_task(_copy_to(proc.stdout, streams.stdout)))
        if proc.stderr is not None:
            tasks.append(asyncio.create_task(_copy_to(proc.stderr, streams.stderr)))
        feeder = None
        if streams.stdin is not None and proc.stdin is not None:
            feeder = asyncio.create_task(self._feed_pipe(streams, proc.stdin))
        try:
            returncode = await proc.wait()
            await asyncio.gather(*tasks)
        finally:
            _kill_group(proc)
            for task in [*tasks, *([feeder] if feeder else [])]:
                task.cancel()
            await proc.wait()
            self._ended(proc.pid)
        return exit_code(returncode)

    @staticmethod
    async def _feed_pipe(streams: Streams, stdin: asyncio.StreamWriter) -> None:
        assert streams.stdin is not None
        try:
            while data := await streams.stdin.read(READ):
                stdin.write(data)
                await stdin.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            stdin.close()

    async def _exec_tty(
        self, cmd: Sequence[str], streams: Streams, resize_queue: ResizeQueue | None
    ) -> int:
        master, slave = os.openpty()
        set_winsize(master, 80, 24)
        os.set_blocking(master, False)

        def controlling_tty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                preexec_fn=controlling_tty,
            )
        finally:
            os.close(slave)
        self._started(proc.pid)

        async def output() -> None:
            while data := await _read_fd(master):
                if streams.stdout is not None:
                    with contextlib.suppress(ConnectionError):
                        await streams.stdout.write(data)
            if streams.stdout is not None:
                await streams.stdout.close()

        async def feed() -> None:
            assert streams.stdin is not None
            with contextlib.suppress(ConnectionError, OSError):
                while data := await streams.stdin.read(READ):
                    await _write_fd(master, data)
                await _write_fd(master, b"\x04")  # ^D: EOF for the canonical-mode reader

        async def resize() -> None:
            assert resize_queue is not None
            async for size in resize_queue:
                set_winsize(master, size.width, size.height)
                self.resizes.append((size.width, size.height))
                self.changed.set()

        reader = asyncio.create_task(output())
        helpers = []
        if streams.stdin is not None:
            helpers.append(asyncio.create_task(feed()))
        if resize_queue is not None:
            helpers.append(asyncio.create_task(resize()))
        try:
            returncode = await proc.wait()
            await reader
        finally:
            _kill_group(proc)
            reader.cancel()
            for task in helpers:
                task.cancel()
            await proc.wait()
            os.close(master)
            self._ended(proc.pid)
        return exit_code(returncode)

    # --- attach --------------------------------------------------------------

    async def add_container(
        self, container_id: str, cmd: Sequence[str], *, stdin_once: bool = True
    ) -> HostContainer:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._started(proc.pid)
        container = HostContainer(proc, stdin_once)

        async def broadcast(which: int, reader: asyncio.StreamReader) -> None:
            while data := await reader.read(READ):
                for queue in list(container.subscribers):
                    try:
                        queue.put_nowait((which, data))
                    except asyncio.QueueFull:
                        # A slow attacher is dropped, never waited for.
                        container.subscribers.remove(queue)
                        while not queue.empty():
                            queue.get_nowait()
                        queue.put_nowait(None)

        assert proc.stdout is not None and proc.stderr is not None
        container.pumps = [
            asyncio.create_task(broadcast(1, proc.stdout)),
            asyncio.create_task(broadcast(2, proc.stderr)),
        ]
        self.containers[container_id] = container
        return container

    async def attach(
        self,
        container_id: str,
        streams: Streams,
        tty: bool,
        resize_queue: ResizeQueue | None,
    ) -> None:
        container = self.containers.get(container_id)
        if container is None:
            raise LookupError(f"container {container_id} not found")
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(256)
        container.subscribers.append(queue)
        proc = container.proc

        async def feed() -> None:
            assert streams.stdin is not None and proc.stdin is not None
            with contextlib.suppress(ConnectionError, OSError):
                while data := await streams.stdin.read(READ):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            if container.stdin_once and not container.stdin_closed:
                container.stdin_closed = True
                proc.stdin.close()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                which, data = item
                out = streams.stdout if which == 1 else streams.stderr
                if out is not None:
                    with contextlib.suppress(ConnectionError):
                        await out.write(data)

        feeder = asyncio.create_task(feed()) if streams.stdin is not None else None
        deliverer = asyncio.create_task(deliver())
        try:
            await proc.wait()
            await asyncio.gather(*container.pumps)
            queue.put_nowait(None)
            await deliverer
        finally:
            if queue in container.subscribers:
                container.subscribers.remove(queue)
            deliverer.cancel()
            if feeder is not None:
                feeder.cancel()
        for out in (streams.stdout, streams.stderr):
            if out is not None:
                await out.close()

    async def close(self) -> None:
        for container in self.containers.values():
            _kill_group(container.proc)
            await container.proc.wait()
            for task in container.pumps:
                task.cancel()
            self._ended(container.proc.pid)

    # --- port-forward --------------------------------------------------------

    async def port_forward(self, pod_sandbox_id: str, port: int, stream: DuplexStream) -> None:
        if pod_sandbox_id not in self.netns:
            raise LookupError(f"pod sandbox {pod_sandbox_id} not found")
        await portforward.forward(self.netns[pod_sandbox_id], port, stream, timeout=5)
