"""The CRI streaming requests, as the server caches them behind a token.

Plain dataclasses mirroring ``runtime.v1`` ``ExecRequest``, ``AttachRequest`` and
``PortForwardRequest`` (same field names), so that ``streaming`` needs nothing
from ``cri``; ``from_message`` copies a protobuf message or any object with
those attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False

    @classmethod
    def from_message(cls, msg: Any) -> ExecRequest:
        return cls(msg.container_id, tuple(msg.cmd), msg.tty, msg.stdin, msg.stdout, msg.stderr)

    def validate(self) -> None:
        if not self.container_id:
            raise InvalidArgument("missing required container_id")
        if not self.cmd:
            raise InvalidArgument("missing required cmd")
        _validate_streams(self.tty, self.stdin, self.stdout, self.stderr)


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    stdin: bool = False
    tty: bool = False
    stdout: bool = False
    stderr: bool = False

    @classmethod
    def from_message(cls, msg: Any) -> AttachRequest:
        return cls(msg.container_id, msg.stdin, msg.tty, msg.stdout, msg.stderr)

    def validate(self) -> None:
        if not self.container_id:
            raise InvalidArgument("missing required container_id")
        _validate_streams(self.tty, self.stdin, self.stdout, self.stderr)


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    pod_sandbox_id: str
    port: tuple[int, ...] = ()

    @classmethod
    def from_message(cls, msg: Any) -> PortForwardRequest:
        return cls(msg.pod_sandbox_id, tuple(msg.port))

    def validate(self) -> None:
        if not self.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        for port in self.port:
            if not 1 <= port <= 0xFFFF:
                raise InvalidArgument(f"invalid port {port}")


def _validate_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        # A terminal has one output; the kubelet merges stderr into stdout.
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest
