"""Block-wise line filters against a line-by-line reference."""

from __future__ import annotations

import random
import re

import pytest

from iottymux.logfilter import Highlighter, LineFilter

BLOCK = b"ok\nerror one\nwarning two skip\nWarn three\n\nlast err\n\xff\xfe binary err\n"


def reference(data: bytes, include: list[str], exclude: list[str]) -> bytes:
    lines = data.split(b"\n")[:-1]
    inc = [re.compile(p.encode()) for p in include]
    exc = [re.compile(p.encode()) for p in exclude]
    kept = [
        line
        for line in lines
        if (not inc or any(r.search(line) for r in inc)) and not any(r.search(line) for r in exc)
    ]
    return b"".join(line + b"\n" for line in kept)


CASES = [
    (["err"], []),
    (["(?i)warn", "^last"], []),
    ([], ["skip", "^$"]),
    (["err"], ["binary"]),
    (["one\\s+warn"], []),  # a match across a newline selects no line
    (["\\Aw"], []),  # \A means the start of each line
    (["err\\Z"], []),
    ([""], []),
    ([], ["x*"]),
    (["[^o]k"], []),
    (["e(?=\n)", "(?<=\n)l"], []),  # lookaround must not see the neighbouring lines
    ([], ["(?<!e)r"]),
]


@pytest.mark.parametrize(("include", "exclude"), CASES)
def test_filters_equal_the_line_by_line_reference(include: list[str], exclude: list[str]) -> None:
    expected = reference(BLOCK, include, exclude)
    data, count = LineFilter(include, exclude).apply(BLOCK, BLOCK.count(b"\n"))
    assert data == expected
    assert count == expected.count(b"\n")


def test_random_blocks() -> None:
    rng = random.Random(7)
    for _ in range(200):
        lines = [bytes(rng.choice(b"abc \t") for _ in range(rng.randint(0, 12))) for _ in range(20)]
        block = b"".join(line + b"\n" for line in lines)
        include = rng.sample(["a", "b c", "^c", "a$", "\\s", "[^a]b"], rng.randint(0, 2))
        exclude = rng.sample(["c", "^$", "b\\s*a"], rng.randint(0, 1))
        data, count = LineFilter(include, exclude).apply(block, 20)
        assert data == reference(block, include, exclude)
        assert count == data.count(b"\n")


def test_bad_patterns_name_themselves() -> None:
    with pytest.raises(re.error, match="'a\\('"):
        LineFilter(["a("])


def test_highlight_marks_within_lines_only() -> None:
    marked = Highlighter(["err", "e\\nl"], b"<", b">").apply(BLOCK)
    assert marked.count(b"<err>") == 3
    assert b"<e\nl" not in marked  # a match across lines would break the prefixes
    assert marked.replace(b"<", b"").replace(b">", b"") == BLOCK
