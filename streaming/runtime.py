"""The seam between the streaming server and whatever runs containers.

The server speaks the protocols and hands a :class:`Runtime` plain async streams;
the runtime never sees SPDY or WebSocket, and the protocol code never sees a
container (the kubelet's ``Runtime`` interface, in Python).  The CRI daemon's
adapter (``cri/streaming_runtime.py``) implements it over the OCI runtime and
iottymux.

Back-pressure is part of the contract: :meth:`OutputStream.write` returns only
when the transport has taken the bytes, so a client that stops reading stops
the runtime's writer, never an unbounded buffer.  Writers exist only for the
streams the client reads (stdout, stderr, a port-forward's data stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .remotecommand import TerminalSize

__all__ = [
    "DuplexStream",
    "InputStream",
    "OutputStream",
    "ResizeQueue",
    "Runtime",
    "Streams",
    "TerminalSize",
]


@runtime_checkable
class InputStream(Protocol):
    """Bytes from the client (stdin)."""

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes``; ``b""`` once the client closed its side."""
        ...


@runtime_checkable
class OutputStream(Protocol):
    """Bytes to the client (stdout or stderr)."""

    async def write(self, data: bytes) -> None:
        """Send ``data``; returns once the transport accepted it.

        Raises :class:`ConnectionError` when the client went away.
        """
        ...

    async def close(self) -> None:
        """Tell the client this stream ended (SPDY FIN); idempotent."""
        ...


@runtime_checkable
class DuplexStream(InputStream, OutputStream, Protocol):
    """A port-forward connection: ``read`` from the client, ``write`` to it."""


@dataclass(slots=True)
class Streams:
    """The client's side of an exec or attach, as the request enabled it."""

    stdin: InputStream | None
    stdout: OutputStream | None
    stderr: OutputStream | None
    tty: bool


class ResizeQueue:
    """Terminal sizes from the client, newest wins.

    The transport must never block on a runtime that is slow to apply sizes (the
    SPDY peer's reader would stall), so only the latest pending size is kept.
    Iterating ends when the client's resize stream ends.
    """

    def __init__(self) -> None:
        self._pending: TerminalSize | None = None
        self._changed = asyncio.Event()
        self._closed = False

    def put(self, size: TerminalSize) -> None:
        self._pending = size
        self._changed.set()

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def get(self) -> TerminalSize | None:
        """The next size, or None once closed and drained."""
        while self._pending is None:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        size, self._pending = self._pending, None
        return size

    def __aiter__(self) -> AsyncIterator[TerminalSize]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TerminalSize]:
        while (size := await self.get()) is not None:
            yield size


class Runtime(Protocol):
    """What the streaming server needs from a container runtime."""

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: Streams,
        tty: bool,
        resize_queue: ResizeQueue | None,
    ) -> int:
        """Run ``cmd`` in the container; return its exit code (0 to 255).

        A command killed by signal N reports 128+N, as containerd does.  Raise
        any exception for a failure that is not the command's own exit (the
        client then sees an InternalError status with the exception's text).
        """
        ...

    async def attach(
        self,
        container_id: str,
        streams: Streams,
        tty: bool,
        resize_queue: ResizeQueue | None,
    ) -> None:
        """Attach to the container's main process until it or the client ends."""
        ...

    async def port_forward(self, pod_sandbox_id: str, port: int, stream: DuplexStream) -> None:
        """Connect ``stream`` to ``port`` in the pod's network namespace.

        Return when both directions ended; when the client closes its side, shut
        down writing towards the pod rather than aborting the connection.
        """
        ...
