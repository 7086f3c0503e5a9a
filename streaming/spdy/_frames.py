"""SPDY/3 frames: reading them off a buffer and writing them out.

Readers follow h11's contract: ``maybe_read_frame(buf)`` returns a frame, returns
``None`` for "need more bytes", or raises :class:`SpdyLocalProtocolError`.
Nothing here does I/O or knows about stream states; header blocks go through the
per-direction zlib contexts passed in (:class:`HeaderBlockDecoder` and
:class:`HeaderBlockEncoder`), because SPDY/3 compresses every block of a session
in one deflate stream per direction.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ._dictionary import HEADER_DICTIONARY
from ._errors import GoAwayStatus, RstStatus, SpdyLocalProtocolError

VERSION = 3
MAX_FRAME_LENGTH = (1 << 24) - 1
MAX_STREAM_ID = (1 << 31) - 1

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

# The Go peer (spdystream) refuses more than 1000 headers or 1 MiB in one field;
# a block that inflates past this is either hostile or useless to us.
MAX_HEADERS = 1000
MAX_HEADER_FIELD = 1 << 20
DEFAULT_MAX_HEADER_BLOCK = 2 << 20

# Names that are hop-by-hop in HTTP and therefore meaningless inside a SPDY stream.
FORBIDDEN_HEADER_NAMES = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"}
)

Headers = tuple[tuple[str, str], ...]

_HEADER = struct.Struct("!II")
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class SettingsId(enum.IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class SynStreamFrame:
    stream_id: int
    headers: Headers
    associated_stream_id: int = 0
    priority: int = 0
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReplyFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: RstStatus


@dataclass(frozen=True, slots=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    settings: tuple[Setting, ...]
    clear: bool = False


@dataclass(frozen=True, slots=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: GoAwayStatus = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class UnknownControlFrame:
    """A control frame of a type SPDY/3 does not define; the spec says to ignore it."""

    frame_type: int
    flags: int
    payload: bytes


Frame = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
    | UnknownControlFrame
)


# --- name/value blocks -------------------------------------------------------------


def encode_nv_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """Serialise headers as an uncompressed SPDY/3 name/value block.

    Repeated names are merged into one entry with NUL-separated values, because
    SPDY requires names to be unique within a block.
    """
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        if not name or name != name.lower():
            raise SpdyLocalProtocolError(f"header name {name!r} must be non-empty lowercase")
        if name in FORBIDDEN_HEADER_NAMES:
            raise SpdyLocalProtocolError(f"header {name!r} is not allowed in SPDY")
        if "\x00" in value:
            raise SpdyLocalProtocolError(f"header {name!r} value contains NUL")
        merged.setdefault(name, []).append(value)
    parts = [_U32.pack(len(merged))]
    for name, values in merged.items():
        try:
            raw_name = name.encode("ascii")
            raw_value = "\x00".join(values).encode("latin-1")
        except UnicodeEncodeError:
            raise SpdyLocalProtocolError(f"header {name!r} is not representable") from None
        parts += [_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value]
    return b"".join(parts)


def decode_nv_block(block: bytes, *, stream_id: int) -> Headers:
    """Parse an uncompressed name/value block; errors are stream errors."""

    def fail(msg: str) -> SpdyLocalProtocolError:
        return SpdyLocalProtocolError(msg, stream_id=stream_id)

    view = memoryview(block)
    if len(view) < 4:
        raise fail("header block shorter than its count")
    (count,) = _U32.unpack_from(view, 0)
    if count > MAX_HEADERS:
        raise fail(f"header block has {count} headers")
    pos = 4
    seen: set[str] = set()
    result: list[tuple[str, str]] = []
    for _ in range(count):
        fields: list[bytes] = []
        for _what in ("name", "value"):
            if pos + 4 > len(view):
                raise fail("header block truncated")
            (length,) = _U32.unpack_from(view, pos)
            pos += 4
            if length > MAX_HEADER_FIELD or pos + length > len(view):
                raise fail("header field length out of range")
            fields.append(bytes(view[pos : pos + length]))
            pos += length
        raw_name, raw_value = fields
        if not raw_name:
            raise fail("empty header name")
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise fail("non-ASCII header name") from None
        if name != name.lower():
            raise fail(f"header name {name!r} is not lowercase")
        if name in seen:
            raise fail(f"duplicate header {name!r}")
        if name in FORBIDDEN_HEADER_NAMES:
            raise fail(f"header {name!r} is not allowed in SPDY")
        seen.add(name)
        for value in raw_value.split(b"\x00"):
            result.append((name, value.decode("latin-1")))
    if pos != len(view):
        raise fail("trailing bytes after the header block")
    return tuple(result)


class HeaderBlockEncoder:
    """The outbound zlib stream of one session."""

    def __init__(self) -> None:
        # Level 9 and window 15/memlevel 9 are what Go uses; any settings decode fine,
        # these just keep our blocks the same size as a Go peer's.
        self._z = zlib.compressobj(
            9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=HEADER_DICTIONARY
        )

    def encode(self, headers: Sequence[tuple[str, str]]) -> bytes:
        block = encode_nv_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderBlockDecoder:
    """The inbound zlib stream of one session.

    Any failure here is a session error: once one block is not consumed exactly,
    the shared deflate state no longer matches the peer's.
    """

    def __init__(self, max_block_size: int = DEFAULT_MAX_HEADER_BLOCK) -> None:
        self._z = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._max = max_block_size

    def decode(self, compressed: bytes, *, stream_id: int) -> Headers:
        try:
            block = self._z.decompress(compressed, self._max + 1)
        except zlib.error as exc:
            raise SpdyLocalProtocolError(f"header block does not inflate: {exc}") from None
        if self._z.unconsumed_tail or len(block) > self._max:
            raise SpdyLocalProtocolError("header block inflates past the limit")
        if self._z.unused_data or self._z.eof:
            raise SpdyLocalProtocolError("peer ended its header compression stream")
        return decode_nv_block(block, stream_id=stream_id)


# --- reading ----------------------------------------------------------------------


def _stream_id(raw: int, frame: str) -> int:
    stream_id = raw & MAX_STREAM_ID
    if stream_id == 0:
        raise SpdyLocalProtocolError(f"{frame} with stream id 0")
    return stream_id


def maybe_read_frame(
    buf: bytearray, decoder: HeaderBlockDecoder, *, max_frame_length: int = MAX_FRAME_LENGTH
) -> Frame | None:
    """Take one whole frame off the front of ``buf``, or return None to ask for more."""
    if len(buf) < 8:
        return None
    first, second = _HEADER.unpack_from(buf, 0)
    flags = second >> 24
    length = second & 0xFFFFFF
    if length > max_frame_length:
        raise SpdyLocalProtocolError(
            f"frame of {length} bytes is over the {max_frame_length}-byte limit"
        )
    control = bool(first & 0x80000000)
    # Judge the header before waiting for the payload, so garbage fails at once.
    if control:
        version = (first >> 16) & 0x7FFF
        if version != VERSION:
            raise SpdyLocalProtocolError(f"control frame of SPDY version {version}")
    else:
        _stream_id(first, "DATA frame")
        if flags & ~FLAG_FIN:
            raise SpdyLocalProtocolError(f"DATA frame with unknown flags {flags:#x}")
    if len(buf) < 8 + length:
        return None
    payload = bytes(buf[8 : 8 + length])
    del buf[: 8 + length]
    if not control:
        return DataFrame(first, payload, bool(flags & FLAG_FIN))
    return _parse_control(first & 0xFFFF, flags, payload, decoder)


def _parse_control(
    frame_type: int, flags: int, payload: bytes, decoder: HeaderBlockDecoder
) -> Frame:
    n = len(payload)
    if frame_type == FrameType.SYN_STREAM:
        if n < 10:
            raise SpdyLocalProtocolError("SYN_STREAM shorter than 10 bytes")
        if flags & ~(FLAG_FIN | FLAG_UNIDIRECTIONAL):
            raise SpdyLocalProtocolError(f"SYN_STREAM with unknown flags {flags:#x}")
        raw_id, raw_assoc = _TWO_U32.unpack_from(payload, 0)
        stream_id = _stream_id(raw_id, "SYN_STREAM")
        headers = decoder.decode(payload[10:], stream_id=stream_id)
        return SynStreamFrame(
            stream_id,
            headers,
            associated_stream_id=raw_assoc & MAX_STREAM_ID,
            priority=payload[8] >> 5,
            slot=payload[9],
            fin=bool(flags & FLAG_FIN),
            unidirectional=bool(flags & FLAG_UNIDIRECTIONAL),
        )
    if frame_type in (FrameType.SYN_REPLY, FrameType.HEADERS):
        name = FrameType(frame_type).name
        if n < 4:
            raise SpdyLocalProtocolError(f"{name} shorter than 4 bytes")
        if flags & ~FLAG_FIN:
            raise SpdyLocalProtocolError(f"{name} with unknown flags {flags:#x}")
        stream_id = _stream_id(_U32.unpack_from(payload, 0)[0], name)
        headers = decoder.decode(payload[4:], stream_id=stream_id)
        cls = SynReplyFrame if frame_type == FrameType.SYN_REPLY else HeadersFrame
        return cls(stream_id, headers, bool(flags & FLAG_FIN))
    if frame_type == FrameType.RST_STREAM:
        _fixed(payload, flags, 8, "RST_STREAM")
        raw_id, status = _TWO_U32.unpack(payload)
        stream_id = _stream_id(raw_id, "RST_STREAM")
        try:
            return RstStreamFrame(stream_id, RstStatus(status))
        except ValueError:
            raise SpdyLocalProtocolError(f"RST_STREAM with status {status}") from None
    if frame_type == FrameType.SETTINGS:
        if flags & ~FLAG_SETTINGS_CLEAR:
            raise SpdyLocalProtocolError(f"SETTINGS with unknown flags {flags:#x}")
        if n < 4:
            raise SpdyLocalProtocolError("SETTINGS shorter than 4 bytes")
        (count,) = _U32.unpack_from(payload, 0)
        if n != 4 + 8 * count:
            raise SpdyLocalProtocolError(f"SETTINGS count {count} does not match length {n}")
        settings = []
        for i in range(count):
            head, value = _TWO_U32.unpack_from(payload, 4 + 8 * i)
            settings.append(Setting(head & 0xFFFFFF, value, head >> 24))
        return SettingsFrame(tuple(settings), bool(flags & FLAG_SETTINGS_CLEAR))
    if frame_type == FrameType.PING:
        _fixed(payload, flags, 4, "PING")
        return PingFrame(_U32.unpack(payload)[0])
    if frame_type == FrameType.GOAWAY:
        _fixed(payload, flags, 8, "GOAWAY")
        last, status = _TWO_U32.unpack(payload)
        try:
            return GoAwayFrame(last & MAX_STREAM_ID, GoAwayStatus(status))
        except ValueError:
            raise SpdyLocalProtocolError(f"GOAWAY with status {status}") from None
    if frame_type == FrameType.WINDOW_UPDATE:
        _fixed(payload, flags, 8, "WINDOW_UPDATE")
        raw_id, delta = _TWO_U32.unpack(payload)
        return WindowUpdateFrame(raw_id & MAX_STREAM_ID, delta & 0x7FFFFFFF)
    return UnknownControlFrame(frame_type, flags, payload)


def _fixed(payload: bytes, flags: int, length: int, name: str) -> None:
    if len(payload) != length:
        raise SpdyLocalProtocolError(f"{name} of length {len(payload)}, expected {length}")
    if flags:
        raise SpdyLocalProtocolError(f"{name} with flags {flags:#x}")


# --- writing ----------------------------------------------------------------------


def _control(frame_type: FrameType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise SpdyLocalProtocolError(f"{frame_type.name} payload too large")
    return (
        _HEADER.pack(0x80000000 | (VERSION << 16) | frame_type, (flags << 24) | len(payload))
        + payload
    )


def write_frame(frame: Frame, encoder: HeaderBlockEncoder) -> bytes:
    """Serialise one frame (compressing its header block, if any, with ``encoder``)."""
    match frame:
        case DataFrame(stream_id, data, fin):
            if len(data) > MAX_FRAME_LENGTH:
                raise SpdyLocalProtocolError("DATA payload too large")
            return _HEADER.pack(stream_id, (FLAG_FIN if fin else 0) << 24 | len(data)) + data
        case SynStreamFrame():
            flags = (FLAG_FIN if frame.fin else 0) | (
                FLAG_UNIDIRECTIONAL if frame.unidirectional else 0
            )
            head = _TWO_U32.pack(frame.stream_id, frame.associated_stream_id) + bytes(
                [(frame.priority & 7) << 5, frame.slot]
            )
            return _control(FrameType.SYN_STREAM, flags, head + encoder.encode(frame.headers))
        case SynReplyFrame(stream_id, headers, fin):
            payload = _U32.pack(stream_id) + encoder.encode(headers)
            return _control(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, payload)
        case HeadersFrame(stream_id, headers, fin):
            payload = _U32.pack(stream_id) + encoder.encode(headers)
            return _control(FrameType.HEADERS, FLAG_FIN if fin else 0, payload)
        case RstStreamFrame(stream_id, status):
            return _control(FrameType.RST_STREAM, 0, _TWO_U32.pack(stream_id, status))
        case SettingsFrame(settings, clear):
            body = b"".join(_TWO_U32.pack((s.flags << 24) | s.id, s.value) for s in settings)
            payload = _U32.pack(len(settings)) + body
            return _control(FrameType.SETTINGS, FLAG_SETTINGS_CLEAR if clear else 0, payload)
        case PingFrame(ping_id):
            return _control(FrameType.PING, 0, _U32.pack(ping_id))
        case GoAwayFrame(last, status):
            return _control(FrameType.GOAWAY, 0, _TWO_U32.pack(last, status))
        case WindowUpdateFrame(stream_id, delta):
            return _control(FrameType.WINDOW_UPDATE, 0, _TWO_U32.pack(stream_id, delta))
        case UnknownControlFrame(frame_type, flags, payload):
            first = 0x80000000 | (VERSION << 16) | frame_type
            return _HEADER.pack(first, (flags << 24) | len(payload)) + payload
    raise TypeError(f"not a SPDY frame: {frame!r}")
