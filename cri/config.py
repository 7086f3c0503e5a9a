"""The daemon's configuration: a TOML file, then command-line flags over it.

Every flag of ``rktlet serve`` is also a key of the file (``--cni-conf-dir`` is
``cni_conf_dir``); the image section (``[images]``, mirrors and plain-HTTP
registries) is read by :mod:`cri.images.config`.  Unknown keys are errors that
name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri.errors import InvalidArgument

DEFAULT_SOCKET = "/run/rktlet/rktlet.sock"
DEFAULT_ROOT = "/var/lib/rktlet"
DEFAULT_RUN_DIR = "/run/rktlet"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class Config:
    socket: str = DEFAULT_SOCKET
    root: str = DEFAULT_ROOT
    run_dir: str = DEFAULT_RUN_DIR
    #: The default runtime handler's binary (runc or crun, a name or a path).
    runtime: str = "runc"
    #: CRI runtime handlers: name -> binary.  "" is the default handler.
    runtime_handlers: dict[str, str] = field(default_factory=dict)
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dir: str = "/usr/lib/cni"
    #: Subnet of the built-in bridge network used when no CNI config exists.
    default_subnet: str = "10.88.0.0/16"
    registry_mirrors: list[str] = field(default_factory=list)
    insecure_registries: list[str] = field(default_factory=list)
    stream_address: str = "127.0.0.1:0"
    stream_tls_cert: str = ""
    stream_tls_key: str = ""
    log_level: str = "info"
    cgroup_driver: str = "cgroupfs"
    #: Prometheus metrics HOST:PORT; empty (the default) serves no metrics.
    metrics_address: str = ""
    #: Seconds between two measurements of the image store and the containers' writable
    #: layers (ImageFsInfo, container stats answer from the last one), as containerd's 10.
    fs_usage_period: float = 10.0
    #: The raw TOML document, for sections read by other modules ([images]).
    document: dict[str, Any] = field(default_factory=dict)

    def handler_binary(self, handler: str) -> str:
        if not handler:
            return self.runtime_handlers.get("", self.runtime)
        try:
            return self.runtime_handlers[handler]
        except KeyError:
            raise InvalidArgument(
                f"runtime_handler: unknown runtime handler {handler!r} "
                f"(known: {', '.join(sorted(self.handlers())) or 'none'})"
            ) from None

    def handlers(self) -> dict[str, str]:
        return {"": self.runtime, **self.runtime_handlers}


_KEYS = {f for f in Config.__dataclass_fields__ if f != "document"}


def _apply(config: Config, key: str, value: Any, where: str) -> None:
    if key not in _KEYS:
        raise InvalidArgument(f"{where}{key}: unknown configuration key")
    current = getattr(config, key)
    if isinstance(current, dict):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InvalidArgument(f"{where}{key}: must be a table of strings")
        setattr(config, key, dict(value))
    elif isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{where}{key}: must be a list of strings")
        setattr(config, key, list(value))
    elif isinstance(current, float):
        # bool is an int: ``fs_usage_period = true`` is a mistake, not 1 second.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{where}{key}: must be a number")
        setattr(config, key, float(value))
    else:
        if not isinstance(value, str):
            raise InvalidArgument(f"{where}{key}: must be a string")
        setattr(config, key, value)


def load_file(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise InvalidArgument(f"config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config: {path} is not valid TOML: {exc}") from None
    config = Config(document=document)
    for key, value in document.items():
        if key == "images":
            continue
        _apply(config, key, value, "")
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rktlet serve",
        description="Serve the CRI v1 RuntimeService and ImageService on a unix socket.",
    )
    parser.add_argument("--config", help="TOML file; flags override its keys")
    parser.add_argument("--socket", help=f"gRPC unix socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--root", help=f"persistent state (default {DEFAULT_ROOT})")
    parser.add_argument("--run-dir", help=f"runtime state, tmpfs (default {DEFAULT_RUN_DIR})")
    parser.add_argument("--runtime", help="OCI runtime of the default handler: runc or crun")
    parser.add_argument(
        "--runtime-handler",
        action="append",
        default=[],
        metavar="NAME=BINARY",
        help="an extra CRI runtime handler (repeatable)",
    )
    parser.add_argument("--cni-conf-dir", help="CNI network configs (default /etc/cni/net.d)")
    parser.add_argument("--cni-bin-dir", help="CNI plugin binaries (default /usr/lib/cni)")
    parser.add_argument("--default-subnet", help="subnet of the built-in bridge network")
    parser.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="a registry mirror, tried before HOST (repeatable)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="a registry reached over plain HTTP (repeatable)",
    )
    parser.add_argument("--stream-address", help="streaming server HOST:PORT (127.0.0.1:0)")
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.add_argument("--cgroup-driver", choices=("cgroupfs", "systemd"))
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT|unix:///PATH",
        help="serve Prometheus metrics on HOST:PORT or a unix socket (default: off)",
    )
    parser.add_argument(
        "--fs-usage-period",
        type=float,
        metavar="SECONDS",
        help="how often the image and container filesystems are measured (default 10)",
    )
    return parser


def load(argv: list[str]) -> Config:
    args = build_parser().parse_args(argv)
    config = load_file(args.config) if args.config else Config()
    for key in (
        "socket",
        "root",
        "run_dir",
        "runtime",
        "cni_conf_dir",
        "cni_bin_dir",
        "default_subnet",
        "stream_address",
        "log_level",
        "cgroup_driver",
        "metrics_address",
        "fs_usage_period",
    ):
        value = getattr(args, key)
        if value is not None:
            setattr(config, key, value)
    for item in args.runtime_handler:
        name, sep, binary = item.partition("=")
        if not sep or not name or not binary:
            raise InvalidArgument(f"--runtime-handler: {item!r} is not NAME=BINARY")
        config.runtime_handlers[name] = binary
    for item in args.registry_mirror:
        if "=" not in item:
            raise InvalidArgument(f"--registry-mirror: {item!r} is not HOST=URL")
        config.registry_mirrors.append(item)
    config.insecure_registries.extend(args.insecure_registry)
    for key in ("socket", "root", "run_dir"):
        if not Path(getattr(config, key)).is_absolute():
            raise InvalidArgument(f"{key}: must be an absolute path")
    if config.metrics_address and not config.metrics_address.startswith("unix://"):
        _host, sep, port = config.metrics_address.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument(f"metrics_address: {config.metrics_address!r} is not HOST:PORT")
    if not config.fs_usage_period > 0:  # also NaN
        raise InvalidArgument(
            f"fs_usage_period: must be a number of seconds above 0, not {config.fs_usage_period}"
        )
    if config.log_level not in LOG_LEVELS:
        raise InvalidArgument(f"log_level: must be one of {', '.join(LOG_LEVELS)}")
    return config


def images_document(config: Config) -> dict[str, Any]:
    """The [images] section, with the flag-given mirrors and insecure registries merged."""
    images: dict[str, Any] = dict(config.document.get("images", {}))
    registries: dict[str, Any] = {
        k: dict(v) for k, v in images.get("registries", {}).items() if isinstance(v, dict)
    }
    for item in config.registry_mirrors:
        host, _, url = item.partition("=")
        entry = registries.setdefault(host, {})
        entry["mirrors"] = [*entry.get("mirrors", []), url]
    for host in config.insecure_registries:
        registries.setdefault(host, {})["insecure"] = True
    if registries:
        images["registries"] = registries
    return images
