"""bench/RESULTS.md as named sections, each rewritten by the benchmark that owns it.

A section is the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->``.
Rewriting one leaves every other section as it is, so ``compare.py``,
``attach_fanout.py`` and later benchmarks each update their own figures in the
one file; a section not there yet is appended.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "RESULTS.md"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- begin {name} -->", f"<!-- end {name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` holding ``body`` (appended if it was missing)."""
    begin, end = _markers(name)
    block = f"{begin}\n{body.strip()}\n{end}"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    return text[:start] + block + text[stop + len(end) :]


def section(text: str, name: str) -> str | None:
    """The body of section ``name`` in ``text``, or None."""
    begin, end = _markers(name)
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return None
    return text[start + len(begin) : stop].strip()


def update(
    path: Path, sections: dict[str, str], *, placeholders: dict[str, str] | None = None
) -> str:
    """Rewrite ``sections`` of the file at ``path`` (created if missing); the new text.

    ``placeholders`` are written only where their section does not exist yet.
    """
    text = path.read_text() if path.exists() else ""
    if "<!-- begin " not in text:
        text = ""  # written whole by an older compare.py: nothing in it to keep
    for name, body in sections.items():
        text = replace_section(text, name, body)
    for name, body in (placeholders or {}).items():
        if section(text, name) is None:
            text = replace_section(text, name, body)
    path.write_text(text)
    return text
