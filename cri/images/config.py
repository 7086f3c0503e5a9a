"""The ``[images]`` part of rktlet's TOML configuration.

Example::

    [images]
    max_concurrent_downloads = 3      # layers fetched in parallel per pull
    retries = 2                       # extra attempts per blob after a transfer error
    platform = "linux/amd64"          # default: this machine's

    [images.registries."docker.io"]
    mirrors = ["https://mirror.example.net", "http://10.0.0.5:5000"]

    [images.registries."registry.local:5000"]
    insecure = true                   # plain HTTP

Mirrors are tried in order, then the registry itself.  A mirror given without a scheme
uses HTTPS unless the mirror's own host is listed with ``insecure = true``.
"""

from __future__ import annotations

import platform as _platform
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cri.errors import InvalidArgument

__all__ = [
    "ImagesConfig",
    "Platform",
    "RegistryConfig",
    "host_platform",
    "load_images_config",
    "load_images_config_file",
]


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, value: str, field_name: str = "platform") -> Platform:
        parts = value.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(
                f"{field_name}: {value!r} is not os/architecture[/variant] (e.g. linux/amd64)"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


# uname -m spellings → OCI (GOARCH) architecture and variant.
_MACHINE_TO_OCI = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    machine = _platform.machine()
    arch, variant = _MACHINE_TO_OCI.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Settings of one registry host (``host[:port]`` as it appears in image names)."""

    host: str
    mirrors: tuple[str, ...] = ()
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    registries: Mapping[str, RegistryConfig] = field(default_factory=dict)
    max_concurrent_downloads: int = 3
    retries: int = 2
    platform: Platform = field(default_factory=host_platform)

    def registry(self, host: str) -> RegistryConfig:
        return self.registries.get(host) or RegistryConfig(host=host)

    def endpoints(self, domain: str, api_host: str) -> list[str]:
        """Base URLs to try for a repository in ``domain``: mirrors in order, then upstream."""
        reg = self.registry(domain)
        urls = [self._endpoint_url(m) for m in reg.mirrors]
        upstream_insecure = reg.insecure or self.registry(api_host).insecure
        urls.append(f"{'http' if upstream_insecure else 'https'}://{api_host}")
        return urls

    def _endpoint_url(self, endpoint: str) -> str:
        if "://" in endpoint:
            return endpoint.rstrip("/")
        insecure = self.registry(endpoint).insecure
        return f"{'http' if insecure else 'https'}://{endpoint.rstrip('/')}"


def _expect(value: Any, kind: type, where: str) -> Any:
    # bool is an int subclass, so a plain isinstance would accept `retries = true`.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _check_mirror(value: Any, where: str) -> str:
    text: str = _expect(value, str, where)
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"{where}: {text!r} is not an http(s) URL")
    elif not text or "/" in text.strip("/"):
        raise InvalidArgument(f"{where}: {text!r} is not host[:port] or an http(s) URL")
    return text


def load_images_config(document: Mapping[str, Any]) -> ImagesConfig:
    """Build the images configuration from a parsed TOML document (the whole file).

    Unknown keys are errors: a misspelt ``insecure`` silently ignored would send
    credentials over the wrong transport or never use a mirror.
    """
    section = document.get("images", {})
    _expect(section, dict, "images")
    known = {"registries", "max_concurrent_downloads", "retries", "platform"}
    for key in section:
        if key not in known:
            raise InvalidArgument(f"images.{key}: unknown setting")
    registries: dict[str, RegistryConfig] = {}
    for host, table in _expect(section.get("registries", {}), dict, "images.registries").items():
        where = f'images.registries."{host}"'
        _expect(table, dict, where)
        for key in table:
            if key not in ("mirrors", "insecure"):
                raise InvalidArgument(f"{where}.{key}: unknown setting")
        mirrors = _expect(table.get("mirrors", []), list, f"{where}.mirrors")
        registries[host] = RegistryConfig(
            host=host,
            mirrors=tuple(_check_mirror(m, f"{where}.mirrors[{i}]") for i, m in enumerate(mirrors)),
            insecure=_expect(table.get("insecure", False), bool, f"{where}.insecure"),
        )
    downloads = _expect(
        section.get("max_concurrent_downloads", 3), int, "images.max_concurrent_downloads"
    )
    if downloads < 1:
        raise InvalidArgument("images.max_concurrent_downloads: must be at least 1")
    retries = _expect(section.get("retries", 2), int, "images.retries")
    if retries < 0:
        raise InvalidArgument("images.retries: must not be negative")
    plat = section.get("platform")
    return ImagesConfig(
        registries=registries,
        max_concurrent_downloads=downloads,
        retries=retries,
        platform=(
            Platform.parse(_expect(plat, str, "images.platform"), "images.platform")
            if plat is not None
            else host_platform()
        ),
    )


def load_images_config_file(path: Path) -> ImagesConfig:
    """Read ``path`` (TOML); a missing file means the defaults."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ImagesConfig()
    try:
        document = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from exc
    return load_images_config(document)
