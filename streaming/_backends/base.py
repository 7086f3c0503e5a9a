"""The five-method stream interface every session runs over."""

from __future__ import annotations

from typing import Any, Protocol


class NetworkStream(Protocol):
    """A connected, ordered byte stream (TCP, TLS, or a tunnel inside WebSocket)."""

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Queue ``data`` and wait until the transport's buffer drained below its mark."""
        ...

    async def write_eof(self) -> None:
        """Half-close our direction, where the transport can; otherwise do nothing."""
        ...

    async def aclose(self) -> None:
        """Close both directions; idempotent."""
        ...

    def get_extra_info(self, name: str) -> Any:
        """Transport details (``"peername"``, ``"ssl_object"``…), or None."""
        ...
