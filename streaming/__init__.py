"""The streaming server for exec, attach and port-forward (SPDY/3.1 and WebSocket).

``Server`` hands out one-time URLs (``get_exec``/``get_attach``/
``get_port_forward``) and serves them against a ``Runtime``; ``spdy`` and
``websocket`` are the sans-IO codecs; ``remotecommand`` holds the Kubernetes
sub-protocols as pure functions; ``portforward`` dials inside a pod's network
namespace.  Nothing here imports ``cri`` or ``iottymux``.
"""

from .config import StreamingConfig
from .errors import InvalidArgument, ResourceExhausted, StreamingError
from .remotecommand import TerminalSize
from .requests import AttachRequest, ExecRequest, PortForwardRequest
from .runtime import DuplexStream, InputStream, OutputStream, ResizeQueue, Runtime, Streams
from .server import Server, TokenCache

__all__ = [
    "AttachRequest",
    "DuplexStream",
    "ExecRequest",
    "InputStream",
    "InvalidArgument",
    "OutputStream",
    "PortForwardRequest",
    "ResizeQueue",
    "ResourceExhausted",
    "Runtime",
    "Server",
    "StreamingConfig",
    "StreamingError",
    "Streams",
    "TerminalSize",
    "TokenCache",
]
