"""NetworkStream over an asyncio StreamReader/StreamWriter pair."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


class AsyncioStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    async def read(self, max_bytes: int) -> bytes:
        if self._closed:
            return b""
        try:
            return await self._reader.read(max_bytes)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("stream is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def write_eof(self) -> None:
        if not self._closed and self._writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError, RuntimeError):
            # A peer that stopped reading must not hold the close forever.
            await asyncio.wait_for(self._writer.wait_closed(), 5)

    def get_extra_info(self, name: str) -> Any:
        return self._writer.get_extra_info(name)
