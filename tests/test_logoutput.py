"""Formats: a run's output is byte for byte the output of its lines one at a time."""

from __future__ import annotations

import json

import pytest

from iottymux.loglines import LineRun
from iottymux.logoutput import (
    JsonFormatter,
    Labeller,
    RawFormatter,
    TemplateError,
    TemplateFormatter,
    color_of,
)
from iottymux.logsegments import SourceInfo

TS = b"2024-01-02T03:04:05.000000001Z"
INFO = SourceInfo("web-1/app", "default", "web-1", "u1", "app")
LINES = [
    b"plain",
    b"",
    b'quote " and \\ back',
    b"tab\tcr\rnul\x00bell\x07",
    b"\xff\xfe\xc3(",
    b"\xe2\x82\xac uro",
]


def one_run() -> LineRun:
    return LineRun(TS, b"stderr", b"".join(x + b"\n" for x in LINES), len(LINES), True, INFO)


def single_runs() -> list[LineRun]:
    return [LineRun(TS, b"stderr", x + b"\n", 1, True, INFO) for x in LINES]


def test_json_equals_json_dumps_of_each_line() -> None:
    out = JsonFormatter().run(one_run())
    expected = b"".join(
        json.dumps(
            {
                "time": TS.decode(),
                "stream": "stderr",
                "namespace": "default",
                "pod": "web-1",
                "container": "app",
                "line": line.decode("utf-8", "replace"),
                "partial": False,
            },
            ensure_ascii=False,
        ).encode()
        + b"\n"
        for line in LINES
    )
    assert out == expected
    incomplete = LineRun(TS, b"stdout", b"cut\n", 1, False, None)
    record = json.loads(JsonFormatter().run(incomplete))
    assert record["partial"] is True and record["namespace"] is None and record["line"] == "cut"


@pytest.mark.parametrize(
    "template",
    [
        "{namespace}/{pod} {container} {stream} {time} {line}",
        "{line}",
        "[{pod:>8}] {line} <{{literal}}>",
        "{line!r}",  # not a plain {line}: formatted line by line
        "{line} and again {line}",
    ],
)
def test_template_run_equals_lines(template: str) -> None:
    formatter = TemplateFormatter(template)
    whole = formatter.run(one_run())
    assert whole == b"".join(formatter.run(r) for r in single_runs())
    assert whole.count(b"\n") == len(LINES)
    # Raw bytes survive (no replacement characters) when {line} is plain.
    if template == "{line}":
        assert whole == b"".join(x + b"\n" for x in LINES)


@pytest.mark.parametrize("bad", ["{bogus}", "{line", "{pod.x}", "{0}"])
def test_bad_templates(bad: str) -> None:
    with pytest.raises(TemplateError):
        TemplateFormatter(bad)


def test_raw_prefixes_timestamps_and_an_unfinished_line() -> None:
    labeller = Labeller(color=False)
    labeller.default_show = "namespace"
    raw = RawFormatter(labeller=labeller, timestamps=True, plain_partial=False)
    out = raw.run(one_run())
    assert out.split(b"\n")[0] == b"[default/web-1/app] " + TS + b" plain"
    assert out == b"".join(raw.run(r) for r in single_runs())
    bare = RawFormatter(labeller=None, timestamps=False, plain_partial=True)
    assert bare.run(LineRun(TS, b"stdout", b"no newline\n", 1, False, None)) == b"no newline"


def test_colours_are_a_hash_of_the_names() -> None:
    a = Labeller(color=True)
    b = Labeller(color=True)
    a.default_show = b.default_show = "pod"
    other = SourceInfo("web-1/side", "default", "web-1", "u1", "side")
    assert a.prefix(INFO) == b.prefix(INFO)  # the same in every run of the command
    pod_colour = color_of("default/web-1")
    assert a.prefix(INFO).startswith(b"[" + pod_colour + b"web-1")
    assert a.prefix(other).startswith(b"[" + pod_colour + b"web-1")  # same pod, same colour
    assert color_of("default/web-1/app") in a.prefix(INFO)
    assert color_of("x") == color_of("x")


def test_same_labels_are_told_apart() -> None:
    labeller = Labeller(color=False)
    first = SourceInfo("0.log")
    second = SourceInfo("0.log")
    assert labeller.prefix(first) == b"[0.log] "
    # Equal infos are one source; a distinct one with the same name gets a suffix.
    third = SourceInfo("0.log", container="0.log")
    assert labeller.prefix(second) == b"[0.log] "
    assert labeller.prefix(third) == b"[0.log#2] "


def prefixed_runs() -> list[LineRun]:
    """The same lines as :func:`one_run`, still carrying their record prefixes."""
    prefix = TS + b" stderr F "
    records = LINES[0] + b"\n" + b"".join(prefix + x + b"\n" for x in LINES[1:])
    kept = LineRun(TS, b"stderr", records, len(LINES), True, INFO, -1, prefix)
    return [kept, one_run()]


@pytest.mark.parametrize(
    "make",
    [
        lambda: JsonFormatter(),
        lambda: TemplateFormatter("{pod} {time} {line}"),
        lambda: RawFormatter(labeller=Labeller(color=True), timestamps=True, plain_partial=False),
        lambda: RawFormatter(labeller=None, timestamps=False, plain_partial=True),
    ],
)
def test_replacing_record_prefixes_in_one_pass_gives_the_same_bytes(make: object) -> None:
    kept, stripped = prefixed_runs()
    formatter = make()  # type: ignore[operator]
    assert formatter.run(kept) == formatter.run(stripped)
    assert kept.data == stripped.data and not kept.prefix  # stripped on demand


def test_a_record_prefix_json_would_escape_is_not_replaced_blindly() -> None:
    odd = TS + b' stderr F:"x '
    records = b"a\n" + odd + b"b\n"
    kept = LineRun(TS, b"stderr", records, 2, True, INFO, -1, odd)
    lines = [json.loads(x)["line"] for x in JsonFormatter().run(kept).splitlines()]
    assert lines == ["a", "b"]
