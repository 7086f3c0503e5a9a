"""Group options go before or after the verb (``rktlet pod list --runtime-endpoint S``
as well as ``rktlet pod --runtime-endpoint S list``), as crictl and kubectl take them.

No daemon here: a socket path that does not exist is answered before any call, naming
the path, which proves the option was read wherever it stood.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cri import cli
from cri.client import image_store
from cri.client.common import EXIT_UNAVAILABLE, EXIT_USAGE
from cri.client.main import build_parser, is_store_image_command


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }


def _groups() -> list[tuple[str, argparse.ArgumentParser]]:
    store = argparse.ArgumentParser()
    image_store.add_subparsers(store.add_subparsers())
    return [
        *_subparsers(build_parser()).items(),
        ("image (store)", _subparsers(store)["image"]),
    ]


@pytest.mark.parametrize("name, group", _groups(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_verb_takes_its_groups_options(name: str, group: argparse.ArgumentParser) -> None:
    wanted = _options(group)
    assert wanted, f"{name}: the group has options"
    verbs = _subparsers(group)
    assert len(verbs) >= 3
    missing = {verb: wanted - _options(parser) for verb, parser in verbs.items()}
    assert {verb: gaps for verb, gaps in missing.items() if gaps} == {}


@pytest.mark.parametrize(
    "argv",
    [
        ["pod", "list", "--runtime-endpoint", "{sock}"],
        ["pod", "--runtime-endpoint", "{sock}", "list"],
        ["app", "status", "web/x", "--runtime-endpoint={sock}", "-o", "json"],
        ["app", "--runtime-endpoint", "{sock}", "-o", "json", "logs", "web/x"],
        ["image", "list", "--runtime-endpoint", "{sock}"],
        ["image", "--runtime-endpoint", "{sock}", "rm", "busybox"],
    ],
)
def test_cri_options_before_or_after_the_verb(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(tmp_path / "nothing-here.sock")
    assert cli.main([word.replace("{sock}", sock) for word in argv]) == EXIT_UNAVAILABLE
    assert f"no CRI socket at {sock}" in capsys.readouterr().err


def test_the_verbs_value_wins_over_the_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, last = str(tmp_path / "first.sock"), str(tmp_path / "last.sock")
    assert cli.main(["pod", "--runtime-endpoint", first, "list", "--runtime-endpoint", last]) == 3
    assert f"no CRI socket at {last}" in capsys.readouterr().err
    # A bad value after the verb is still checked (not silently dropped).
    assert cli.main(["app", "list", "--timeout", "0"]) == EXIT_USAGE
    assert "--timeout: must be positive" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, store",
    [
        (["import", "FILE"], True),
        (["import", "--root", "DIR", "FILE"], True),
        (["--root", "DIR", "import", "FILE"], True),
        (["list", "--root", "DIR"], True),
        (["pull", "busybox", "--config=FILE"], True),
        (["list"], False),
        (["pull", "busybox", "--runtime-endpoint", "S"], False),
        (["list", "--", "--root"], False),
    ],
)
def test_store_commands_are_told_apart(argv: list[str], store: bool) -> None:
    assert is_store_image_command(argv) is store
