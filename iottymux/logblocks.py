"""Blocks of CRI records decoded a run at a time, with C-level bytes operations.

A writer that stamps a whole read with one timestamp (ours, conmon) fills its file
with *runs*: consecutive records whose prefix ``<timestamp> <stream> F `` is byte for
byte the same.  A run of whole ``F`` records is turned into its lines' content with
one ``bytes.replace`` of ``"\\n" + prefix`` by ``"\\n"`` over the run, never a
Python step per line.  Finding where a run ends takes a logarithmic number of probes
(gallop, then bisect over line starts), and the result is *verified*: the bytes the
replace removed must add up to one prefix per line, so a run that was not contiguous
(equal timestamps on two streams, a ``P`` piece cut from the same read, a clock that
stepped back) is detected and handed to the record-by-record decoder instead.

Everything here is pure: bytes in, offsets and bytes out.  The replace is the one step
CPython does slowly (it sets up a substring search per line, ~0.9 GB/s): where the C
accelerator :mod:`iottymux._prefixes` was built, :func:`strip_run` and
:func:`replace_prefixes` are its one-pass versions, which give the same results
(``IOTTYMUX_PURE_PYTHON=1`` turns them off).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from iottymux.logformat import STREAMS, TAG_FULL

__all__ = [
    "ACCELERATED",
    "check_run",
    "count_newlines",
    "full_prefix_end",
    "replace_prefixes",
    "replace_prefixes_python",
    "run_end",
    "strip_run",
    "strip_run_python",
]

#: A record prefix (timestamp, stream, tags and their spaces) longer than this is
#: not one our fast path handles; the record decoder will judge it.
MAX_PREFIX: Final = 96
#: Bytes after a run's second line searched at once for its last line.
SHORT_RUN_WINDOW: Final = 4096


def count_newlines(data: bytes) -> int:
    """``data.count(b"\\n")``, faster.

    CPython counts a single byte with a plain loop, but deletes one with ``memchr``:
    the length difference is the count, at several times the speed.
    """
    return len(data) - len(data.replace(b"\n", b""))


def full_prefix_end(data: bytes, pos: int, line_end: int) -> tuple[int, int] | None:
    """Where the timestamp and the whole prefix of the ``F`` record at ``pos`` end.

    None if the line is anything else: only the shape the run path relies on is
    accepted (a plausible timestamp, a known stream, a first tag of ``F``); every
    other line goes to the record decoder, which reports what is wrong with it.
    """
    find = data.find
    limit = min(line_end, pos + MAX_PREFIX)
    first = find(b" ", pos, limit)
    if first - pos < 20:
        return None
    second = first + 7
    if data[second : second + 1] != b" " or data[first + 1 : second] not in STREAMS:
        return None
    third = find(b" ", second + 1, limit)
    if third < 0:
        return None
    if data[second + 1 : second + 2] != TAG_FULL or (
        third != second + 2 and data[second + 2 : second + 3] != b":"
    ):
        return None
    if data[pos + 4 : pos + 5] != b"-" or data[pos + 10 : pos + 11] not in (b"T", b"t"):
        return None
    return first, third + 1


def run_end(data: bytes, pos: int, line_end: int, prefix: bytes, n: int = -1) -> int:
    """End (just past a newline) of the run of lines starting with ``prefix`` at ``pos``.

    The line at ``pos`` (ending at ``line_end``) starts with ``prefix``.  Assuming such
    lines are contiguous, gallop forward in doubling byte steps while the line at the
    probe still starts with ``prefix``, then bisect between the last line that does
    and the first that does not.  Only ``data[:n]`` is looked at (all of it by
    default); it must end with ``\\n``.
    """
    if n < 0:
        n = len(data)
    startswith = data.startswith
    find = data.find
    if line_end >= n or not startswith(prefix, line_end):
        return line_end
    # Often the rest of the block is one run (a whole read stamped once).
    bad = data.rfind(b"\n", pos, n - 1) + 1  # the last line
    if startswith(prefix, bad):
        return n
    # Often the run is short (a follower reading a few writes): the last line with
    # the prefix in a small window ends it, if the window goes past that line.
    key = b"\n" + prefix
    limit = min(bad, line_end + SHORT_RUN_WINDOW)
    good = data.rfind(key, line_end - 1, limit + len(key)) + 1
    following = find(b"\n", good, n) + 1
    if following <= limit:
        return following
    step = line_end - pos
    while True:
        step *= 2
        probe = find(b"\n", good + step, bad) + 1
        if probe <= 0:
            break
        if not startswith(prefix, probe):
            bad = probe
            break
        good = probe
    while True:
        following = find(b"\n", good) + 1
        if following >= bad:
            return bad
        mid = find(b"\n", (good + bad) // 2) + 1
        if mid >= bad:
            mid = following
        if startswith(prefix, mid):
            good = mid
        else:
            bad = mid


def strip_run_python(data: bytes, pos: int, end: int, prefix: bytes) -> tuple[bytes, int] | None:
    """The content of the lines in ``data[pos:end]``, and how many, or None.

    None means that not every line there starts with ``prefix`` (the run was not
    contiguous): those lines must be decoded one by one.  ``data[end - 1]`` is a
    newline and the line at ``pos`` starts with ``prefix``.
    """
    size = len(prefix)
    content = data[pos + size : end].replace(b"\n" + prefix, b"\n")
    lines = count_newlines(content)
    if (end - pos) - len(content) != lines * size:
        return None
    return content, lines


def replace_prefixes_python(data: bytes, old: bytes, new: bytes) -> bytes:
    """Every newline followed by ``old`` (a record prefix) becomes ``new``."""
    return data.replace(b"\n" + old, new)


StripRun = Callable[[bytes, int, int, bytes], "tuple[bytes, int] | None"]
ReplacePrefixes = Callable[[bytes, bytes, bytes], bytes]


def _accelerated() -> tuple[StripRun, ReplacePrefixes] | None:
    if os.environ.get("IOTTYMUX_PURE_PYTHON"):
        return None
    try:
        from iottymux import _prefixes
    except ImportError:
        return None
    return _prefixes.strip_run, _prefixes.replace_prefixes


_ACCELERATOR = _accelerated()
#: Whether the C accelerator is in use (built, and not turned off).
ACCELERATED: Final = _ACCELERATOR is not None
strip_run: StripRun
replace_prefixes: ReplacePrefixes
strip_run, replace_prefixes = _ACCELERATOR or (strip_run_python, replace_prefixes_python)


def check_run(data: bytes, pos: int, end: int, prefix: bytes) -> tuple[bytes, int] | None:
    """Like :func:`strip_run` but leaves the prefixes in: ``data[pos + len(prefix):end]``.

    For formats that replace each line's record prefix by their own in one pass
    (:class:`~iottymux.loglines.LineRun` ``prefix``).  Two counting passes prove the
    run contiguous, at several times the speed of stripping it.
    """
    records = data[pos + len(prefix) : end]
    lines = count_newlines(records)
    if records.count(b"\n" + prefix) != lines - 1:
        return None
    return records, lines
