"""The Kubernetes WebSocket channel protocols, sans-IO, over the ``websockets`` package."""

from .connection import (
    BinaryMessage,
    ChannelClosed,
    ChannelConnection,
    ChannelData,
    CloseReceived,
    Event,
    ProtocolFailed,
)
from .handshake import Accept, Reject, accept_handshake, is_websocket_request

__all__ = [
    "Accept",
    "BinaryMessage",
    "ChannelClosed",
    "ChannelConnection",
    "ChannelData",
    "CloseReceived",
    "Event",
    "ProtocolFailed",
    "Reject",
    "accept_handshake",
    "is_websocket_request",
]
