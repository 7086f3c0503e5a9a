"""How ``iottymux logs`` prints lines: raw (with prefixes), JSON, or a template.

Every format works on a :class:`~iottymux.loglines.LineRun` — lines sharing source,
stream and timestamp — so everything but the line itself is formatted once per run,
and the lines are joined to it with one ``bytes.replace`` of their newlines.  The
output of a run is byte for byte what formatting its lines one at a time would give
(the tests hold the two side by side).

Prefix colours are a hash of the names, so a pod keeps its colour from one run of
the command to the next and on every node.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Final

from iottymux.logblocks import replace_prefixes
from iottymux.logfilter import Highlighter
from iottymux.logformat import TIMESTAMP_WIDTH
from iottymux.loglines import LineRun
from iottymux.logsegments import SourceInfo
from iottymux.logtime import fixed_timestamp

__all__ = [
    "FIELDS",
    "Formatter",
    "JsonFormatter",
    "Labeller",
    "RawFormatter",
    "TemplateError",
    "TemplateFormatter",
    "color_of",
]

#: Prefix colours (SGR foreground codes); red is left to ``--highlight``.
PALETTE: Final = (b"32", b"33", b"34", b"35", b"36", b"92", b"93", b"94", b"95", b"96")
RESET: Final = b"\x1b[0m"
HIGHLIGHT: Final = b"\x1b[1;31m"

#: The fields a ``--template`` may name.
FIELDS: Final = ("namespace", "pod", "container", "stream", "time", "line")


def color_of(name: str) -> bytes:
    """The SGR sequence of ``name``'s colour: the same for the same name, always."""
    return b"\x1b[%sm" % PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def _paint(text: str, key: str) -> bytes:
    return color_of(key) + text.encode() + RESET


class Labeller:
    """The ``[label] `` prefix of each source's lines.

    ``show`` is what the label names: ``"container"`` (one pod's containers),
    ``"pod"`` (``pod/container``), ``"namespace"`` (``namespace/pod/container``), or
    ``"label"`` (the source's own label: a file's name).  Two sources that would get
    the same label are told apart with ``#2``, ``#3``…
    """

    def __init__(self, *, color: bool) -> None:
        self.color = color
        self._labels: dict[SourceInfo, bytes] = {}
        self._used: set[str] = set()
        self.show: dict[SourceInfo, str] = {}
        self.default_show = "label"

    def prefix(self, info: SourceInfo | None) -> bytes:
        if info is None:
            return b""
        cached = self._labels.get(info)
        if cached is None:
            cached = self._labels[info] = self._make(info)
        return cached

    def _parts(self, info: SourceInfo) -> list[tuple[str, str]]:
        """(text, colour key) pieces of the label, joined with ``/``."""
        show = self.show.get(info, self.default_show)
        if info.pod is None or info.container is None or show == "label":
            return [(info.label, info.label)]
        pod_key = f"{info.namespace}/{info.pod}"
        container = (info.container, f"{pod_key}/{info.container}")
        if show == "container":
            return [container]
        if show == "namespace":
            return [(info.namespace or "", pod_key), (info.pod, pod_key), container]
        return [(info.pod, pod_key), container]

    def _make(self, info: SourceInfo) -> bytes:
        parts = self._parts(info)
        text = "/".join(piece for piece, _ in parts)
        label = text
        copy = 1
        while label in self._used:
            copy += 1
            label = f"{text}#{copy}"
        self._used.add(label)
        if not self.color:
            return f"[{label}] ".encode()
        painted = b"/".join(_paint(piece, key) for piece, key in parts)
        if label != text:
            painted += label[len(text) :].encode()
        return b"[" + painted + b"] "


class Formatter:
    """Turns runs into output bytes."""

    def run(self, run: LineRun) -> bytes:
        raise NotImplementedError

    def runs(self, runs: Sequence[LineRun]) -> bytes:
        fmt = self.run
        return b"".join([fmt(run) for run in runs])


class RawFormatter(Formatter):
    """The content as the app wrote it, optionally after ``[label] `` and a timestamp.

    A line that never got its ``F`` ends without a newline when nothing precedes it
    (``plain_partial``): the bytes are then exactly what the app wrote.
    """

    def __init__(
        self,
        *,
        labeller: Labeller | None,
        timestamps: bool,
        plain_partial: bool,
        highlighter: Highlighter | None = None,
    ) -> None:
        self.labeller = labeller
        self.timestamps = timestamps
        self.plain_partial = plain_partial
        self.highlighter = highlighter

    def run(self, run: LineRun) -> bytes:
        prefix = self.labeller.prefix(run.source) if self.labeller is not None else b""
        if self.timestamps:
            prefix += fixed_timestamp(run.timestamp) + b" "
        if run.prefix and self.highlighter is None:
            # Each record prefix becomes ours in one pass.
            return prefix + replace_prefixes(run.records, run.prefix, b"\n" + prefix)
        data = run.data
        if self.highlighter is not None:
            data = self.highlighter.apply(data)
        if prefix:
            data = prefix + data[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
        if not run.complete and self.plain_partial:
            return data[:-1]
        return data


# JSON string escapes, as json.dumps(ensure_ascii=False) writes them.
_JSON_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
#: Bytes a JSON string holds as they are (printable ASCII but the quote and backslash).
_PLAIN_JSON: Final = bytes(sorted(set(range(0x20, 0x7F)) - {0x22, 0x5C}))
#: Every byte but the control characters that need a \\u escape: deleting these
#: leaves only those (a table lookup a byte, three times the speed of a regex scan).
_NOT_CONTROL: Final = bytes(sorted({*range(0x20, 0x100), 0x09, 0x0A, 0x0D}))
_JSON_SHORT: Final = {b"\x08": b"\\b", b"\x0c": b"\\f"}


def _json_control(match: re.Match[bytes]) -> bytes:
    char = match.group()
    return _JSON_SHORT.get(char) or b"\\u%04x" % char[0]


def json_escape_lines(data: bytes) -> bytes:
    """``data``'s lines as JSON string bodies (UTF-8, invalid bytes replaced), newlines kept.

    Works over the whole block: the newlines between lines are left as they are, so
    the caller can turn each into the end of one record and the start of the next.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # No replacement can swallow a newline: it is ASCII, never a continuation byte.
        data = data.decode("utf-8", "replace").encode("utf-8")
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    if b'"' in data:
        data = data.replace(b'"', b'\\"')
    if b"\t" in data:
        data = data.replace(b"\t", b"\\t")
    if b"\r" in data:
        data = data.replace(b"\r", b"\\r")
    if data.translate(None, _NOT_CONTROL):
        data = _JSON_CONTROL.sub(_json_control, data)
    return data


def _info_fields(info: SourceInfo | None) -> dict[str, str | None]:
    if info is None:
        return {"namespace": None, "pod": None, "container": None}
    return {
        "namespace": info.namespace,
        "pod": info.pod,
        "container": info.container or info.label,
    }


class JsonFormatter(Formatter):
    """One JSON object a line: time, stream, namespace, pod, container, line, partial."""

    def __init__(self) -> None:
        self._sources: dict[SourceInfo | None, bytes] = {}

    def _head(self, run: LineRun) -> bytes:
        who = self._sources.get(run.source)
        if who is None:
            import json

            who = self._sources[run.source] = json.dumps(_info_fields(run.source))[1:-1].encode()
        time = fixed_timestamp(run.timestamp)
        if len(time) != TIMESTAMP_WIDTH:
            import json

            # Only an unparsable timestamp is left as it was: let json quote it.
            time = json.dumps(time.decode("ascii", "replace"))[1:-1].encode()
        return b'{"time": "%s", "stream": "%s", %s, "line": "' % (time, run.stream, who)

    def run(self, run: LineRun) -> bytes:
        head = self._head(run)
        tail = b'", "partial": false}\n' if run.complete else b'", "partial": true}\n'
        if run.prefix and not run.prefix.translate(None, _PLAIN_JSON):
            # Escaping leaves such a record prefix as it is: replace it in one pass.
            body = json_escape_lines(run.records)
            return head + replace_prefixes(body[:-1], run.prefix, tail + head) + tail
        body = json_escape_lines(run.data)
        return head + body[:-1].replace(b"\n", tail + head) + tail


class TemplateError(ValueError):
    """A ``--template`` that cannot be used (unknown field, bad syntax)."""


class TemplateFormatter(Formatter):
    """``str.format`` templates over :data:`FIELDS`; a newline ends every line.

    When ``{line}`` appears once, plainly, the text around it is formatted once per
    run and the lines are spliced in as raw bytes; otherwise each line is formatted
    on its own, with its bytes carried through ``surrogateescape`` so that both ways
    give the same bytes.
    """

    def __init__(self, template: str) -> None:
        import string

        self.template = template
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise TemplateError(f"bad template {template!r}: {exc}") from None
        line_fields = 0
        plain_line = True
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in FIELDS:
                known = ", ".join("{" + field + "}" for field in FIELDS)
                raise TemplateError(f"unknown field {{{name}}} in template (known: {known})")
            if name == "line":
                line_fields += 1
                plain_line = plain_line and not spec and conversion is None
        self._split: tuple[str, str] | None = None
        if line_fields == 1 and plain_line:
            pieces = ["", ""]
            side = 0
            for literal, name, spec, conversion in parsed:
                pieces[side] += literal.replace("{", "{{").replace("}", "}}")
                if name == "line":
                    side = 1
                elif name is not None:
                    convert = f"!{conversion}" if conversion else ""
                    pieces[side] += "{" + name + convert + (f":{spec}" if spec else "") + "}"
            self._split = (pieces[0], pieces[1])
        self._parts: dict[tuple[SourceInfo | None, bytes, bytes], tuple[bytes, bytes]] = {}
        try:
            self._format(self.template, self._fields(None, b"stdout", b""), "")
        except (ValueError, IndexError, KeyError) as exc:
            raise TemplateError(f"bad template {template!r}: {exc}") from None

    @staticmethod
    def _fields(info: SourceInfo | None, stream: bytes, timestamp: bytes) -> dict[str, str]:
        fields = {key: value or "" for key, value in _info_fields(info).items()}
        fields["stream"] = stream.decode("ascii")
        fields["time"] = fixed_timestamp(timestamp).decode("ascii", "replace")
        return fields

    @staticmethod
    def _format(text: str, fields: dict[str, str], line: str) -> bytes:
        return text.format_map({**fields, "line": line}).encode("utf-8", "surrogateescape")

    def run(self, run: LineRun) -> bytes:
        if self._split is None:
            fields = self._fields(run.source, run.stream, run.timestamp)
            out = [
                self._format(self.template, fields, content.decode("utf-8", "surrogateescape"))
                + b"\n"
                for content in run.data[:-1].split(b"\n")
            ]
            return b"".join(out)
        key = (run.source, run.stream, run.timestamp)
        parts = self._parts.get(key)
        if parts is None:
            if len(self._parts) > 4096:
                self._parts.clear()
            fields = self._fields(run.source, run.stream, run.timestamp)
            left, right = self._split
            parts = self._parts[key] = (
                self._format(left, fields, ""),
                self._format(right, fields, "") + b"\n",
            )
        left_bytes, right_bytes = parts
        if run.prefix:
            records = replace_prefixes(run.records[:-1], run.prefix, right_bytes + left_bytes)
            return left_bytes + records + right_bytes
        return left_bytes + run.data[:-1].replace(b"\n", right_bytes + left_bytes) + right_bytes
