"""An independent reader of CRI log files, for checking what the fault tests logged.

Deliberately shares no code with :mod:`iottymux.logformat` or the log reader: a
bug there must not hide itself here.  It is strict -- every record must be
``<timestamp> <stdout|stderr> <P|F>[:tags] <content>`` with the fixed-width
UTC timestamp rktlet writes -- and it joins ``P`` pieces into whole lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_DIGITS = frozenset(b"0123456789")


class CriLogError(AssertionError):
    """The file is not a valid CRI log as rktlet writes it."""


@dataclass(frozen=True)
class Line:
    timestamp: bytes
    stream: str
    content: bytes
    #: The stream ended without a newline after it (a last ``P`` record).
    unterminated: bool = False


def _check_timestamp(raw: bytes, where: str) -> None:
    # 2026-12-04T17:27:26.123456789Z: 30 bytes, digits where digits belong.
    if len(raw) != 30 or raw[-1:] != b"Z":
        raise CriLogError(f"{where}: bad timestamp {raw!r}")
    for i, byte in enumerate(raw[:-1]):
        expected = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":", 19: b"."}.get(i)
        if expected is not None:
            if bytes([byte]) != expected:
                raise CriLogError(f"{where}: bad timestamp {raw!r}")
        elif byte not in _DIGITS:
            raise CriLogError(f"{where}: bad timestamp {raw!r}")


def parse(data: bytes, name: str = "log", *, last: bool = True) -> list[Line]:
    """Whole lines (P pieces joined) of one CRI log file's bytes.

    A line cut into ``P`` pieces must end (``F``) in the same file.  Only the last
    file of a stream may end in ``P``: the app's last bytes, with no newline.
    """
    if data and not data.endswith(b"\n"):
        raise CriLogError(f"{name}: ends in the middle of a record")
    lines: list[Line] = []
    pending: dict[str, list[bytes]] = {}
    last_ts = b""
    for number, record in enumerate(data.split(b"\n")[:-1], 1):
        where = f"{name}:{number}"
        fields = record.split(b" ", 3)
        if len(fields) != 4:
            raise CriLogError(f"{where}: not 4 fields: {record[:120]!r}")
        timestamp, stream, tags, content = fields
        _check_timestamp(timestamp, where)
        if timestamp < last_ts:
            raise CriLogError(f"{where}: timestamp goes backwards ({timestamp!r} < {last_ts!r})")
        last_ts = timestamp
        if stream not in (b"stdout", b"stderr"):
            raise CriLogError(f"{where}: bad stream {stream!r}")
        tag = tags.split(b":", 1)[0]
        key = stream.decode()
        if tag == b"P":
            pending.setdefault(key, []).append(content)
        elif tag == b"F":
            pieces = pending.pop(key, [])
            lines.append(Line(timestamp, key, b"".join([*pieces, content])))
        else:
            raise CriLogError(f"{where}: bad tag {tags!r}")
    if pending and not last:
        # A line cut into P pieces must end (F) in the same file, never in the next.
        raise CriLogError(f"{name}: ends inside a line ({sorted(pending)} has P without F)")
    for key, pieces in pending.items():
        lines.append(Line(last_ts, key, b"".join(pieces), unterminated=True))
    return lines


def read_lines(*paths: Path) -> list[Line]:
    """The lines of a log and its rotated predecessors, oldest file first."""
    out: list[Line] = []
    for i, path in enumerate(paths):
        out.extend(parse(path.read_bytes(), str(path), last=i == len(paths) - 1))
    return out


def terminated(lines: list[Line]) -> list[bytes]:
    """The contents of the lines the app ended with a newline."""
    return [line.content for line in lines if not line.unterminated]


def check_sequence(contents: list[bytes], prefix: bytes = b"") -> int:
    """``contents`` must be ``prefix + 0``, ``prefix + 1``, ... with none lost, doubled or
    swapped; returns how many there were."""
    for expected, content in enumerate(contents):
        if content != prefix + str(expected).encode():
            raise CriLogError(
                f"line {expected}: expected {prefix + str(expected).encode()!r}, "
                f"got {content[:80]!r} (lost, duplicated or reordered)"
            )
    return len(contents)
