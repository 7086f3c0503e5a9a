"""Domain errors of the CRI service and their one mapping onto gRPC status codes.

Handlers and the code below them raise only these classes (or let an unexpected
exception escape, which becomes UNKNOWN); the conversion to a gRPC status happens
at one boundary, :func:`to_grpc_status`, in the spirit of containerd's
``errgrpc.ToGRPC``.  Messages name the offending field (``image.image: ...``) so
that a kubelet or crictl user can tell what to fix.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import grpc

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RktletError",
    "Unavailable",
    "Unimplemented",
    "grpc_errors",
    "to_grpc_status",
]


class RktletError(Exception):
    """Base of all domain errors; not raised directly (it has no meaningful code)."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        if type(self) is RktletError:
            raise TypeError("raise a subclass of RktletError, not RktletError itself")
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(RktletError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RktletError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(RktletError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(RktletError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(RktletError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(RktletError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class PermissionDenied(RktletError):
    """Credentials missing or refused (a registry's 401/403)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RktletError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(RktletError):
    """An operation ran past the timeout the caller gave (ExecSync)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


def to_grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (code, message) pair a gRPC handler should abort with.

    Domain errors keep their own code and message.  Anything else is a bug or an
    unforeseen condition: it becomes UNKNOWN, with the exception type in the message
    so that the report is useful without exposing a traceback to the client.
    """
    if isinstance(exc, RktletError):
        return exc.grpc_code, bounded_message(exc.message)
    node = node_condition(exc)
    if node is not None:
        return node.grpc_code, bounded_message(node.message)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, bounded_message(str(exc) or "not implemented")
    return grpc.StatusCode.UNKNOWN, bounded_message(f"{type(exc).__name__}: {exc}")


def node_condition(exc: BaseException) -> RktletError | None:
    """A full or read-only disk under the daemon: the node's condition, not a bug.

    The kubelet retries UNAVAILABLE and RESOURCE_EXHAUSTED; the message says what to fix.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left on device: {exc.filename or exc}")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return Unavailable(f"read-only file system: {exc.filename or exc}")
    return None


#: Status messages travel in HTTP/2 headers; clients refuse headers over 8 KiB
#: (and report RESOURCE_EXHAUSTED instead of the real error).
MAX_MESSAGE = 2048


def bounded_message(message: str) -> str:
    """``message``, cut to :data:`MAX_MESSAGE` characters if a client echoed something big."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[: MAX_MESSAGE - 40]}... ({len(message) - MAX_MESSAGE + 40} more characters)"


_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def grpc_errors(
    method: Callable[[_Servicer, _Request, Any], Awaitable[_Response]],
) -> Callable[[_Servicer, _Request, Any], Awaitable[_Response]]:
    """Decorate an async grpc.aio handler so that domain errors abort the call properly.

    ``context.abort`` raises to end the RPC, so the wrapper never returns normally
    after an error.
    """

    @functools.wraps(method)
    async def wrapper(self: _Servicer, request: _Request, context: Any) -> _Response:
        try:
            return await method(self, request, context)
        except Exception as exc:
            # grpc.aio signals an abort with its own exception: let it through untouched.
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code, message = to_grpc_status(exc)
            await context.abort(code, message)
            raise AssertionError("context.abort returned") from exc

    return wrapper
