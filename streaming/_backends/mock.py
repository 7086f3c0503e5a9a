"""An in-memory NetworkStream for tests: reads from given chunks, records writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class MockStream:
    def __init__(self, chunks: Iterable[bytes] = (), *, eof: bool = True) -> None:
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        for chunk in chunks:
            self._chunks.put_nowait(chunk)
        if eof:
            self._chunks.put_nowait(b"")
        self.written = bytearray()
        #: Set on every write; tests wait on it instead of polling.
        self.wrote = asyncio.Event()
        self.eof_written = False
        self.closed = False

    def feed(self, data: bytes) -> None:
        """Make ``data`` readable; ``b""`` ends the stream."""
        self._chunks.put_nowait(data)

    async def read(self, max_bytes: int) -> bytes:
        if self.closed:
            return b""
        chunk = await self._chunks.get()
        if len(chunk) > max_bytes:
            self._chunks._queue.appendleft(chunk[max_bytes:])  # type: ignore[attr-defined]
            chunk = chunk[:max_bytes]
        if not chunk:
            self._chunks.put_nowait(b"")
        return chunk

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("mock stream closed")
        self.written += data
        self.wrote.set()

    async def write_eof(self) -> None:
        self.eof_written = True

    async def aclose(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return None
