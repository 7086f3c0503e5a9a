"""The byte-stream seam under the protocol sessions (after httpcore's backends)."""

from .asyncio import AsyncioStream
from .base import NetworkStream
from .mock import MockStream

__all__ = ["AsyncioStream", "MockStream", "NetworkStream"]
