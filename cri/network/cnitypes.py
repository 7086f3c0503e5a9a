"""CNI data types: plugin results and errors, parsed from the plugins' JSON.

Pure functions over bytes and dicts; no I/O.  Results of spec 0.3.x/0.4.0 (whose
``ips`` entries carry a ``version``) and 1.x (which dropped it) are both accepted.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cri.errors import RktletError

__all__ = [
    "CNIError",
    "CNIErrorCode",
    "CNIResult",
    "DNSInfo",
    "IPConfig",
    "InterfaceInfo",
    "RouteInfo",
    "parse_plugin_error",
    "parse_result",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CNIErrorCode(enum.IntEnum):
    """Well-known CNI error codes (1-99 are reserved by the spec, 100+ are the plugin's).

    ``RUNTIME`` (0) is never sent by a plugin: it marks a failure detected by rktlet
    itself (plugin binary missing, time-out, unparseable output).
    """

    RUNTIME = 0
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50
    PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY = 51


def _code_name(code: int) -> str:
    try:
        return CNIErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "plugin-specific" if code >= 100 else "reserved"


class CNIError(RktletError):
    """A CNI operation failed: the plugin's error JSON, or a failure around the plugin.

    ``code``, ``msg`` and ``details`` are the fields of the spec's error object
    (``code`` is :attr:`CNIErrorCode.RUNTIME` when rktlet, not a plugin, failed).
    ``command`` is ADD/DEL/CHECK/STATUS/VERSION, ``plugin`` the plugin type and
    ``network`` the network name, when known.  Maps to gRPC UNKNOWN, as containerd's
    network set-up errors do.
    """

    def __init__(
        self,
        code: int,
        msg: str,
        details: str = "",
        *,
        command: str | None = None,
        plugin: str | None = None,
        network: str | None = None,
    ) -> None:
        self.code = code
        self.msg = msg
        self.details = details
        self.command = command
        self.plugin = plugin
        self.network = network
        where = []
        if command:
            where.append(f"CNI {command}")
        if network:
            where.append(f"network {network!r}")
        if plugin:
            where.append(f"plugin {plugin!r}")
        prefix = ", ".join(where)
        text = msg
        if code != CNIErrorCode.RUNTIME:
            text += f" (CNI error {code}, {_code_name(code)})"
        if details:
            text += f": {details}"
        super().__init__(f"{prefix}: {text}" if prefix else text)

    @property
    def temporary(self) -> bool:
        """The plugin asked to be retried later (code 11)."""
        return self.code == CNIErrorCode.TRY_AGAIN_LATER


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    mac: str = ""
    # Netns path for interfaces inside the container; empty for host-side ones.
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    # Index into CNIResult.interfaces, when the plugin said which interface.
    interface: int | None = None


@dataclass(frozen=True, slots=True)
class RouteInfo:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class DNSInfo:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class CNIResult:
    """A plugin's ADD result.  ``raw`` is the JSON as received, for prevResult chaining."""

    cni_version: str
    interfaces: tuple[InterfaceInfo, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[RouteInfo, ...] = ()
    dns: DNSInfo = field(default_factory=DNSInfo)
    raw: Mapping[str, Any] = field(default_factory=dict)

    def sandbox_ips(self) -> tuple[IPConfig, ...]:
        """The addresses on interfaces inside the container (or all, if none says)."""
        inside = tuple(
            ip
            for ip in self.ips
            if ip.interface is not None
            and 0 <= ip.interface < len(self.interfaces)
            and self.interfaces[ip.interface].sandbox
        )
        return inside or self.ips


class _Malformed(ValueError):
    pass


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Malformed(f"{where}.{key} is missing")
        return ""
    if not isinstance(value, str):
        raise _Malformed(f"{where}.{key} must be a string")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{where}.{key} must be a list")
    return value


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} must be an object")
    return value


def _strings(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _list(obj, key, where)
    if not all(isinstance(s, str) for s in items):
        raise _Malformed(f"{where}.{key} must be a list of strings")
    return tuple(items)


def _parse_interface(obj: Mapping[str, Any], where: str) -> InterfaceInfo:
    return InterfaceInfo(
        name=_str(obj, "name", where, required=True),
        mac=_str(obj, "mac", where),
        sandbox=_str(obj, "sandbox", where),
    )


def _parse_ip(obj: Mapping[str, Any], where: str) -> IPConfig:
    try:
        address = ipaddress.ip_interface(_str(obj, "address", where, required=True))
        gw_text = _str(obj, "gateway", where)
        gateway = ipaddress.ip_address(gw_text) if gw_text else None
    except ValueError as exc:
        raise _Malformed(f"{where}: {exc}") from exc
    index = obj.get("interface")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise _Malformed(f"{where}.interface must be an integer")
    return IPConfig(address=address, gateway=gateway, interface=index)


def _parse_route(obj: Mapping[str, Any], where: str) -> RouteInfo:
    try:
        dst = ipaddress.ip_network(_str(obj, "dst", where, required=True), strict=False)
        gw_text = _str(obj, "gw", where)
        gw = ipaddress.ip_address(gw_text) if gw_text else None
    except ValueError as exc:
        raise _Malformed(f"{where}: {exc}") from exc
    return RouteInfo(dst=dst, gw=gw)


def parse_result(data: object, *, default_version: str = "") -> CNIResult:
    """Parse an ADD result (already JSON-decoded).  Raises :class:`ValueError` if malformed."""
    top = _obj(data, "result")
    version = _str(top, "cniVersion", "result") or default_version
    interfaces = tuple(
        _parse_interface(_obj(x, f"interfaces[{i}]"), f"interfaces[{i}]")
        for i, x in enumerate(_list(top, "interfaces", "result"))
    )
    ips = tuple(
        _parse_ip(_obj(x, f"ips[{i}]"), f"ips[{i}]")
        for i, x in enumerate(_list(top, "ips", "result"))
    )
    routes = tuple(
        _parse_route(_obj(x, f"routes[{i}]"), f"routes[{i}]")
        for i, x in enumerate(_list(top, "routes", "result"))
    )
    dns_obj = _obj(top.get("dns") or {}, "dns")
    dns = DNSInfo(
        nameservers=_strings(dns_obj, "nameservers", "dns"),
        domain=_str(dns_obj, "domain", "dns"),
        search=_strings(dns_obj, "search", "dns"),
        options=_strings(dns_obj, "options", "dns"),
    )
    return CNIResult(
        cni_version=version, interfaces=interfaces, ips=ips, routes=routes, dns=dns, raw=top
    )


def parse_plugin_error(
    stdout: bytes,
    stderr: bytes,
    returncode: int,
    *,
    command: str | None = None,
    plugin: str | None = None,
    network: str | None = None,
) -> CNIError:
    """Turn a failed plugin run into a :class:`CNIError`.

    The spec's error object on stdout gives code/msg/details; anything else (a crash,
    a non-JSON message) becomes a RUNTIME error quoting what the plugin printed.
    """
    text = stdout.strip()
    if text:
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("code"), int):
            msg = obj.get("msg")
            details = obj.get("details")
            return CNIError(
                obj["code"],
                msg if isinstance(msg, str) and msg else "plugin reported an error",
                details if isinstance(details, str) else "",
                command=command,
                plugin=plugin,
                network=network,
            )
    output = (text or stderr.strip()).decode("utf-8", "replace")
    if len(output) > 2000:
        output = output[:2000] + "..."
    how = f"exit status {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    return CNIError(
        CNIErrorCode.RUNTIME,
        f"plugin failed ({how})",
        output,
        command=command,
        plugin=plugin,
        network=network,
    )
