"""The benchmarks' own tools: the static log writer and RESULTS.md's sections.

The benchmarks' figures are only as honest as these: the writer must write exactly
the bytes and lines it is asked for, and one benchmark rewriting its section must
leave the others' figures alone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench._results import replace_section, section, update
from bench._writer import build_writer, writer_args


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required to build bench/writer.c (scripts/install.sh --dev)")
    return build_writer(tmp_path_factory.mktemp("writer"))


@pytest.mark.parametrize(
    ("line", "total"),
    [(100, 3_000_000), (16384, 16384 * 70), (7, 7 * 150_000), (1 << 20, 3 << 20)],
)
def test_the_writer_writes_exactly_the_lines_asked_for(writer: Path, line: int, total: int) -> None:
    out = subprocess.run([writer, *writer_args(line, total)], capture_output=True, check=True)
    assert len(out.stdout) == total
    lines = out.stdout.split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == total // line
    assert set(lines) == {b"0" * (line - 1)}


def test_a_total_off_the_line_size_ends_with_an_unterminated_line(writer: Path) -> None:
    out = subprocess.run([writer, "10", "25"], capture_output=True, check=True).stdout
    assert out == b"000000000\n000000000\n00000"


def test_the_writer_is_static_and_refuses_bad_arguments(writer: Path) -> None:
    described = subprocess.run(["file", "-b", writer], capture_output=True, text=True)
    if described.returncode == 0:
        assert "statically linked" in described.stdout
    for args in (["0", "10"], ["x", "10"], ["10"], ["10", "-5"]):
        done = subprocess.run([writer, *args], capture_output=True, text=True)
        assert done.returncode == 2, args
        assert done.stderr.startswith(("writer:", "usage:"))


def test_rewriting_one_section_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    update(path, {"a": "## A\n\nfirst", "b": "## B\n\nmine"})
    text = update(path, {"a": "## A\n\nsecond"}, placeholders={"b": "lost?", "c": "## C\n\ntbd"})
    assert section(text, "a") == "## A\n\nsecond"
    assert section(text, "b") == "## B\n\nmine", "a placeholder never replaces figures"
    assert section(text, "c") == "## C\n\ntbd"
    assert text.index("## A") < text.index("## B") < text.index("## C")


def test_a_missing_section_is_appended_after_the_others() -> None:
    text = replace_section("<!-- begin a -->\nA\n<!-- end a -->\n", "b", "B")
    assert text == "<!-- begin a -->\nA\n<!-- end a -->\n\n<!-- begin b -->\nB\n<!-- end b -->\n"


def test_a_file_without_sections_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# results written whole by an older compare.py\n")
    text = update(path, {"a": "fresh"})
    assert "older compare.py" not in text
    assert section(text, "a") == "fresh"
