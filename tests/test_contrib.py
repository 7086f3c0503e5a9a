"""The files in contrib/: a config that loads, a unit whose flags exist, a crictl config."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

from cri.config import Config, build_parser, load_file
from cri.images.config import load_images_config

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"


def test_config_toml_loads_and_documents_every_key() -> None:
    path = CONTRIB / "config.toml"
    config = load_file(str(path))
    images = load_images_config(config.document)
    assert images.max_concurrent_downloads == 3 and images.retries == 2
    # Every key of the daemon's configuration appears in the file (set or commented).
    text = path.read_text()
    for key in Config.__dataclass_fields__:
        if key != "document":
            assert f"\n{key} = " in text or f"[{key}]" in text, key
    # The values given are the defaults.
    defaults = Config()
    for key, value in tomllib.loads(text).items():
        if key != "images":
            assert getattr(defaults, key) == value, key


def test_unit_execstart_flags_exist() -> None:
    unit = (CONTRIB / "rktlet.service").read_text()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    argv = shlex.split(exec_start[0].removeprefix("ExecStart="))
    assert argv[:2] == ["/usr/local/bin/rktlet", "serve"]
    parser = build_parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    flags = [arg.split("=", 1)[0] for arg in argv[2:] if arg.startswith("-")]
    assert flags and set(flags) <= known
    parser.parse_args(argv[2:])  # and they parse as given
    for setting in ("KillMode=process", "Delegate=yes", "Restart=always", "Type=simple"):
        assert f"\n{setting}\n" in unit, setting
    assert "LimitNOFILE=" in unit


def test_crictl_yaml_points_at_the_default_socket() -> None:
    lines = (CONTRIB / "crictl.yaml").read_text().splitlines()
    settings = dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))
    assert settings["runtime-endpoint"] == "unix:///run/rktlet/rktlet.sock"
    assert settings["image-endpoint"] == "unix:///run/rktlet/rktlet.sock"
    assert int(settings["timeout"]) > 0
