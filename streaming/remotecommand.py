"""The Kubernetes streaming sub-protocols, as pure functions over bytes and strings.

Covers protocol negotiation (``X-Stream-Protocol-Version`` and WebSocket
subprotocols), the remotecommand versions ``channel.k8s.io`` … ``v5``, the
WebSocket channel framing (binary and base64), the status written on the error
stream, the resize JSON, and the port-forward stream headers and port prefix.
Nothing here does I/O; the sessions in this package call these functions.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# --- protocol names ---------------------------------------------------------------

V1 = "channel.k8s.io"
V2 = "v2.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
BASE64_V1 = "base64.channel.k8s.io"
BASE64_V4 = "v4.base64.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
SPDY_TUNNEL_PREFIX = "SPDY/3.1+"
PORT_FORWARD_TUNNEL = SPDY_TUNNEL_PREFIX + PORT_FORWARD

#: SPDY remotecommand protocols we serve, best first (the client's order decides).
SPDY_REMOTECOMMAND_PROTOCOLS = (V5, V4, V3, V2, V1)
SPDY_PORT_FORWARD_PROTOCOLS = (PORT_FORWARD,)
#: WebSocket subprotocols; "" is what a client that offers none gets.
WS_REMOTECOMMAND_PROTOCOLS = (V5, V4, BASE64_V4, V1, BASE64_V1, "")
WS_PORT_FORWARD_PROTOCOLS = (PORT_FORWARD_TUNNEL, V4, BASE64_V4, "")


class Version(enum.IntEnum):
    """The remotecommand protocol generation a session speaks."""

    V1 = 1
    V2 = 2
    V3 = 3
    V4 = 4
    V5 = 5

    @property
    def has_resize(self) -> bool:
        return self >= Version.V3

    @property
    def json_status(self) -> bool:
        return self >= Version.V4

    @property
    def has_close_channel(self) -> bool:
        return self is Version.V5


_VERSIONS = {
    V1: Version.V1,
    BASE64_V1: Version.V1,
    "": Version.V1,
    V2: Version.V2,
    V3: Version.V3,
    V4: Version.V4,
    BASE64_V4: Version.V4,
    V5: Version.V5,
}


def version_of(protocol: str) -> Version:
    """The remotecommand generation of a negotiated protocol name."""
    return _VERSIONS[protocol]


def is_base64(protocol: str) -> bool:
    return protocol in (BASE64_V1, BASE64_V4)


def split_protocol_values(values: Iterable[str]) -> list[str]:
    """Header values (repeated lines and/or comma lists) as a list of tokens."""
    return [token.strip() for value in values for token in value.split(",") if token.strip()]


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first protocol the client listed that we support (client preference wins)."""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


# --- WebSocket channels -------------------------------------------------------------


class Channel(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    ERROR = 3
    RESIZE = 4
    CLOSE = 255


class ChannelProtocolError(ValueError):
    """A message that breaks the channel framing (the connection is closed)."""


def encode_channel_message(channel: int, data: bytes, *, base64_mode: bool) -> bytes:
    """Payload of one WebSocket message on ``channel``.

    Binary protocols prefix the raw byte; base64 ones (sent as text frames) prefix
    the ASCII digit and base64-encode the data.
    """
    if base64_mode:
        return bytes([0x30 + channel]) + base64.b64encode(data)
    return bytes([channel]) + data


def decode_channel_message(payload: bytes, *, base64_mode: bool) -> tuple[int, bytes] | None:
    """``(channel, data)`` of a received message, or None for an empty message."""
    if not payload:
        return None
    if not base64_mode:
        return payload[0], payload[1:]
    channel = payload[0] - 0x30
    if not 0 <= channel <= 9:
        raise ChannelProtocolError(f"base64 message on channel byte {payload[0]:#x}")
    try:
        return channel, base64.b64decode(payload[1:], validate=True)
    except binascii.Error as exc:
        raise ChannelProtocolError(f"bad base64 payload: {exc}") from None


def decode_close_signal(data: bytes) -> int:
    """The channel a v5 CLOSE message (after its 255 byte) closes."""
    if len(data) != 1:
        raise ChannelProtocolError(f"CLOSE signal of {len(data)} bytes, expected 1")
    return data[0]


def encode_close_signal(channel: int) -> bytes:
    return bytes([Channel.CLOSE, channel])


# --- status on the error stream -----------------------------------------------------

_COMPACT = (",", ":")


def status_success() -> bytes:
    """v4+ success.  ``metadata`` kept for clients that decode a full metav1.Status."""
    return json.dumps({"metadata": {}, "status": "Success"}, separators=_COMPACT).encode()


def status_exit_code(code: int, detail: str) -> bytes:
    """v4+ status for a command that exited with ``code`` (1 to 255)."""
    if not 1 <= code <= 255:
        raise ValueError(f"exit code {code} is not in 1..255")
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {detail}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        },
        separators=_COMPACT,
    ).encode()


def status_internal_error(message: str) -> bytes:
    """v4+ status for a failure that is not the command's own exit code."""
    return json.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"Internal error occurred: {message}",
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        },
        separators=_COMPACT,
    ).encode()


def exit_detail(cmd: Sequence[str], code: int) -> str:
    return f"error executing command [{' '.join(cmd)}], exit code {code}"


def error_stream_payload(
    version: Version, exit_code: int | None, *, cmd: Sequence[str] = (), error: str | None = None
) -> bytes:
    """What to write on the error stream at the end of a session.

    ``exit_code`` None with ``error`` None means an attach that ended well; an
    ``error`` wins over the exit code.  Before v4 success writes nothing and a
    failure writes its message as text.
    """
    if error is not None:
        if version.json_status:
            return status_internal_error(error)
        return error.encode()
    if not exit_code:
        return status_success() if version.json_status else b""
    detail = exit_detail(cmd, exit_code)
    if version.json_status:
        return status_exit_code(exit_code, detail)
    return f"command terminated with non-zero exit code: {detail}".encode()


@dataclass(frozen=True, slots=True)
class Status:
    """A decoded error-stream status, as a client reads it."""

    success: bool
    exit_code: int | None = None
    message: str = ""
    reason: str = ""


def parse_status(payload: bytes, version: Version = Version.V4) -> Status:
    """Decode what a server wrote on the error stream (client side, and tests)."""
    if not payload:
        return Status(True, 0)
    if not version.json_status:
        return Status(False, None, payload.decode(errors="replace"))
    doc = json.loads(payload)
    if doc.get("status") == "Success":
        return Status(True, 0)
    if doc.get("status") != "Failure":
        raise ValueError("error stream protocol error: unknown error")
    message = str(doc.get("message", ""))
    reason = str(doc.get("reason", ""))
    if reason == "NonZeroExitCode":
        for cause in (doc.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                code = int(cause["message"])
                if not 0 <= code <= 255:
                    raise ValueError(f"exit code {code} out of range")
                return Status(False, code, message, reason)
        raise ValueError("NonZeroExitCode status without an ExitCode cause")
    return Status(False, None, message, reason)


# --- resize -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalSize:
    width: int
    height: int


def encode_resize(size: TerminalSize) -> bytes:
    """One resize event as a Go json.Encoder writes it (newline-terminated)."""
    return b'{"Width":%d,"Height":%d}\n' % (size.width, size.height)


class ResizeDecoder:
    """Incremental decoder of the concatenated resize JSON objects.

    Like the Go server, it stops for good at the first undecodable input (and
    reports that through :attr:`failed`), and skips events with a zero side.
    """

    def __init__(self, max_buffer: int = 4096) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._decoder = json.JSONDecoder()
        self._max = max_buffer
        self.failed = False

    def feed(self, data: bytes) -> list[TerminalSize]:
        if self.failed:
            return []
        try:
            self._buf += self._utf8.decode(data)
        except UnicodeDecodeError:
            self.failed = True
            return []
        sizes: list[TerminalSize] = []
        while not self.failed:
            self._buf = self._buf.lstrip()
            if not self._buf:
                break
            try:
                obj, end = self._decoder.raw_decode(self._buf)
            except json.JSONDecodeError as exc:
                if len(self._buf) > self._max or not _truncated(self._buf, exc):
                    self.failed = True
                break
            self._buf = self._buf[end:]
            size = _size_from(obj)
            if size is None:
                self.failed = True
            elif size.width and size.height:
                sizes.append(size)
        return sizes


def _truncated(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether a parse failure is only the input ending early (more may come)."""
    if not text.startswith("{"):
        return False
    return exc.pos >= len(text) or exc.msg.startswith("Unterminated string")


def _size_from(obj: object) -> TerminalSize | None:
    if not isinstance(obj, dict):
        return None
    # Go's encoding/json matches field names case-insensitively.
    fields = {str(k).lower(): v for k, v in obj.items()}
    width, height = fields.get("width", 0), fields.get("height", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
        return None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        return None
    return TerminalSize(width, height)


# --- port-forward -------------------------------------------------------------------

STREAM_TYPE_HEADER = "streamtype"
PORT_HEADER = "port"
REQUEST_ID_HEADER = "requestid"


class StreamType(enum.Enum):
    ERROR = "error"
    DATA = "data"
    STDIN = "stdin"
    STDOUT = "stdout"
    STDERR = "stderr"
    RESIZE = "resize"


class PortForwardHeaderError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PortForwardStreamHeaders:
    stream_type: StreamType
    port: int
    request_id: str | None


def parse_port_forward_headers(
    headers: Iterable[tuple[str, str]],
) -> PortForwardStreamHeaders:
    """Validate the headers of a port-forward SPDY stream (before replying to it)."""
    values: dict[str, str] = {}
    for name, value in headers:
        values.setdefault(name, value)
    raw_type = values.get(STREAM_TYPE_HEADER)
    if raw_type not in (StreamType.DATA.value, StreamType.ERROR.value):
        raise PortForwardHeaderError(f"invalid stream type {raw_type!r}")
    raw_port = values.get(PORT_HEADER)
    if raw_port is None:
        raise PortForwardHeaderError("missing port header")
    if not raw_port.isdigit() or not 1 <= int(raw_port) <= 0xFFFF:
        raise PortForwardHeaderError(f"invalid port {raw_port!r}")
    return PortForwardStreamHeaders(
        StreamType(raw_type), int(raw_port), values.get(REQUEST_ID_HEADER)
    )


def port_forward_pair_key(headers: PortForwardStreamHeaders, stream_id: int) -> str:
    """The key that pairs a data stream with its error stream.

    Clients without ``requestid`` create error then data back to back, so the
    data stream's id is the error stream's plus two.
    """
    if headers.request_id is not None:
        return headers.request_id
    if headers.stream_type is StreamType.DATA:
        return str(stream_id - 2)
    return str(stream_id)


def port_forward_headers(
    stream_type: StreamType, port: int, request_id: int
) -> list[tuple[str, str]]:
    return [
        (STREAM_TYPE_HEADER, stream_type.value),
        (PORT_HEADER, str(port)),
        (REQUEST_ID_HEADER, str(request_id)),
    ]


_PORT_PREFIX = struct.Struct("<H")


def encode_port_prefix(port: int) -> bytes:
    """The first message on a WebSocket port-forward channel: the port, uint16 LE."""
    return _PORT_PREFIX.pack(port)


def decode_port_prefix(data: bytes) -> int:
    if len(data) != 2:
        raise ValueError(f"port prefix of {len(data)} bytes")
    return int(_PORT_PREFIX.unpack(data)[0])


def port_forward_error(port: int, pod: str, error: str) -> bytes:
    return f"error forwarding port {port} to pod {pod}, uid : {error}".encode()
