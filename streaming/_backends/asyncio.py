"""NetworkStream over an asyncio StreamReader/StreamWriter pair."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

#: A client that takes nothing of what is sent for this long is gone: a stuck
#: kubectl must not hold a session (and the app's attach slot) for hours.
WRITE_STALL_TIMEOUT = 30.0


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
        try:
            await asyncio.wait_for(self._writer.drain(), WRITE_STALL_TIMEOUT)
        except TimeoutError:
            self._abort()
            raise ConnectionResetError(
                f"the client took nothing for {WRITE_STALL_TIMEOUT:g}s"
            ) from None

    async def write_eof(self) -> None:
        if not self._closed and self._writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            # A peer that stopped reading must not hold the close forever.
            await asyncio.wait_for(self._writer.wait_closed(), 5)
        except TimeoutError:
            self._abort()  # close() alone keeps the socket until its buffer is read
        except (OSError, asyncio.CancelledError, RuntimeError):
            pass

    def _abort(self) -> None:
        self._closed = True
        transport = self._writer.transport
        if transport is not None:
            transport.abort()

    def get_extra_info(self, name: str) -> Any:
        return self._writer.get_extra_info(name)
