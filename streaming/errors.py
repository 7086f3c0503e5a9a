"""Errors the streaming server raises to its CRI caller.

Each names its gRPC status in ``code`` (a string, so that this package needs no
gRPC import); the CRI adapter maps them onto its own error classes.
"""

from __future__ import annotations

from typing import ClassVar


class StreamingError(Exception):
    """Base class; raise a subclass."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        if type(self) is StreamingError:
            raise TypeError("raise a subclass of StreamingError")
        super().__init__(message)
        self.message = message


class InvalidArgument(StreamingError):
    code = "INVALID_ARGUMENT"


class ResourceExhausted(StreamingError):
    code = "RESOURCE_EXHAUSTED"
