"""Connecting to a port inside a pod's network namespace, and copying both ways.

A socket belongs to the network namespace of the thread that created it, for
its whole life.  So a short-lived thread enters the pod's namespace with
``setns(CLONE_NEWNET)``, creates and connects the socket, and exits; the
connected socket is then driven by asyncio in the daemon's own thread.  The
daemon's threads never change namespace, and there is no nsenter or socat
process per connection.  Host-network pods need no namespace switch at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable

from .runtime import DuplexStream

CLONE_NEWNET = 0x40000000

__all__ = ["CLONE_NEWNET", "dial", "forward", "pump", "setns"]


def _libc_setns() -> Callable[[int, int], None]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    func = libc.setns
    func.argtypes = [ctypes.c_int, ctypes.c_int]
    func.restype = ctypes.c_int

    def call(fd: int, nstype: int) -> None:
        if func(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return call


# os.setns arrived in Python 3.12; 3.11 goes through libc.
setns: Callable[[int, int], None] = getattr(os, "setns", None) or _libc_setns()


def _connect_in_netns(
    netns_path: str | None, host: str, port: int, timeout: float
) -> socket.socket:
    if netns_path is not None:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setblocking(False)
    return sock


async def dial(
    netns_path: str | None, port: int, *, host: str = "127.0.0.1", timeout: float = 10.0
) -> socket.socket:
    """A socket connected to ``host:port`` inside ``netns_path`` (None: this namespace)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def deliver(result: socket.socket | None, error: BaseException | None) -> None:
        if done.cancelled():
            if result is not None:
                result.close()
            return
        if error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def work() -> None:
        # This thread exits right after: its namespace change dies with it.
        try:
            sock = _connect_in_netns(netns_path, host, port, timeout)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, sock, None)

    threading.Thread(target=work, name=f"netns-dial-{port}", daemon=True).start()
    return await done


async def pump(sock: socket.socket, stream: DuplexStream, *, chunk: int = 256 * 1024) -> None:
    """Copy between ``sock`` and ``stream`` until both directions ended.

    The client's EOF shuts down our write side towards the pod (a half-close, so
    a server that answers after reading its request still gets to answer); the
    pod's EOF ends the stream towards the client.
    """
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(sock=sock, limit=chunk)

    async def to_pod() -> None:
        try:
            while data := await stream.read(chunk):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()

    async def to_client() -> None:
        try:
            while data := await reader.read(chunk):
                await stream.write(data)
        except (ConnectionError, OSError):
            pass

    up = loop.create_task(to_pod())
    try:
        await to_client()
    finally:
        # The pod closed (or the client vanished): nothing more can be delivered.
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await up
        writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await writer.wait_closed()


async def forward(
    netns_path: str | None,
    port: int,
    stream: DuplexStream,
    *,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> None:
    """What a Runtime's ``port_forward`` does: dial inside the namespace, then pump."""
    sock = await dial(netns_path, port, host=host, timeout=timeout)
    await pump(sock, stream)
