"""Output of the ``rktlet`` CRI client: aligned tables, JSON, and a small YAML emitter.

The YAML emitter covers what CRI objects turn into (mappings, sequences, strings,
numbers, booleans, null) and nothing else; it quotes every string that YAML could read
as something other than that string, so its output reads back unchanged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

FORMATS = ("table", "json", "yaml")


def to_dict(message: Message) -> dict[str, Any]:
    """A CRI message as plain data, with the proto's own (snake_case) field names."""
    result: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows (the first is the header) as left-aligned columns two spaces apart."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write(line.rstrip() + "\n")


def emit(data: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(data, out, indent=2, sort_keys=False)
        out.write("\n")
    elif fmt == "yaml":
        out.write(to_yaml(data))
    else:
        raise ValueError(f"--output: {fmt!r} is not json or yaml")


# -- YAML ----------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_SPECIAL = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", ""})


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _SPECIAL:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _key(value: Any) -> str:
    return _scalar(str(value))


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_key(key)}:")
                lines.extend(_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{_key(key)}: {_inline(item)}")
        return lines
    if isinstance(value, list):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _lines(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
        return lines
    return [pad + _scalar(value)]


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(data: Any) -> str:
    return "\n".join(_lines(data, 0)) + "\n"


# -- human-readable cells ------------------------------------------------------------------


def ago(nanoseconds: int, now: float | None = None) -> str:
    """``5s ago``, ``3m ago``, ``2h ago``, ``4d ago`` for a Unix time in nanoseconds."""
    if not nanoseconds:
        return "-"
    seconds = max(0, int((now if now is not None else time.time()) - nanoseconds / 1e9))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def short_id(value: str, width: int = 13) -> str:
    return value.split(":", 1)[-1][:width]
