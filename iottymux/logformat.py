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

# The monitor imports this module: keep typing (and dataclasses, which pull in
# inspect) out of its start-up; mypy reads these names all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, TypeAlias

#: What the encoder hands to ``writev``: whole bytes or views into them.
Buffer: TypeAlias = bytes | memoryview

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


class LogRecord:
    """One decoded line of a CRI log file (immutable)."""

    __slots__ = ("timestamp", "stream", "partial", "content")

    timestamp: bytes
    stream: bytes
    partial: bool
    content: bytes

    def __init__(self, timestamp: bytes, stream: bytes, partial: bool, content: bytes) -> None:
        set_ = object.__setattr__
        set_(self, "timestamp", timestamp)
        set_(self, "stream", stream)
        set_(self, "partial", partial)
        set_(self, "content", content)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LogRecord is immutable")

    def _key(self) -> tuple[bytes, bytes, bool, bytes]:
        return (self.timestamp, self.stream, self.partial, self.content)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogRecord):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"LogRecord(timestamp={self.timestamp!r}, stream={self.stream!r}, "
            f"partial={self.partial!r}, content={self.content!r})"
        )

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

    __slots__ = (
        "_full",
        "_partial",
        "_pending",
        "crlf",
        "in_line",
        "max_line_size",
        "splits",
        "stream",
    )

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
        #: ``P`` pieces of the held line are written; its ``F`` is still to come.
        self.in_line = False
        self._pending = b""
        self._full = b" " + stream + b" F "
        self._partial = b" " + stream + b" P "

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back, waiting for its newline."""
        return len(self._pending)

    def feed(self, data: bytes, timestamp: bytes) -> tuple[bytes, int]:
        """Frame ``data``; return the encoded records and how many there are."""
        parts, _, count = self.feed_parts(data, timestamp)
        return b"".join(parts), count

    def feed_parts(self, data: bytes, timestamp: bytes) -> tuple[list[Buffer], int, int]:
        """Frame ``data`` into buffers for one ``writev``: (buffers, bytes, records).

        The common case (every line of the read fits) costs one ``replace``
        over the read and no per-line work: each ``\n`` becomes ``\n`` plus
        the next record's prefix, and the buffers point into that one result.
        """
        pending = self._pending
        if self.crlf:
            if data[:1] == b"\n" and pending.endswith(b"\r"):
                pending = pending[:-1]  # a \r\n pair cut by the previous read
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
        first = data.find(b"\n")
        if first < 0:
            return self._grow_pending(data, timestamp)
        last = data.rfind(b"\n")
        limit = self.max_line_size
        if (
            len(pending) + first > limit
            or len(data) - last - 1 > limit - self.crlf
            or self._maybe_long_line(data, first, last)
        ):
            return self._feed_slow(pending, data, first, last, timestamp)
        self.in_line = False  # the held line ends here; the new tail fits (no P yet)
        prefix = timestamp + self._full
        replaced = data.replace(b"\n", b"\n" + prefix)
        count = (len(replaced) - len(data)) // len(prefix)
        tail_len = len(data) - last - 1
        body = memoryview(replaced)[: len(replaced) - len(prefix) - tail_len]
        self._pending = data[last + 1 :]
        parts: list[Buffer] = [prefix, pending, body] if pending else [prefix, body]
        return parts, len(prefix) + len(pending) + len(body), count

    def _maybe_long_line(self, data: bytes, first: int, last: int) -> bool:
        """Whether a line between the first and last newline of ``data`` is too long.

        A run of more than ``max_line_size`` bytes without a newline contains a
        whole aligned block of ``(max + 2) // 2`` bytes without one, so one
        ``find`` per block rules long lines out; only around a newline-free
        block is the run measured.  No per-line work.
        """
        limit = self.max_line_size
        block = (limit + 2) // 2
        find = data.find
        start = first + 1
        while start + block <= last:
            if find(b"\n", start, start + block) >= 0:
                start += block
                continue
            run_start = data.rfind(b"\n", first, start) + 1
            run_end = find(b"\n", start + block, last + 1)
            if run_end - run_start > limit:
                return True
            start = run_end + 1
        return False

    def _grow_pending(self, data: bytes, timestamp: bytes) -> tuple[list[Buffer], int, int]:
        parts: list[Buffer] = []
        self._pending, count = self._hold_tail(self._pending + data, timestamp, parts)
        return parts, sum(map(len, parts)), count

    def _hold_tail(self, tail: bytes, timestamp: bytes, parts: list[Buffer]) -> tuple[bytes, int]:
        """Keep an unfinished line, cutting ``P`` pieces off it while it is too long.

        On a pty a trailing ``\r`` may be half of a ``\r\n``, so it does not
        count towards the length until the next read tells.
        """
        held_cr = self.crlf and tail.endswith(b"\r")
        body = tail[:-1] if held_cr else tail
        limit = self.max_line_size
        if len(body) <= limit:
            return tail, 0
        self.in_line = True
        count = self._cut(body, timestamp, parts)
        rest = body[(len(body) - 1) // limit * limit :]
        return (rest + b"\r" if held_cr else rest), count

    def _feed_slow(
        self, pending: bytes, data: bytes, first: int, last: int, timestamp: bytes
    ) -> tuple[list[Buffer], int, int]:
        """Per-line framing, for reads that hold a line longer than the maximum."""
        limit = self.max_line_size
        lines = data[first + 1 : last].split(b"\n") if last > first else []
        lines.insert(0, pending + data[:first])
        parts: list[Buffer] = []
        full = timestamp + self._full
        count = len(lines)
        for line in lines:
            if len(line) > limit:
                count += self._cut(line, timestamp, parts)
                line = line[(len(line) - 1) // limit * limit :]
            parts += (full, line, b"\n")
        self.in_line = False
        self._pending, held = self._hold_tail(data[last + 1 :], timestamp, parts)
        return parts, sum(map(len, parts)), count + held

    def _cut(self, line: bytes, timestamp: bytes, parts: list[Buffer]) -> int:
        """Append ``P`` records for every block of ``line`` but the last.

        The last block (1 to ``max_line_size`` bytes) is the caller's: written as
        ``F`` for a finished line, kept pending for an unfinished one.
        """
        limit = self.max_line_size
        last_start = (len(line) - 1) // limit * limit
        prefix = timestamp + self._partial
        view = memoryview(line)
        for start in range(0, last_start, limit):
            parts += (prefix, view[start : start + limit], b"\n")
        self.splits += last_start // limit
        return last_start // limit

    def flush(self, timestamp: bytes) -> tuple[bytes, int]:
        """End of stream: write an unfinished line as a last ``P`` record.

        ``P`` says the app wrote no newline after these bytes, so every reader
        (the kubelet, crictl, ``iottymux logs``) gives back exactly what the app
        wrote; an ``F`` would make them add a newline it never wrote.  containerd
        and conmon do the same.
        """
        self.in_line = False
        if not self._pending:
            return b"", 0
        tail, self._pending = self._pending, b""
        return timestamp + self._partial + tail + b"\n", 1


# ---------------------------------------------------------------------------
# Decoding helpers for readers (iottymux.logdecode, iottymux.logtime)


class TimestampParser:
    """Parses record timestamps to epoch nanoseconds, caching the second.

    Writers stamp many records with the same second (ours stamps a whole read
    with one timestamp), so for fixed-width UTC timestamps only the nine
    nanosecond digits are converted per call.  Anything else goes through
    :func:`parse_timestamp`.
    """

    __slots__ = ("_head", "_base")

    def __init__(self) -> None:
        self._head = b""
        self._base = 0

    def parse(self, raw: bytes) -> int:
        if len(raw) == TIMESTAMP_WIDTH and raw[29] == 0x5A and raw[19] == 0x2E:  # "Z", "."
            head = raw[:19]
            nanos = raw[20:29]
            if nanos.isdigit():
                if head != self._head:
                    self._base = parse_timestamp(head + b"Z")
                    self._head = head
                return self._base + int(nanos)
        return parse_timestamp(raw)
