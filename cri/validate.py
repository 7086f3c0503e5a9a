"""Checks of CRI request fields shared by the RPC families.

Each check raises :class:`cri.errors.InvalidArgument` with a message that names
the field, so that the kubelet's or crictl's user knows what to fix.
"""

from __future__ import annotations

import os
import re

from cri.errors import InvalidArgument

MAX_NAME = 253
MAX_ID = 128
MAX_PATH = 4096
MAX_VALUE = 1 << 16


#: The ids this daemon makes (hex) and the kubelet sends back, checked in one match:
#: every status poll checks one, and a character loop over 64 was a third of
#: PodSandboxStatus's own time.
_ASCII_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID}}}")


def required_id(value: str, field: str) -> str:
    if _ASCII_ID.fullmatch(value):
        return value
    if not value:
        raise InvalidArgument(f"{field}: must not be empty")
    # What the match above does not take may still be an id: letters and digits of
    # any script are.
    if len(value) > MAX_ID or not all(c.isalnum() or c in "._-" for c in value):
        raise InvalidArgument(f"{field}: {value[:80]!r} is not a valid id")
    return value


def name(value: str, field: str, *, required: bool = True) -> str:
    """A Kubernetes-ish name: used in paths and unit names, so no separators."""
    if not value:
        if required:
            raise InvalidArgument(f"{field}: must not be empty")
        return value
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{field}: longer than {MAX_NAME} characters")
    if value in (".", "..") or "/" in value or "\0" in value or ".." in value:
        raise InvalidArgument(f"{field}: {value[:80]!r} may not contain '/', '..' or NUL")
    if any(ord(c) < 0x20 for c in value):
        raise InvalidArgument(f"{field}: {value[:80]!r} contains control characters")
    return value


def absolute_path(value: str, field: str) -> str:
    if not value.startswith("/"):
        raise InvalidArgument(f"{field}: {value[:80]!r} must be an absolute path")
    if len(value) > MAX_PATH or "\0" in value:
        raise InvalidArgument(f"{field}: not a valid path")
    return os.path.normpath(value)


def relative_log_path(value: str, field: str) -> str:
    """A container's log path, relative to its sandbox's log directory."""
    if not value:
        return value
    if value.startswith("/") or "\0" in value or len(value) > MAX_PATH:
        raise InvalidArgument(f"{field}: {value[:80]!r} must be a relative path")
    if value.endswith("/"):
        raise InvalidArgument(f"{field}: {value[:80]!r} names a directory, not a file")
    parts = value.split("/")
    if any(part in ("..", ".") for part in parts):
        raise InvalidArgument(f"{field}: {value[:80]!r} may not contain '.' or '..'")
    return os.path.normpath(value)


def bounded(value: str, field: str, limit: int = MAX_VALUE) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field}: longer than {limit} characters")
    return value


def mapping(values: dict[str, str], field: str) -> None:
    total = 0
    for key, value in values.items():
        if not key:
            raise InvalidArgument(f"{field}: empty key")
        total += len(key) + len(value)
        if total > 1 << 20:
            raise InvalidArgument(f"{field}: larger than 1 MiB in total")


def group_has_user(has_group: bool, has_user: bool, prefix: str) -> None:
    """The CRI: run_as_group only with run_as_user (or run_as_username); else an error.

    A group alone would otherwise apply to whatever user the image names, which the
    pod's author did not choose (containerd refuses it too, for pods and containers).
    """
    if has_group and not has_user:
        raise InvalidArgument(f"{prefix}.run_as_group: set without run_as_user or run_as_username")
