"""CNI network configuration: loading, validation, the built-in default network, and the
derivation of each plugin's execution config (spec section 3).

Pure apart from :func:`load_config_dir`, which only reads files.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_SOURCE",
    "CONFIG_EXTENSIONS",
    "ConfigInvalid",
    "LoadedConfig",
    "NetworkConfigList",
    "SUPPORTED_VERSIONS",
    "default_config_list",
    "derive_plugin_config",
    "load_config_dir",
    "parse_config_list",
    "version_tuple",
]

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CONFIG_EXTENSIONS: tuple[str, ...] = (".conflist", ".conf", ".json")
BUILTIN_SOURCE = "<built-in>"
_MAX_CONFIG_BYTES = 1 << 20
# The spec's rule for network names (and container IDs).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ConfigInvalid(ValueError):
    """Why a network configuration was rejected (the message is the reason)."""


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; raises :class:`ValueError` on anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{version!r} is not a semantic version")
    return int(parts[0]), int(parts[1]), int(parts[2])


@dataclass(frozen=True, slots=True, eq=False)
class NetworkConfigList:
    """A validated network configuration list (a single-plugin ``.conf`` is wrapped).

    ``raw`` is the JSON object as loaded, kept so that DEL can be run later with exactly
    the configuration ADD used, even after the file changed.
    """

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False
    source: str = BUILTIN_SOURCE
    raw: Mapping[str, Any] = field(default_factory=dict)

    def binaries(self) -> tuple[str, ...]:
        """Every executable the network needs: plugin types and their IPAM plugin types."""
        seen: dict[str, None] = {}
        for plugin in self.plugins:
            seen[plugin["type"]] = None
            ipam = plugin.get("ipam")
            if isinstance(ipam, dict) and isinstance(ipam.get("type"), str):
                seen[ipam["type"]] = None
        return tuple(seen)

    @property
    def version(self) -> tuple[int, int, int]:
        return version_tuple(self.cni_version)

    @property
    def passes_prev_result_on_del(self) -> bool:
        """DEL carries prevResult from spec 0.4.0 on."""
        return self.version >= (0, 4, 0)

    @property
    def supports_check(self) -> bool:
        return self.version >= (0, 4, 0) and not self.disable_check

    @property
    def supports_status(self) -> bool:
        return self.version >= (1, 1, 0)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The outcome of scanning a conf dir: the chosen network (if any) and the rejects."""

    config: NetworkConfigList | None
    skipped: tuple[tuple[str, str], ...] = ()


def _plugin_type(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigInvalid(f"{where}.type must be a non-empty string")
    if "/" in value or "\\" in value or value in (".", "..") or "\0" in value:
        raise ConfigInvalid(f"{where}.type {value!r} is not a plugin name")
    return value


def _check_plugin(plugin: object, where: str) -> Mapping[str, Any]:
    if not isinstance(plugin, dict):
        raise ConfigInvalid(f"{where} must be an object")
    _plugin_type(plugin.get("type"), where)
    ipam = plugin.get("ipam")
    if ipam is not None:
        if not isinstance(ipam, dict):
            raise ConfigInvalid(f"{where}.ipam must be an object")
        # An ipam section without a type is legal for plugins that ignore it.
        if "type" in ipam:
            _plugin_type(ipam["type"], f"{where}.ipam")
    for key in ("capabilities", "runtimeConfig"):
        if key in plugin and not isinstance(plugin[key], dict):
            raise ConfigInvalid(f"{where}.{key} must be an object")
    return plugin


def _choose_version(obj: Mapping[str, Any]) -> str:
    declared = obj.get("cniVersion")
    if not isinstance(declared, str) or not declared:
        raise ConfigInvalid("cniVersion is missing")
    candidates = [declared]
    # Spec 1.1.0: an administrator may list several versions; use the newest we speak.
    extra = obj.get("cniVersions")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(v, str) for v in extra):
            raise ConfigInvalid("cniVersions must be a list of strings")
        candidates.extend(extra)
    usable = [v for v in candidates if v in SUPPORTED_VERSIONS]
    if not usable:
        raise ConfigInvalid(
            f"cniVersion {declared!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    return max(usable, key=version_tuple)


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    # libcni also accepts the strings, and configs in the wild use them.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigInvalid(f"{key} must be a boolean")
    return value


def parse_config_list(data: bytes | str | Mapping[str, Any], source: str) -> NetworkConfigList:
    """Validate a conflist, or a single-plugin conf (which is wrapped into a list).

    Raises :class:`ConfigInvalid` with the reason.
    """
    if isinstance(data, bytes | str):
        if not data.strip():
            raise ConfigInvalid("file is empty")
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise ConfigInvalid(f"not valid JSON: {exc}") from exc
    else:
        obj = data
    if not isinstance(obj, dict):
        raise ConfigInvalid("top level must be a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigInvalid("name is missing")
    if not _NAME_RE.match(name):
        raise ConfigInvalid(
            f"name {name!r} must start with a letter or digit and contain only "
            "letters, digits, '_', '.' and '-'"
        )
    version = _choose_version(obj)
    if "plugins" in obj:
        plugins = obj["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ConfigInvalid("plugins must be a non-empty list")
        checked = tuple(_check_plugin(p, f"plugins[{i}]") for i, p in enumerate(plugins))
        raw = obj
    elif source.endswith(".conflist"):
        raise ConfigInvalid("a .conflist needs a plugins list")
    else:
        checked = (_check_plugin(obj, "config"),)
        raw = {"cniVersion": obj["cniVersion"], "name": name, "plugins": [obj]}
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=checked,
        disable_check=_bool(obj, "disableCheck"),
        source=source,
        raw=raw,
    )


def _candidates(conf_dir: Path) -> Iterator[Path]:
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(CONFIG_EXTENSIONS) and not name.startswith("."):
            path = conf_dir / name
            if path.is_file():
                yield path


def load_config_dir(conf_dir: str | os.PathLike[str] | None) -> LoadedConfig:
    """The first valid configuration in ``conf_dir`` in lexical order, plus the rejects.

    A missing directory is the same as an empty one.  Unreadable or invalid files are
    skipped, each with its reason.
    """
    if conf_dir is None:
        return LoadedConfig(None)
    skipped: list[tuple[str, str]] = []
    for path in _candidates(Path(conf_dir)):
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_CONFIG_BYTES + 1)
            if len(data) > _MAX_CONFIG_BYTES:
                raise ConfigInvalid(f"larger than {_MAX_CONFIG_BYTES} bytes")
            config = parse_config_list(data, str(path))
        except ConfigInvalid as exc:
            skipped.append((str(path), str(exc)))
        except OSError as exc:
            skipped.append((str(path), f"unreadable: {exc.strerror or exc}"))
        else:
            return LoadedConfig(config, tuple(skipped))
    return LoadedConfig(None, tuple(skipped))


def default_config_list(
    *,
    ipam_data_dir: str | os.PathLike[str],
    subnet: str = "10.88.0.0/16",
    name: str = "rktlet",
    bridge: str = "rktlet0",
    cni_version: str = "1.0.0",
) -> NetworkConfigList:
    """The built-in network: bridge + host-local IPAM, portmap, loopback.

    host-local keeps its allocations under ``ipam_data_dir`` (rktlet's state dir) rather
    than the system-wide /var/lib/cni, so the default network never shares IPAM state
    with networks of other runtimes.  Raises :class:`ValueError` for a bad subnet.
    """
    net = ipaddress.ip_network(subnet, strict=True)
    if net.num_addresses < 4:
        raise ValueError(f"subnet {subnet} is too small for a bridge network")
    if not 1 <= len(bridge) <= 15 or "/" in bridge or any(c.isspace() for c in bridge):
        raise ValueError(f"bridge name {bridge!r} is not a valid interface name")
    default_route = "0.0.0.0/0" if net.version == 4 else "::/0"
    raw: dict[str, Any] = {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                # Lets a pod reach itself through its own host port.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net)}]],
                    "routes": [{"dst": default_route}],
                    "dataDir": os.fspath(ipam_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }
    return parse_config_list(raw, BUILTIN_SOURCE)


def derive_plugin_config(
    netconf: NetworkConfigList,
    plugin: Mapping[str, Any],
    *,
    prev_result: Mapping[str, Any] | None,
    capability_args: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON object a plugin gets on stdin (spec: "Deriving execution configuration").

    ``cniVersion`` and ``name`` come from the list; ``runtimeConfig`` receives only the
    capabilities the plugin declared (``"capabilities": {"portMappings": true}``); plugin
    specific fields pass through untouched.
    """
    conf = dict(plugin)
    conf["cniVersion"] = netconf.cni_version
    conf["name"] = netconf.name
    declared = plugin.get("capabilities")
    if isinstance(declared, dict):
        granted = {k: v for k, v in capability_args.items() if declared.get(k) is True}
        if granted:
            runtime_config = dict(plugin.get("runtimeConfig") or {})
            runtime_config.update(granted)
            conf["runtimeConfig"] = runtime_config
    if prev_result is not None:
        conf["prevResult"] = prev_result
    else:
        conf.pop("prevResult", None)
    return conf
