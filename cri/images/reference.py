"""Image references: parsing and normalisation the way docker, containerd and crictl agree.

``busybox`` means ``docker.io/library/busybox:latest``; ``quay.io/x/y@sha256:…`` pins a
digest; ``localhost:5000/app`` names a registry because its first component has a port.
The grammar is the distribution project's reference grammar; everything here is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cri.errors import InvalidArgument

__all__ = [
    "DEFAULT_DOMAIN",
    "Reference",
    "is_image_id",
    "parse_digest",
    "parse_reference",
]

DEFAULT_DOMAIN = "docker.io"
# Docker Hub's API lives on another host than the one in image names.
_DOCKER_HUB_API_HOST = "registry-1.docker.io"
_LEGACY_HUB_DOMAINS = {"index.docker.io", "registry-1.docker.io"}
_MAX_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX64 = re.compile(r"[a-f0-9]{64}")


def parse_digest(value: str, field: str = "digest") -> str:
    """Validate an ``algorithm:hex`` digest and return it unchanged.

    Only the algorithms the store can verify are accepted: a digest we cannot check
    is as bad as none.
    """
    m = _DIGEST.fullmatch(value)
    if m is None:
        raise InvalidArgument(f"{field}: {value!r} is not a digest (algorithm:hex)")
    algorithm, hexpart = m.groups()
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidArgument(f"{field}: unsupported digest algorithm {algorithm!r}")
    if len(hexpart) != length or re.fullmatch(r"[a-f0-9]+", hexpart) is None:
        raise InvalidArgument(
            f"{field}: {algorithm} digest must be {length} lowercase hex digits, got {hexpart!r}"
        )
    return value


def is_image_id(value: str) -> bool:
    """True for ``sha256:<64 hex>`` or a bare 64-hex image id."""
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    return _HEX64.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference.  At least one of ``tag`` and ``digest`` is set."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path``: the repository name as stored in repo tags and digests."""
        return f"{self.domain}/{self.path}"

    @property
    def api_host(self) -> str:
        """The host that serves the distribution API for this reference's domain."""
        return _DOCKER_HUB_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest when pinned."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None
        return self.tag

    def tagged(self) -> str | None:
        """``name:tag`` or None when the reference carries no tag."""
        return None if self.tag is None else f"{self.name}:{self.tag}"

    def digested(self, digest: str | None = None) -> str:
        """``name@digest`` for the given digest (default: the reference's own)."""
        d = digest if digest is not None else self.digest
        if d is None:
            raise ValueError("reference has no digest")
        return f"{self.name}@{d}"

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain = first
        path = rest
    else:
        domain = DEFAULT_DOMAIN
        path = name
    if domain in _LEGACY_HUB_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    return domain, path


def parse_reference(value: str, field: str = "image") -> Reference:
    """Parse and normalise a user-supplied image reference.

    ``field`` names the request field in error messages.  A tag defaults to
    ``latest`` only when neither a tag nor a digest is given, as docker does.
    """
    if not value:
        raise InvalidArgument(f"{field}: image reference is empty")
    if value != value.strip() or any(c.isspace() for c in value):
        raise InvalidArgument(f"{field}: image reference {value!r} contains whitespace")

    remainder, at, digest_part = value.partition("@")
    digest = parse_digest(digest_part, field) if at else None

    # A colon after the last slash separates the tag; one before it is a port.
    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        tag = remainder[colon + 1 :]
        remainder = remainder[:colon]
        if _TAG.fullmatch(tag) is None:
            raise InvalidArgument(f"{field}: invalid tag {tag!r} in {value!r}")

    if not remainder:
        raise InvalidArgument(f"{field}: image reference {value!r} has no repository name")
    if _HEX64.fullmatch(remainder) and tag is None and digest is None:
        # The same string would also read as an image id; docker refuses it for that reason.
        raise InvalidArgument(
            f"{field}: {value!r} is a 64-hex string, which names an image id, not a repository"
        )
    domain, path = _split_domain(remainder)
    if _DOMAIN.fullmatch(domain) is None:
        raise InvalidArgument(f"{field}: invalid registry host {domain!r} in {value!r}")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component) is None:
            raise InvalidArgument(
                f"{field}: invalid repository name component {component!r} in {value!r} "
                "(lowercase letters, digits and separators . _ __ - only)"
            )
    if len(domain) + 1 + len(path) > _MAX_NAME_LENGTH:
        raise InvalidArgument(f"{field}: repository name longer than {_MAX_NAME_LENGTH} bytes")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
