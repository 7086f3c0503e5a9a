"""A pod's ``resolv.conf``, ``hosts`` and ``hostname``, written into its pod directory
for the containers to bind-mount.

Everything is validated and rendered before anything is written, so a bad request
leaves no partial files; errors are :class:`cri.errors.InvalidArgument` naming the CRI
field (``dns_config.servers[0]: ...``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cri.api import api_pb2
from cri.errors import InvalidArgument

__all__ = [
    "PodFiles",
    "render_hosts",
    "render_resolv_conf",
    "validate_dns_config",
    "validate_hostname",
    "write_pod_files",
]

log = logging.getLogger(__name__)

# The kubelet's own limits (pkg/kubelet/network/dns), which older libcs also impose.
MAX_DNS_SEARCHES = 32
MAX_DNS_SEARCH_CHARS = 2048
HOST_NAME_MAX = 64

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_SEARCH_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
_OPTION_RE = re.compile(r"^[\x21-\x7e]+$")

_HOSTS_HEADER = """\
# Kubernetes-managed hosts file (written by rktlet).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True, slots=True)
class PodFiles:
    """Paths of the files written for one pod."""

    resolv_conf: Path
    hosts: Path
    hostname: Path


def _is_empty(dns_config: api_pb2.DNSConfig | None) -> bool:
    return dns_config is None or not (
        dns_config.servers or dns_config.searches or dns_config.options
    )


def validate_dns_config(dns_config: api_pb2.DNSConfig | None) -> None:
    """Raise :class:`InvalidArgument` for anything that cannot go into resolv.conf."""
    if dns_config is None:
        return
    for i, server in enumerate(dns_config.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(
                f"dns_config.servers[{i}]: {server!r} is not an IP address"
            ) from None
    for i, search in enumerate(dns_config.searches):
        if not search or len(search.rstrip(".")) > 253 or not _SEARCH_RE.match(search):
            raise InvalidArgument(
                f"dns_config.searches[{i}]: {search!r} is not a valid DNS search domain"
            )
    if len(dns_config.searches) > MAX_DNS_SEARCHES:
        raise InvalidArgument(
            f"dns_config.searches: {len(dns_config.searches)} domains, "
            f"more than the limit of {MAX_DNS_SEARCHES}"
        )
    total = len(" ".join(dns_config.searches))
    if total > MAX_DNS_SEARCH_CHARS:
        raise InvalidArgument(
            f"dns_config.searches: {total} characters, more than the limit of "
            f"{MAX_DNS_SEARCH_CHARS}"
        )
    for i, option in enumerate(dns_config.options):
        if not _OPTION_RE.match(option):
            raise InvalidArgument(
                f"dns_config.options[{i}]: {option!r} must be non-empty printable ASCII "
                "without spaces"
            )


def validate_hostname(hostname: str, field: str = "hostname") -> None:
    """Raise :class:`InvalidArgument` unless ``hostname`` is an RFC 1123 host name."""
    if not hostname:
        raise InvalidArgument(f"{field}: must not be empty")
    if len(hostname) > HOST_NAME_MAX:
        raise InvalidArgument(f"{field}: {hostname!r} is longer than {HOST_NAME_MAX} characters")
    if not _HOSTNAME_RE.match(hostname):
        raise InvalidArgument(
            f"{field}: {hostname!r} is not a valid host name (letters, digits and '-' in "
            "dot-separated labels)"
        )


def render_resolv_conf(
    dns_config: api_pb2.DNSConfig | None,
    *,
    host_resolv_conf: str | os.PathLike[str] = "/etc/resolv.conf",
) -> bytes:
    """resolv.conf from the CRI DNSConfig; the host's own when DNSConfig is empty."""
    validate_dns_config(dns_config)
    if dns_config is None or _is_empty(dns_config):
        try:
            with open(host_resolv_conf, "rb") as f:
                return f.read()
        except FileNotFoundError:
            log.warning("%s does not exist; the pod gets an empty resolv.conf", host_resolv_conf)
            return b""
    lines = []
    if dns_config.searches:
        lines.append("search " + " ".join(dns_config.searches))
    lines.extend(f"nameserver {server}" for server in dns_config.servers)
    if dns_config.options:
        lines.append("options " + " ".join(dns_config.options))
    return ("\n".join(lines) + "\n").encode()


def render_hosts(hostname: str, pod_ips: Sequence[str]) -> bytes:
    """A hosts file with the localhost entries and ``<pod ip> <hostname>`` lines."""
    validate_hostname(hostname)
    names = hostname
    short = hostname.split(".", 1)[0]
    if short != hostname:
        names += f" {short}"
    lines = [_HOSTS_HEADER]
    for ip in pod_ips:
        lines.append(f"{ipaddress.ip_address(ip)}\t{names}\n")
    return "".join(lines).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_pod_files(
    pod_dir: str | os.PathLike[str],
    *,
    hostname: str,
    pod_ips: Sequence[str] = (),
    dns_config: api_pb2.DNSConfig | None = None,
    host_network: bool = False,
    host_resolv_conf: str | os.PathLike[str] = "/etc/resolv.conf",
    host_hosts: str | os.PathLike[str] = "/etc/hosts",
) -> PodFiles:
    """Write ``resolv.conf``, ``hosts`` and ``hostname`` into ``pod_dir`` (created).

    ``hostname`` is PodSandboxConfig.hostname; when empty the node's host name is used
    (as containerd does).  ``pod_ips`` are the addresses from :class:`NetworkResult`.
    A host-network pod gets a copy of the host's hosts file; every pod gets the
    DNSConfig's resolv.conf, or the host's when DNSConfig is empty (which is how the
    kubelet asks for host DNS, e.g. for host-network pods with dnsPolicy ClusterFirst).
    """
    if not hostname:
        hostname = socket.gethostname()
    validate_hostname(hostname)
    resolv = render_resolv_conf(dns_config, host_resolv_conf=host_resolv_conf)
    if host_network:
        try:
            with open(host_hosts, "rb") as f:
                hosts = f.read()
        except FileNotFoundError:
            hosts = render_hosts(hostname, ())
    else:
        hosts = render_hosts(hostname, pod_ips)
    directory = Path(pod_dir)
    directory.mkdir(parents=True, exist_ok=True)
    files = PodFiles(
        resolv_conf=directory / "resolv.conf",
        hosts=directory / "hosts",
        hostname=directory / "hostname",
    )
    _write_atomic(files.resolv_conf, resolv)
    _write_atomic(files.hosts, hosts)
    _write_atomic(files.hostname, f"{hostname}\n".encode())
    return files
