"""Line filters over blocks of lines: ``--include``, ``--exclude``, ``--highlight``.

A block is lines each ending in ``\\n`` (a :class:`~iottymux.loglines.LineRun`'s
data).  The patterns are searched over the whole block, the way grep does, so the
cost is the regex engine's scan plus work per *matching* line, not a Python step per
line.  A pattern is meant for one line; compiled with ``re.MULTILINE``, ``^`` and
``$`` hold at every line's ends, and every hit is checked again against its own line
alone, so a match that runs across a newline (``\\s``, ``[^x]``) never selects a
line that does not match by itself.  ``\\A``/``\\Z`` are therefore line anchors too.

Patterns are bytes patterns: content is raw bytes (often, not always, UTF-8); a
pattern given as text is encoded as UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = ["Highlighter", "LineFilter", "Patterns", "compile_patterns"]

_LEADING_FLAGS: Final = re.compile(r"\(\?([aiLmsux]+)\)")


def _scoped(pattern: str) -> str:
    """``(?i)foo`` → ``(?i:foo)``: global flags may only lead a whole expression."""
    match = _LEADING_FLAGS.match(pattern)
    if match is None:
        return f"(?:{pattern})"
    return f"(?{match.group(1)}:{pattern[match.end() :]})"


class Patterns(NamedTuple):
    """One alternation of patterns, compiled for blocks and for a single line."""

    block: re.Pattern[bytes]
    line: re.Pattern[bytes]
    #: Without lookaround, a match inside one line of a block is a match of that line
    #: alone; only a match that runs across a newline needs checking again.
    local: bool


def compile_patterns(patterns: Sequence[str]) -> Patterns:
    """One alternation of ``patterns``; raises :class:`re.error` naming a bad one."""
    for pattern in patterns:
        try:
            re.compile(pattern.encode())
        except re.error as exc:
            raise re.error(f"bad regular expression {pattern!r}: {exc}") from None
    single = len(patterns) == 1
    raw = (patterns[0] if single else "|".join(map(_scoped, patterns))).encode()
    # \A and \Z must mean the ends of a line, as they do for the line alone.
    block = re.sub(rb"(?<!\\)((?:\\\\)*)\\A", rb"\1^", raw)
    block = re.sub(rb"(?<!\\)((?:\\\\)*)\\Z", rb"\1$", block)
    local = re.search(rb"\(\?<?[=!]", raw) is None
    return Patterns(re.compile(block, re.MULTILINE), re.compile(raw), local)


class LineFilter:
    """Keeps the lines that match any ``include`` (all when none) and no ``exclude``."""

    __slots__ = ("_exclude", "_include")

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = compile_patterns(include) if include else None
        self._exclude = compile_patterns(exclude) if exclude else None

    @property
    def active(self) -> bool:
        return self._include is not None or self._exclude is not None

    def apply(self, data: bytes, count: int) -> tuple[bytes, int]:
        """The kept lines of ``data`` (``count`` lines) and how many they are."""
        if self._include is not None:
            data, count = _select(data, count, *self._include, keep=True)
        if self._exclude is not None and count:
            data, count = _select(data, count, *self._exclude, keep=False)
        return data, count


def _select(
    data: bytes,
    count: int,
    block_re: re.Pattern[bytes],
    line_re: re.Pattern[bytes],
    local: bool,
    *,
    keep: bool,
) -> tuple[bytes, int]:
    """The lines of ``data`` that match (``keep``) or those that do not, and how many."""
    pieces: list[bytes] = []
    search = block_re.search
    check = line_re.search
    find = data.find
    rfind = data.rfind
    size = len(data)
    pos = 0
    copied_to = 0  # exclude: unmatched lines before this offset are in pieces
    matched = 0
    while pos < size:
        match = search(data, pos)
        if match is None or match.start() >= size:
            break  # (an empty match after the last newline is no line)
        hit = match.start()
        start = rfind(b"\n", pos, hit) + 1 or pos
        end = find(b"\n", hit) + 1 or size
        pos = end
        # A match may run across a newline; the line must match on its own.
        if not (local and match.end() < end) and check(data[start : end - 1]) is None:
            continue
        matched += 1
        if keep:
            pieces.append(data[start:end])
        else:
            pieces.append(data[copied_to:start])
            copied_to = end
    if keep:
        return b"".join(pieces), matched
    if not matched:
        return data, count
    pieces.append(data[copied_to:])
    return b"".join(pieces), count - matched


class Highlighter:
    """Wraps every match of the patterns in ``start`` … ``end`` (terminal attributes)."""

    __slots__ = ("_end", "_re", "_start")

    def __init__(self, patterns: Sequence[str], start: bytes, end: bytes) -> None:
        self._re = compile_patterns(patterns).block
        self._start = start
        self._end = end

    def apply(self, data: bytes) -> bytes:
        return self._re.sub(self._mark, data)

    def _mark(self, match: re.Match[bytes]) -> bytes:
        text = match.group()
        if not text or b"\n" in text:
            # Empty matches mark nothing; one across lines would break the prefixes.
            return text
        return self._start + text + self._end
