"""The CRI plaintext log line format, encoded and decoded without I/O.

A record is one line of a CRI log file::

    <timestamp> <stream> <tags> <content>\\n

* ``timestamp`` is RFC 3339 with nanoseconds.  We always write UTC with exactly
  nine fractional digits and ``Z`` (``2026-11-28T14:21:30.000000001Z``) so that
  records sort as bytes and are fixed width; we read any RFC 3339 offset.
* ``stream`` is ``stdout`` or ``stderr``.
* ``tags`` is ``:``-separated; the first tag is ``P`` (a piece, more of the same
  logical line follows) or ``F`` (the whole line, or its last piece).  Further
  tags are ignored, as the kubelet ignores them.
* ``content`` is the raw bytes of the line without its newline.  A single space
  always follows the tag, even for an empty line (``... stdout F \\n``).

The encoder side (:class:`LineFramer`) works on whole reads with C-level bytes
operations: one timestamp per read, ``split``/``join`` over the read, and one
output buffer per read.  The decoder side (:func:`maybe_next_record`,
:func:`parse_record`) follows h11's reader contract: it returns a record, returns
``None`` when it needs more bytes, or raises :class:`LogFormatError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

STDOUT: Final = b"stdout"
STDERR: Final = b"stderr"
STREAMS: Final = (STDOUT, STDERR)

TAG_PARTIAL: Final = b"P"
TAG_FULL: Final = b"F"

#: The kubelet's and containerd's default maximum line size.
DEFAULT_MAX_LINE_SIZE: Final = 16 * 1024

#: Length of the fixed-width timestamp we write (``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``).
TIMESTAMP_WIDTH: Final = 30


class LogFormatError(ValueError):
    """A line that is not a CRI log record."""


# ---------------------------------------------------------------------------
# Timestamps


class TimestampCache:
    """Formats ``time_ns`` values as fixed-width RFC 3339 UTC.

    The date and time of day change once a second, so only the nine nanosecond
    digits are formatted on every call.
    """

    __slots__ = ("_head", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._head = b""

    def format(self, t_ns: int) -> bytes:
        second, nanos = divmod(t_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._head = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)).encode()
        return b"%s%09dZ" % (self._head, nanos)

    def now(self) -> bytes:
        return self.format(time.time_ns())


def format_timestamp(t_ns: int) -> bytes:
    """Fixed-width RFC 3339 UTC timestamp for ``t_ns`` nanoseconds since the epoch."""
    return TimestampCache().format(t_ns)


def parse_timestamp(raw: bytes) -> int:
    """Parse an RFC 3339 timestamp (any precision, ``Z`` or ``±HH:MM``) to epoch ns."""
    import calendar

    try:
        text = raw.decode("ascii")
        if len(text) < 20 or text[10] not in "Tt" or text[4] != "-" or text[7] != "-":
            raise ValueError
        year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
        if text[13] != ":" or text[16] != ":":
            raise ValueError
        hour, minute, sec = int(text[11:13]), int(text[14:16]), int(text[17:19])
        rest = text[19:]
        nanos = 0
        if rest.startswith("."):
            end = 1
            while end < len(rest) and rest[end].isdigit():
                end += 1
            digits = rest[1:end]
            if not digits or len(digits) > 9:
                raise ValueError
            nanos = int(digits.ljust(9, "0"))
            rest = rest[end:]
        if rest in ("Z", "z"):
            offset = 0
        elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            offset = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
            if rest[0] == "-":
                offset = -offset
        else:
            raise ValueError
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and sec < 61):
            raise ValueError
        seconds = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) - offset
    except (ValueError, IndexError, UnicodeDecodeError):
        raise LogFormatError(f"bad timestamp {raw[:40]!r}") from None
    return seconds * 1_000_000_000 + nanos


# ---------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One decoded line of a CRI log file."""

    timestamp: bytes
    stream: bytes
    partial: bool
    content: bytes

    @property
    def time_ns(self) -> int:
        return parse_timestamp(self.timestamp)

    def encode(self) -> bytes:
        tag = TAG_PARTIAL if self.partial else TAG_FULL
        return b"%s %s %s %s\n" % (self.timestamp, self.stream, tag, self.content)


def parse_record(line: bytes) -> LogRecord:
    """Decode one record; ``line`` may or may not end in its ``\\n``."""
    if line.endswith(b"\n"):
        line = line[:-1]
    first = line.find(b" ")
    second = line.find(b" ", first + 1) if first > 0 else -1
    third = line.find(b" ", second + 1) if second > 0 else -1
    if first == 0 or not line:
        raise LogFormatError("no timestamp")
    if first < 0 or second < 0:
        raise LogFormatError("no stream")
    stream = line[first + 1 : second]
    if stream not in STREAMS:
        raise LogFormatError(f"unknown stream {stream[:16]!r}")
    if third < 0:
        raise LogFormatError("log tag is not found")
    tags = line[second + 1 : third]
    tag = tags.split(b":", 1)[0]
    if tag == TAG_FULL:
        partial = False
    elif tag == TAG_PARTIAL:
        partial = True
    else:
        raise LogFormatError(f"unknown tag {tags[:16]!r}")
    timestamp = line[:first]
    # Validate the timestamp shape cheaply; full parsing is lazy (time_ns).
    if len(timestamp) < 20 or timestamp[4:5] != b"-" or timestamp[10:11] not in (b"T", b"t"):
        raise LogFormatError(f"bad timestamp {timestamp[:40]!r}")
    return LogRecord(timestamp, stream, partial, line[third + 1 :])


def maybe_next_record(buf: bytearray) -> LogRecord | None:
    """Take the next complete record off the front of ``buf``.

    Returns ``None`` when ``buf`` holds no complete line yet.  A malformed line is
    consumed and reported with :class:`LogFormatError`, so the caller can skip it.
    """
    end = buf.find(b"\n")
    if end < 0:
        return None
    line = bytes(buf[:end])
    del buf[: end + 1]
    return parse_record(line)


# ---------------------------------------------------------------------------
# Encoding


class LineFramer:
    """Turns one stream's raw output into CRI records, read by read.

    Bytes are gathered until a newline; a line is cut only when it grows past
    ``max_line_size``, into ``P`` pieces of exactly ``max_line_size`` bytes and a
    final ``F`` piece.  With ``crlf`` (pty output) ``\\r\\n`` becomes ``\\n``,
    including a pair split across two reads.  Nothing else in the content is
    touched: invalid UTF-8, NUL bytes and lone ``\\r`` pass through.

    The framer keeps the unfinished tail of the stream between calls; it never
    emits a ``P`` record for a tail that still fits in one line, so a line's
    framing does not depend on how the app's writes were cut into reads.
    """

    __slots__ = ("_full", "_partial", "_pending", "crlf", "max_line_size", "splits", "stream")

    def __init__(
        self, stream: bytes, max_line_size: int = DEFAULT_MAX_LINE_SIZE, *, crlf: bool = False
    ) -> None:
        if stream not in STREAMS:
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        if max_line_size < 1:
            raise ValueError("max_line_size must be at least 1")
        self.stream = stream
        self.max_line_size = max_line_size
        self.crlf = crlf
        #: ``P`` records written because a line was longer than ``max_line_size``.
        self.splits = 0
        self._pending = b""
        self._full = b" " + stream + b" F "
        self._partial = b" " + stream + b" P "

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back, waiting for its newline."""
        return len(self._pending)

    def feed(self, data: bytes, timestamp: bytes) -> tuple[bytes, int]:
        """Frame ``data``; return the encoded records and how many there are."""
        if self._pending:
            data = self._pending + data
        if self.crlf and b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        lines = data.split(b"\n")
        tail = lines.pop()
        limit = self.max_line_size
        out = b""
        count = len(lines)
        if lines:
            if max(map(len, lines)) <= limit:
                # The hot path: every line fits, one join for the whole read.
                prefix = timestamp + self._full
                out = prefix + (b"\n" + prefix).join(lines) + b"\n"
            else:
                parts: list[bytes] = []
                for line in lines:
                    if len(line) > limit:
                        count += self._cut(line, timestamp, parts)
                        line = line[(len(line) - 1) // limit * limit :]
                    parts.append(timestamp + self._full + line + b"\n")
                out = b"".join(parts)
        if len(tail) > limit:
            parts = [out]
            count += self._cut(tail, timestamp, parts)
            tail = tail[(len(tail) - 1) // limit * limit :]
            out = b"".join(parts)
        self._pending = tail
        return out, count

    def _cut(self, line: bytes, timestamp: bytes, parts: list[bytes]) -> int:
        """Append ``P`` records for every block of ``line`` but the last.

        The last block (1 to ``max_line_size`` bytes) is the caller's: written as
        ``F`` for a finished line, kept pending for an unfinished one.
        """
        limit = self.max_line_size
        last_start = (len(line) - 1) // limit * limit
        prefix = timestamp + self._partial
        for start in range(0, last_start, limit):
            parts.append(prefix + line[start : start + limit] + b"\n")
        self.splits += last_start // limit
        return last_start // limit

    def flush(self, timestamp: bytes) -> tuple[bytes, int]:
        """End of stream: write an unfinished line as the final ``F`` record.

        Readers then never wait for a line that cannot be finished (containerd
        and conmon leave a dangling ``P``).
        """
        if not self._pending:
            return b"", 0
        tail, self._pending = self._pending, b""
        return timestamp + self._full + tail + b"\n", 1

    def take_pending(self) -> bytes:
        """Remove and return the unfinished tail (used when a stream is re-homed)."""
        tail, self._pending = self._pending, b""
        return tail
