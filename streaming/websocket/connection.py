"""The Kubernetes channel protocol over the ``websockets`` package's sans-IO server.

``websockets.server.ServerProtocol`` does the RFC 6455 work (masking, control
frames, pong replies, the closing handshake); this layer turns whole messages
into channel events and back, for the binary (``channel.k8s.io``,
``v4``/``v5.channel.k8s.io``) and base64 text (``*base64.channel.k8s.io``)
variants, and passes raw binary messages through for the SPDY tunnel.
"""

from __future__ import annotations

from dataclasses import dataclass

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import CLOSED, OPEN, State
from websockets.server import ServerProtocol

from .. import remotecommand as rc

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """v5 CLOSE signal: the client will send nothing more on ``channel``."""

    channel: int


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A whole binary message, in tunnel mode (no channel byte)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailed:
    """The peer broke RFC 6455 or the channel framing; a Close is queued."""

    reason: str


Event = ChannelData | ChannelClosed | BinaryMessage | CloseReceived | ProtocolFailed


class ChannelConnection:
    """One upgraded WebSocket connection speaking a k8s channel subprotocol.

    ``subprotocol`` is the negotiated name; ``tunnel=True`` is for
    ``SPDY/3.1+portforward.k8s.io``, where messages are opaque byte chunks.
    """

    def __init__(
        self, subprotocol: str, *, tunnel: bool = False, max_message: int = DEFAULT_MAX_MESSAGE
    ) -> None:
        self.subprotocol = subprotocol
        self.tunnel = tunnel
        self.base64 = not tunnel and rc.is_base64(subprotocol)
        self.close_signal = not tunnel and subprotocol == rc.V5
        self._ws = ServerProtocol(state=OPEN, max_size=max_message)
        self._fragments: list[bytes] = []
        self._failed = False

    @property
    def state(self) -> State:
        return self._ws.state

    @property
    def closed(self) -> bool:
        return self._ws.state is CLOSED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the transport; ``b""`` means EOF."""
        if data:
            self._ws.receive_data(data)
        else:
            self._ws.receive_eof()

    def events(self) -> list[Event]:
        out: list[Event] = []
        for frame in self._ws.events_received():
            if not isinstance(frame, Frame):
                continue
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._fragments.append(bytes(frame.data))
                if not frame.fin:
                    continue
                payload = b"".join(self._fragments)
                self._fragments.clear()
                event = self._message(payload)
                if event is not None:
                    out.append(event)
            elif frame.opcode is Opcode.CLOSE:
                rcvd = self._ws.close_rcvd
                code = int(rcvd.code) if rcvd is not None else int(CloseCode.NO_STATUS_RCVD)
                out.append(CloseReceived(code, rcvd.reason if rcvd is not None else ""))
        if self._ws.parser_exc is not None and not self._failed:
            self._failed = True
            out.append(ProtocolFailed(str(self._ws.parser_exc)))
        return out

    def _message(self, payload: bytes) -> Event | None:
        if self.tunnel:
            return BinaryMessage(payload) if payload else None
        try:
            decoded = rc.decode_channel_message(payload, base64_mode=self.base64)
            if decoded is None:
                return None
            channel, data = decoded
            if channel == rc.Channel.CLOSE and self.close_signal:
                return ChannelClosed(rc.decode_close_signal(data))
        except rc.ChannelProtocolError as exc:
            self.fail(str(exc))
            self._failed = True
            return ProtocolFailed(str(exc))
        return ChannelData(channel, data)

    def send(self, channel: int, data: bytes) -> None:
        """One message on ``channel`` (binary, or text for base64 protocols)."""
        payload = rc.encode_channel_message(channel, data, base64_mode=self.base64)
        if self.base64:
            self._ws.send_text(payload)
        else:
            self._ws.send_binary(payload)

    def send_binary(self, data: bytes) -> None:
        self._ws.send_binary(data)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (no-op if it already started)."""
        if self._ws.state is OPEN:
            self._ws.send_close(code, reason)

    def fail(self, reason: str) -> None:
        if self._ws.state is OPEN:
            self._ws.fail(CloseCode.PROTOCOL_ERROR, reason)

    def data_to_send(self) -> list[bytes]:
        """Chunks to write; an empty chunk means "now close the transport"."""
        return self._ws.data_to_send()
