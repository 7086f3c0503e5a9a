"""The C accelerator of ``iottymux logs`` against the Python it stands in for.

``iottymux._prefixes`` must give byte for byte what ``logblocks``' Python gives, on
runs the real writer made and on bytes chosen to find the edges (prefixes containing
newlines, lines shorter than the prefix, empty pieces); and the command must print
the same whichever path it takes.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iottymux import _prefixes, logblocks
from iottymux.logformat import LineFramer, format_timestamp

T0 = 1_700_000_000_000_000_000
PREFIX = format_timestamp(T0) + b" stdout F "


def test_the_accelerator_is_built_and_in_use() -> None:
    # A missing compiler or header turns the build's optional extension into a
    # silent fallback; the test install must have it.
    assert logblocks.ACCELERATED
    assert logblocks.strip_run is _prefixes.strip_run
    assert logblocks.replace_prefixes is _prefixes.replace_prefixes


def both_strip(data: bytes, pos: int, end: int, prefix: bytes) -> tuple[bytes, int] | None:
    expected = logblocks.strip_run_python(data, pos, end, prefix)
    assert _prefixes.strip_run(data, pos, end, prefix) == expected
    return expected


def test_strip_run_vectors() -> None:
    run = PREFIX + b"a\n" + PREFIX + b"bb\n" + PREFIX + b"\n"
    assert both_strip(run, 0, len(run), PREFIX) == (b"a\nbb\n\n", 3)
    other = format_timestamp(T0) + b" stderr F c\n"
    assert both_strip(run + other, 0, len(run) + len(other), PREFIX) is None
    # A run inside a larger block, and an empty one.
    block = other + run + other
    assert both_strip(block, len(other), len(other) + len(run), PREFIX) == (b"a\nbb\n\n", 3)
    assert both_strip(block, 5, 5, PREFIX) == (b"", 0)
    # A line shorter than the prefix breaks the run; so does a prefix one byte off.
    assert both_strip(PREFIX + b"a\nshort\n", 0, len(PREFIX) + 8, PREFIX) is None
    near = PREFIX[:-2] + b"P "
    assert both_strip(PREFIX + b"a\n" + near + b"b\n", 0, 2 * len(PREFIX) + 4, PREFIX) is None
    # The empty prefix keeps every line.
    assert both_strip(b"x\ny\n", 0, 4, b"") == (b"x\ny\n", 2)
    # A first line shorter than the prefix: refused unless the run is empty.
    assert both_strip(b"ab\n", 0, 3, b"abcd") is None
    assert both_strip(b"ab\ncd\n", 0, 6, b"abcd") == (b"d\n", 1)


def test_strip_run_refuses_what_its_callers_never_pass() -> None:
    run = PREFIX + b"a\n"
    with pytest.raises(ValueError, match="within data"):
        _prefixes.strip_run(run, 0, len(run) + 1, PREFIX)
    with pytest.raises(ValueError, match="within data"):
        _prefixes.strip_run(run, 3, 2, PREFIX)
    with pytest.raises(ValueError, match="follow a newline"):
        _prefixes.strip_run(run, 0, len(run) - 1, PREFIX)
    with pytest.raises(ValueError, match="no newline"):
        _prefixes.strip_run(b"\n\n", 0, 2, b"\n")
    with pytest.raises(TypeError):
        _prefixes.strip_run(run, 0, len(run))  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _prefixes.strip_run("text", 0, 4, PREFIX)  # type: ignore[arg-type]


def test_strip_run_on_the_real_writers_output() -> None:
    rng = random.Random(14)
    for _ in range(50):
        framer = LineFramer(b"stdout", max_line_size=rng.choice((16, 4096)))
        app = b"".join(
            bytes(rng.choice(b"ab\n ") for _ in range(rng.randrange(0, 300)))
            for _ in range(rng.randrange(1, 30))
        )
        stamp = format_timestamp(T0)
        data = framer.feed(app, stamp)[0] + framer.flush(stamp)[0]
        if not data:
            continue
        first_end = data.find(b"\n") + 1
        prefix = data[: data.index(b" ", data.index(b" ") + 1) + 3]
        end = logblocks.run_end(data, 0, first_end, prefix)
        both_strip(data, 0, end, prefix)
        both_strip(data, 0, len(data), prefix)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.tuples(st.booleans(), st.binary(max_size=12)), max_size=20),
    # Record prefixes hold no newline (the C refuses one).
    prefix=st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")),
    start=st.integers(0, 8),
)
def test_strip_run_matches_python_on_any_lines(
    lines: list[tuple[bool, bytes]], prefix: bytes, start: int
) -> None:
    body = b"".join(
        (prefix if keep else b"") + text.replace(b"\n", b"") + b"\n" for keep, text in lines
    )
    data = prefix + body
    # Bytes before the run, as in a block where an earlier run ended.
    data = bytes(start) + data
    both_strip(data, start, len(data) if data.endswith(b"\n") else start, prefix)


@settings(max_examples=600, deadline=None)
@given(
    data=st.binary(max_size=80),
    old=st.binary(max_size=5),
    new=st.binary(max_size=7),
    alphabet_bias=st.sampled_from([b"\n", b"ab\n", b""]),
)
def test_replace_prefixes_matches_bytes_replace(
    data: bytes, old: bytes, new: bytes, alphabet_bias: bytes
) -> None:
    # Data mostly made of the pieces that matter, so matches actually happen.
    mixed = data + (b"\n" + old + alphabet_bias) * (len(data) % 4)
    assert _prefixes.replace_prefixes(mixed, old, new) == mixed.replace(b"\n" + old, new)


def test_replace_prefixes_vectors() -> None:
    cases = [
        (b"", b"p", b"X"),
        (b"\n", b"", b"X"),
        (b"\n\n\n", b"\n", b"X"),  # the old prefix itself holds a newline
        (b"a\np1\np2\np", b"p", b"\n"),
        (b"a\npp\np", b"pp", b""),
        (b"\nold\nold", b"old", b"a much longer replacement"),
    ]
    for data, old, new in cases:
        assert _prefixes.replace_prefixes(data, old, new) == data.replace(b"\n" + old, new)
    untouched = b"no newline at all"
    assert _prefixes.replace_prefixes(untouched, b"x", b"y") is untouched
    with pytest.raises(TypeError):
        _prefixes.replace_prefixes(b"a", b"b")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--timestamps"],
        ["--prefix"],
        ["--output", "json"],
        ["--output", "template", "--template", "{stream} {time} {line}"],
        ["--exclude", "7"],
    ],
)
def test_the_command_prints_the_same_with_and_without_the_accelerator(
    tmp_path: Path, options: list[str]
) -> None:
    rng = random.Random(len(options))
    framer = LineFramer(b"stdout", max_line_size=64)
    err = LineFramer(b"stderr", max_line_size=64)
    with open(tmp_path / "0.log", "wb") as log:
        for i in range(300):
            app = b"".join(
                b"%d %s\n" % (n, b"x" * rng.randrange(0, 90)) for n in range(rng.randrange(1, 40))
            )
            target = framer if i % 3 else err
            cut = app[: -rng.randrange(0, 3) or None]
            log.write(target.feed(cut, format_timestamp(T0 + i * 1000))[0])
    outputs = []
    for pure in ("", "1"):
        env = {k: v for k, v in os.environ.items() if k != "IOTTYMUX_PURE_PYTHON"}
        if pure:
            env["IOTTYMUX_PURE_PYTHON"] = pure
        done = subprocess.run(
            [sys.executable, "-m", "iottymux", "logs", *options, str(tmp_path / "0.log")],
            capture_output=True,
            env=env,
            check=True,
        )
        outputs.append(done.stdout)
    assert outputs[0] and outputs[0] == outputs[1]
