"""The streaming server's Runtime, over runc and the iottymux monitors.

* exec: ``runc exec`` with the container's process spec (its user, capabilities,
  no_new_privs, seccomp, cgroup); a tty exec gets its pty from runc through a
  console socket, and resize events go to that pty.
* attach: a client of the app's iottymux attach endpoint, so StdinOnce, resize,
  replay and the slow-client rule (the monitor disconnects an attacher that falls
  behind) hold end to end.  Output is read from the monitor's shared output ring
  (:mod:`iottymux.outring`), so that many attach sessions of one container cost
  its monitor one copy of each read, not one per session; a monitor that offers
  no ring sends it on the socket as before.
* port-forward: a connection dialled from a thread that has ``setns``-ed into
  the pod's network namespace (the host's for a host-network pod).

It also turns the CRI Exec / Attach / PortForward requests into one-time URLs
(:class:`StreamingFront`), mapping the streaming package's errors onto ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import struct
import termios
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from cri.oci.runc import Runc, log_message, process_spec_for_exec, shell_exit_code
from cri.runtime import Runtime
from iottymux import attachproto as proto
from iottymux.outring import RingLapped, RingReader
from streaming import errors as streaming_errors
from streaming import portforward
from streaming.config import StreamingConfig
from streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from streaming.runtime import DuplexStream, OutputStream, ResizeQueue, Streams
from streaming.server import Server

log = logging.getLogger("rktlet.streaming")

CHUNK = 1 << 16
#: How long an attach goes on relaying output after the client's input ended (so the
#: app's answer to its last input still arrives) before it ends.
ATTACH_LINGER = 2.0


class ContainerStreamingRuntime:
    """Implements :class:`streaming.runtime.Runtime` for rktlet's containers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # -- exec ----------------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: Streams,
        tty: bool,
        resize_queue: ResizeQueue | None,
    ) -> int:
        record = self.rt.container(container_id)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id} is not running")
        sandbox = self.rt.sandbox(record.sandbox_id)
        bundle = self.rt.bundle_dir(record.id)
        spec = json.loads((bundle / "config.json").read_text())
        token = secrets.token_hex(8)
        process_file = bundle / f"exec-{token}.json"
        pid_file = bundle / f"exec-{token}.pid"
        process_file.write_text(json.dumps(process_spec_for_exec(spec, list(cmd), tty)))
        runc = Runc(
            self.rt.runc_root, binary=self.rt.config.handler_binary(sandbox.runtime_handler)
        )
        log_path = str(bundle / f"exec-{token}.log")
        try:
            if tty:
                return await self._exec_tty(
                    runc, record.id, process_file, pid_file, log_path, streams, resize_queue
                )
            return await self._exec_pipes(
                runc, record.id, process_file, pid_file, log_path, streams
            )
        finally:
            for path in (process_file, pid_file, Path(log_path)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def _exec_pipes(
        self,
        runc: Runc,
        container_id: str,
        process_file: Path,
        pid_file: Path,
        log_path: str,
        streams: Streams,
    ) -> int:
        # Our own pipes, handed to the process by a detached runc exec: a
        # background child that keeps them open cannot hold the session.
        ends: list[int] = []
        child: dict[str, int] = {}
        mine: dict[str, int] = {}
        try:
            for name, wanted in (
                ("stdin", streams.stdin),
                ("stdout", streams.stdout),
                ("stderr", streams.stderr),
            ):
                if wanted is None:
                    continue
                r, w = os.pipe2(os.O_CLOEXEC)
                ends += [r, w]
                child[name], mine[name] = (r, w) if name == "stdin" else (w, r)
            for fd in mine.values():
                os.set_blocking(fd, False)
            argv = runc.exec_argv(
                container_id,
                str(process_file),
                log_path=log_path,
                detach=True,
                pid_file=str(pid_file),
            )
            devnull = asyncio.subprocess.DEVNULL
            run = self._shim(
                argv,
                pid_file,
                stdin=child.get("stdin", devnull),
                stdout=child.get("stdout", devnull),
                stderr=child.get("stderr", devnull),
            )
            tasks = []
            outputs = []
            if "stdin" in mine and streams.stdin is not None:
                tasks.append(
                    asyncio.create_task(_feed_fd(streams.stdin, mine.pop("stdin"), tty=False))
                )
            # Each drain owns (and closes) its fd from here on: pop it, so that the
            # cleanup below cannot close a number the kernel has handed out again.
            drained: list[int] = []
            closed: set[int] = set()
            for name, out in (("stdout", streams.stdout), ("stderr", streams.stderr)):
                if name in mine:
                    fd = mine.pop(name)
                    drained.append(fd)
                    outputs.append(asyncio.create_task(_drain_fd(fd, out, closed=closed)))
            try:

                def close_child_ends() -> None:
                    for key in list(child):
                        os.close(child.pop(key))

                code = await run(close_child_ends)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*outputs, return_exceptions=True), 2.0)
            finally:
                for task in [*tasks, *outputs]:
                    task.cancel()
                await asyncio.gather(*tasks, *outputs, return_exceptions=True)
                # A drain cancelled before it ran never closed its fd.
                for fd in drained:
                    if fd not in closed:
                        os.close(fd)
            return code
        finally:
            for fd in [*child.values(), *mine.values()]:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _shim(
        self,
        argv: list[str],
        pid_file: Path,
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        started: asyncio.Event | None = None,
    ) -> Callable[[Callable[[], object]], Coroutine[Any, Any, int]]:
        """Start runc exec --detach under the subreaper shim; await its exit code.

        ``started`` is set once runc has started the process.
        """

        async def run(after_spawn: Callable[[], object]) -> int:
            # The daemon's exec helper runs runc and reaps the exec'd process; its
            # report carries the wait status.
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            fds = [
                null if fd == asyncio.subprocess.DEVNULL else fd for fd in (stdin, stdout, stderr)
            ]
            try:
                sock = await self.rt.exec_helper.submit(argv, str(pid_file), fds)
            finally:
                os.close(null)
                after_spawn()
            try:
                status = await self.rt.exec_helper.result(sock, started)
            except asyncio.CancelledError:
                _kill_pid_file(pid_file)
                raise
            if "status" in status:
                return shell_exit_code(int(status["status"]))
            reason = str(status)
            if "runc" in status:
                # runc's own words (e.g. the command is not in the image) from its log.
                with (
                    contextlib.suppress(OSError),
                    open(argv[argv.index("--log") + 1], encoding="utf-8", errors="replace") as f,
                ):
                    reason = log_message(f.read(), b"")
            raise Unavailable(f"runc exec failed: {reason}")

        return run

    async def _exec_tty(
        self,
        runc: Runc,
        container_id: str,
        process_file: Path,
        pid_file: Path,
        log_path: str,
        streams: Streams,
        resize_queue: ResizeQueue | None,
    ) -> int:
        console_path = str(self.rt.run_dir / f"ec-{secrets.token_hex(6)}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(console_path)
        os.chmod(console_path, 0o600)
        listener.listen(1)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        master = -1
        try:
            argv = runc.exec_argv(
                container_id,
                str(process_file),
                log_path=log_path,
                detach=True,
                pid_file=str(pid_file),
                console_socket=console_path,
            )
            devnull = asyncio.subprocess.DEVNULL
            started = asyncio.Event()
            run = self._shim(
                argv, pid_file, stdin=devnull, stdout=devnull, stderr=devnull, started=started
            )
            waiter: asyncio.Task[int] = asyncio.create_task(run(lambda: None))
            tasks.append(waiter)
            accept = asyncio.create_task(loop.sock_accept(listener))
            done, _ = await asyncio.wait(
                {accept, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            if accept not in done:
                accept.cancel()
                if waiter in done:
                    waiter.result()  # raises the runc failure
                raise Unavailable("runc did not hand over the exec's terminal")
            conn, _ = accept.result()
            with conn:
                conn.setblocking(True)
                conn.settimeout(10)
                _msg, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, conn, 4096, 1)
            if not fds:
                raise Unavailable("runc sent no terminal for the exec")
            master = fds[0]
            os.set_blocking(master, False)
            if resize_queue is not None:
                tasks.append(asyncio.create_task(_apply_resizes(resize_queue, master)))
            if streams.stdin is not None:
                # runc hands the terminal over before it starts the process; what the
                # client typed meanwhile (crictl sends a NUL when its terminal goes
                # raw with an EOF pending) would be echoed ahead of the process's
                # output, or into a terminal whose process never ran.
                tasks.append(
                    asyncio.create_task(_feed_when(started, streams.stdin, master, tty=True))
                )
            output = asyncio.create_task(_drain_fd(master, streams.stdout, close_fd=False))
            tasks.append(output)
            code = await waiter
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output), 2.0)
            return code
        finally:
            for task in tasks:
                task.cancel()
            if master >= 0:
                os.close(master)
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(console_path)

    # -- attach ----------------------------------------------------------------------

    async def attach(
        self, container_id: str, streams: Streams, tty: bool, resize_queue: ResizeQueue | None
    ) -> None:
        record = self.rt.container(container_id)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id} is not running")
        config = api_pb2.ContainerConfig.FromString(record.config)
        # The end of the client's input ends the session, as containerd's does, unless it
        # is the end of the app's input too (stdin_once without a tty: the monitor closes
        # the app's stdin, and the session follows the app to its exit).  The app keeps
        # running and its stdin stays open for the next attacher.
        ends_with_input = streams.stdin is not None and not (config.stdin_once and not tty)
        app_dir = os.path.join(self.rt.pod_run_dir(record.sandbox_id), "apps", record.id)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        ring: RingReader | None = None
        tasks: list[asyncio.Task[Any]] = []
        writer: asyncio.StreamWriter | None = None
        try:
            dir_fd = os.open(app_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                await loop.sock_connect(sock, f"/proc/self/fd/{dir_fd}/attach.sock")
            finally:
                os.close(dir_fd)
            hello = proto.encode_hello(
                stdin=streams.stdin is not None,
                stdout=streams.stdout is not None,
                stderr=streams.stderr is not None,
                ring=True,
            )
            await loop.sock_sendall(sock, hello)
            decoder = proto.FrameDecoder(proto.SERVER_KINDS)
            ring, frames = await _ready(sock, decoder)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 22)
            ring_offset = 0
            ring_frames = proto.FrameDecoder(frozenset({proto.STDOUT, proto.STDERR}))
            input_over: asyncio.Task[None] | None = None
            if streams.stdin is not None:
                input_ended = asyncio.Event()
                tasks.append(asyncio.create_task(_stdin_frames(streams.stdin, writer, input_ended)))
                if ends_with_input:
                    input_over = asyncio.create_task(_linger_after(input_ended, ATTACH_LINGER))
                    tasks.append(input_over)
            if resize_queue is not None and tty:
                tasks.append(asyncio.create_task(_resize_frames(resize_queue, writer)))
            output: list[tuple[int, bytes]] = []

            def read_ring(told: int) -> None:
                """Ring output from where we are to at least ``told`` (on to its write end
                if more is there), with its ACK due once that output is delivered."""
                nonlocal ring_offset
                assert ring is not None
                end = ring.available(ring_offset, told)
                if end <= ring_offset:
                    return
                try:
                    chunk = ring.read(ring_offset, end)
                except RingLapped as exc:
                    raise Unavailable(f"attach ended: overflow: {exc}") from None
                output.extend(ring_frames.receive_data(chunk))
                ring_offset = end
                # A slow client counts as behind, exactly as on the socket.
                output.append((_ACK_DUE, proto.encode_offset(proto.ACK, end)))

            while True:
                if input_over is not None and input_over.done():
                    return  # even while the app keeps writing
                while not frames and not output:
                    if ring is not None and ring.write_end() > ring_offset:
                        read_ring(0)  # behind: read on without waiting for a RING
                        continue
                    if input_over is None:
                        data = await reader.read(1 << 18)
                    else:
                        read = asyncio.ensure_future(reader.read(1 << 18))
                        await asyncio.wait({read, input_over}, return_when=asyncio.FIRST_COMPLETED)
                        if not read.done():
                            read.cancel()
                            return
                        data = read.result()
                    if not data:
                        return
                    frames.extend(decoder.receive_data(data))
                if output:
                    kind, payload = output.pop(0)
                else:
                    kind, payload = frames.pop(0)
                if kind == proto.READY:
                    info = proto.decode_json(payload).get("ring")
                    if ring is not None and isinstance(info, dict):
                        ring_offset = int(info.get("offset", 0))
                    elif ring is not None:
                        ring.close()
                        ring = None
                elif kind == proto.RING:
                    if ring is None:
                        raise Unavailable("attach: the monitor sent RING without a ring")
                    told = proto.decode_offset(payload)
                    if told > ring_offset:  # else: already read ahead past it
                        read_ring(told)
                elif kind == _ACK_DUE:
                    writer.write(payload)
                elif kind == proto.STDOUT and streams.stdout is not None:
                    await streams.stdout.write(payload)
                elif kind == proto.STDERR:
                    target = streams.stderr or (streams.stdout if tty else None)
                    if target is not None:
                        await target.write(payload)
                elif kind == proto.EXIT:
                    return
                elif kind == proto.ERROR:
                    raise Unavailable(f"attach ended by the monitor: {payload.decode()}")
        finally:
            for task in tasks:
                task.cancel()
            if ring is not None:
                ring.close()
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                sock.close()

    # -- port-forward ------------------------------------------------------------------

    async def port_forward(self, pod_sandbox_id: str, port: int, stream: DuplexStream) -> None:
        sandbox = self.rt.sandbox(pod_sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(f"pod {sandbox.id} is not ready")
        await portforward.forward(sandbox.info.get("netns") or None, port, stream)


#: A pseudo frame kind: acknowledge the ring up to here (the payload) once the output
#: read before it has been written to the client.
_ACK_DUE = -1


async def _ready(
    sock: socket.socket, decoder: proto.FrameDecoder
) -> tuple[RingReader | None, list[tuple[int, bytes]]]:
    """Read up to the monitor's first frame (READY), with the ring descriptor riding on it.

    asyncio's streams cannot receive descriptors: this first read is done by hand,
    and what follows READY in the same read is returned with it.
    """
    loop = asyncio.get_running_loop()
    ring: RingReader | None = None
    try:
        while True:
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 18, 1)
            except (BlockingIOError, InterruptedError):
                continue
            for fd in fds:
                if ring is None:
                    ring = RingReader(fd)
                else:
                    os.close(fd)
            if not data:
                raise Unavailable("attach: the monitor closed the connection")
            frames = decoder.receive_data(data)
            if frames:
                return ring, frames
    except BaseException:
        if ring is not None:
            ring.close()
        raise


def _kill_pid_file(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


async def _drain_fd(
    fd: int, out: OutputStream | None, *, close_fd: bool = True, closed: set[int] | None = None
) -> None:
    """Copy a non-blocking fd (pipe or pty master) to the client until EOF / EIO."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            except OSError:
                break  # EIO: the exec'd process and every slave fd are gone
            if not data:
                break
            if out is not None:
                await out.write(data)
    finally:
        loop.remove_reader(fd)
        if close_fd:
            with contextlib.suppress(OSError):
                os.close(fd)
            if closed is not None:
                closed.add(fd)
    if out is not None:
        await out.close()


async def _feed_fd(stdin: Any, fd: int, *, tty: bool) -> None:
    """Copy the client's stdin to a non-blocking fd; at its end, end the app's input."""
    loop = asyncio.get_running_loop()
    try:
        while data := await stdin.read(CHUNK):
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    writable = asyncio.Event()
                    loop.add_writer(fd, writable.set)
                    try:
                        await writable.wait()
                    finally:
                        loop.remove_writer(fd)
        if tty:
            os.write(fd, b"\x04")  # end of input on a terminal
    except OSError:
        pass
    finally:
        if not tty:
            with contextlib.suppress(OSError):
                os.close(fd)


async def _feed_when(started: asyncio.Event, stdin: Any, fd: int, *, tty: bool) -> None:
    await started.wait()
    await _feed_fd(stdin, fd, tty=tty)


async def _apply_resizes(queue: ResizeQueue, fd: int) -> None:
    async for size in queue:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


async def _stdin_frames(stdin: Any, writer: asyncio.StreamWriter, ended: asyncio.Event) -> None:
    try:
        while data := await stdin.read(CHUNK):
            writer.write(proto.encode(proto.STDIN, data))
            await writer.drain()
        writer.write(proto.encode(proto.STDIN_CLOSE))
        await writer.drain()
        ended.set()
    except (ConnectionError, OSError):
        pass


async def _linger_after(event: asyncio.Event, seconds: float) -> None:
    await event.wait()
    await asyncio.sleep(seconds)


async def _resize_frames(queue: ResizeQueue, writer: asyncio.StreamWriter) -> None:
    try:
        async for size in queue:
            writer.write(proto.encode_resize(size.height, size.width))
            await writer.drain()
    except (ConnectionError, OSError):
        pass


class StreamingFront:
    """The daemon's streaming server and the CRI RPCs that hand out its URLs."""

    def __init__(self, rt: Runtime, address: str, *, tls_cert: str = "", tls_key: str = "") -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"stream_address: {address!r} is not HOST:PORT")
        from cri.metrics import observe_streaming_session

        self.server = Server(
            ContainerStreamingRuntime(rt),
            address=host.strip("[]"),
            port=int(port),
            tls_cert_file=tls_cert or None,
            tls_key_file=tls_key or None,
            config=StreamingConfig(on_session=observe_streaming_session),
        )

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @staticmethod
    def _url(make: Any, request: Any) -> str:
        try:
            url: str = make(request)
        except streaming_errors.InvalidArgument as exc:
            raise InvalidArgument(exc.message) from None
        except streaming_errors.ResourceExhausted as exc:
            raise ResourceExhausted(exc.message) from None
        return url

    async def get_exec(self, request: api_pb2.ExecRequest) -> api_pb2.ExecResponse:
        url = self._url(self.server.get_exec, ExecRequest.from_message(request))
        return api_pb2.ExecResponse(url=url)

    async def get_attach(self, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
        url = self._url(self.server.get_attach, AttachRequest.from_message(request))
        return api_pb2.AttachResponse(url=url)

    async def get_port_forward(
        self, request: api_pb2.PortForwardRequest
    ) -> api_pb2.PortForwardResponse:
        url = self._url(self.server.get_port_forward, PortForwardRequest.from_message(request))
        return api_pb2.PortForwardResponse(url=url)
