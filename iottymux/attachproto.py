"""The attach protocol: framed messages on an app's attach socket, without I/O.

Each app has one attach endpoint, a unix stream socket (mode 0600) at
``<run-dir>/apps/<app>/attach.sock``; ``endpoints`` beside it is a JSON file
naming it.  Both directions carry frames::

    +--------+------------------------+-------------------+
    | kind   | length (uint32, BE)    | payload           |
    | 1 byte | 4 bytes                | ``length`` bytes  |
    +--------+------------------------+-------------------+

Client to monitor:

``HELLO`` (1)
    Must be first.  JSON options: ``stdin``, ``stdout``, ``stderr`` (bools,
    which streams this attacher wants; default all), ``replay`` (bool: first
    send the app's recent output, kept in a ring buffer) and ``ring`` (bool: the
    attacher can read output from the shared output ring, see ``RING``).
``STDIN`` (2)
    Bytes for the app's stdin.  Messages from all attachers reach the app in
    arrival order, each written whole before the next.
``RESIZE`` (3)
    ``rows`` and ``cols``, two uint16 (big-endian); applied to a tty app's
    terminal with ``TIOCSWINSZ`` (the app gets ``SIGWINCH``).
``STDIN_CLOSE`` (4)
    This attacher's stdin ended.  For an app created with ``stdin_once`` the
    first such end (or the disconnect of an attacher that took stdin) closes
    the app's stdin (on a tty: sends the EOF character).  Otherwise the app's
    stdin stays open for the next attacher.
``DETACH`` (5)
    This attacher is leaving on purpose (the user's detach keys): its
    disconnect does not count as the end of its stdin, even for ``stdin_once``.
``ACK`` (6)
    Ring attachers only: ``offset`` (uint64, big-endian): the attacher has read
    the ring up to there (at most the ring's write end).  The monitor measures
    how far the attacher is behind by it; an attacher sends one after each read
    of the ring, and at least one after each ``RING`` it got.

Monitor to client:

``READY`` (16)
    Answer to ``HELLO``: JSON ``tty``, ``stdin`` (whether the app reads stdin
    from attachers), ``state``.  When the attacher asked for ``ring`` and the
    monitor offers one: ``ring`` (``size``, and ``offset``, where this attacher's
    output starts), and the frame's first byte carries a read-only descriptor of
    the ring (``SCM_RIGHTS``); the attacher reads the ring as
    :mod:`iottymux.outring` describes.  Without ``ring`` in ``READY``, output
    comes in ``STDOUT``/``STDERR`` frames on the socket, as for any attacher.
``STDOUT`` (17), ``STDERR`` (18)
    Output of the app (a tty app's output is ``STDOUT``).
``EXIT`` (19)
    The app has exited: JSON ``exit_code``, ``signal``, ``reason``.  The monitor
    closes the connection after it.
``ERROR`` (20)
    UTF-8 reason; the monitor closes the connection after it, for example when
    this attacher fell more than its queue size behind (``overflow: ...``).
``RING`` (21)
    Ring attachers only: ``offset`` (uint64, big-endian): the ring holds output
    for this attacher at least up to there (``STDOUT``/``STDERR`` frames, all of
    them: the attacher skips streams it did not ask for).  It is sent when the
    attacher has acknowledged everything it was told and there is more; an
    attacher that is behind reads on to the ring's write end without waiting
    for one.  Frames on the socket keep their order with the ring's, so an
    ``EXIT`` comes after the ``RING`` that ends the output (an attacher that read
    ahead may get a ``RING`` for output it has already read, and skips it).

A frame's payload is at most :data:`MAX_PAYLOAD` bytes; larger frames are a
protocol error.  :class:`FrameDecoder` is fed bytes and returns frames; the
``encode_*`` functions build bytes.
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

HELLO: Final = 1
STDIN: Final = 2
RESIZE: Final = 3
STDIN_CLOSE: Final = 4
DETACH: Final = 5
ACK: Final = 6
READY: Final = 16
STDOUT: Final = 17
STDERR: Final = 18
EXIT: Final = 19
ERROR: Final = 20
RING: Final = 21

CLIENT_KINDS: Final = frozenset({HELLO, STDIN, RESIZE, STDIN_CLOSE, DETACH, ACK})
SERVER_KINDS: Final = frozenset({READY, STDOUT, STDERR, EXIT, ERROR, RING})

HEADER: Final = struct.Struct(">BI")
HEADER_SIZE: Final = HEADER.size
MAX_PAYLOAD: Final = 1 << 20
_WINSIZE: Final = struct.Struct(">HH")
_OFFSET: Final = struct.Struct(">Q")


class AttachProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


def header(kind: int, length: int) -> bytes:
    return HEADER.pack(kind, length)


def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: int, body: dict[str, Any]) -> bytes:
    return encode(kind, json.dumps(body, separators=(",", ":")).encode())


def encode_hello(
    *,
    stdin: bool = True,
    stdout: bool = True,
    stderr: bool = True,
    replay: bool = False,
    ring: bool = False,
) -> bytes:
    options = {"stdin": stdin, "stdout": stdout, "stderr": stderr, "replay": replay}
    if ring:
        options["ring"] = True
    return encode_json(HELLO, options)


def encode_offset(kind: int, offset: int) -> bytes:
    """A ``RING`` or ``ACK`` frame."""
    return encode(kind, _OFFSET.pack(offset))


def decode_offset(payload: bytes) -> int:
    if len(payload) != _OFFSET.size:
        raise AttachProtocolError(f"an offset is 8 bytes, not {len(payload)}")
    (offset,) = _OFFSET.unpack(payload)
    return int(offset)


def encode_resize(rows: int, cols: int) -> bytes:
    if not (0 <= rows <= 0xFFFF and 0 <= cols <= 0xFFFF):
        raise ValueError("rows and cols must fit in 16 bits")
    return encode(RESIZE, _WINSIZE.pack(rows, cols))


def decode_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != _WINSIZE.size:
        raise AttachProtocolError(f"RESIZE payload must be 4 bytes, not {len(payload)}")
    rows, cols = _WINSIZE.unpack(payload)
    return rows, cols


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload) if payload else {}
    except ValueError as exc:
        raise AttachProtocolError(f"bad JSON payload: {exc}") from None
    if not isinstance(body, dict):
        raise AttachProtocolError("JSON payload must be an object")
    return body


class FrameDecoder:
    """Turns a byte stream into ``(kind, payload)`` frames."""

    __slots__ = ("_buffer", "_kinds")

    def __init__(self, kinds: frozenset[int]) -> None:
        self._buffer = bytearray()
        self._kinds = kinds

    def receive_data(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buffer
        buf += data
        frames: list[tuple[int, bytes]] = []
        offset = 0
        while len(buf) - offset >= HEADER_SIZE:
            kind, length = HEADER.unpack_from(buf, offset)
            if kind not in self._kinds:
                raise AttachProtocolError(f"unexpected frame kind {kind}")
            if length > MAX_PAYLOAD:
                raise AttachProtocolError(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
            end = offset + HEADER_SIZE + length
            if len(buf) < end:
                break
            frames.append((kind, bytes(buf[offset + HEADER_SIZE : end])))
            offset = end
        if offset:
            del buf[:offset]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)
