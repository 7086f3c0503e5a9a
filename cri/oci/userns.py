"""Pod user namespaces: the kubelet's ID mappings, checked, and namespaces pinned by path.

A pod with ``userns_options.mode == POD`` runs every process (the infra process and all
its containers) in one user namespace whose uid/gid maps are the ones the kubelet
allocated.  The namespace is created here, before anything runs in it, by a short-lived
helper (util-linux ``unshare``) whose maps the daemon writes, and it is pinned by a bind
mount of its nsfs file so that runc can join it by path and idmapped mounts can use it.
The pod's network namespace is created by the same helper, so that the user namespace
owns it: only then may the pod's root mount sysfs, set ``net.*`` sysctls or bind ports
below 1024 in it.

A process cannot create (or enter) a user namespace once it has threads, so this cannot
be done by a thread of the daemon as the network namespace of an ordinary pod is.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument
from cri.network import netns

__all__ = [
    "IdMap",
    "UsernsConfig",
    "create_pod_namespaces",
    "from_cri",
    "remove_pin",
]

# The kernel accepts at most this many lines in uid_map / gid_map (since Linux 4.15).
_MAX_LINES = 340
_ID_LIMIT = 2**32 - 1  # (uid_t)-1 is never a valid id


@dataclass(frozen=True, slots=True)
class IdMap:
    """``size`` ids from ``container_id`` inside map to ``host_id`` on the host."""

    container_id: int
    host_id: int
    size: int

    def host_of(self, inside: int) -> int | None:
        offset = inside - self.container_id
        return self.host_id + offset if 0 <= offset < self.size else None


def _host_of(maps: Sequence[IdMap], inside: int) -> int | None:
    for m in maps:
        host = m.host_of(inside)
        if host is not None:
            return host
    return None


@dataclass(frozen=True, slots=True)
class UsernsConfig:
    """The uid and gid maps of a pod's user namespace."""

    uids: tuple[IdMap, ...]
    gids: tuple[IdMap, ...]

    def host_uid(self, uid: int) -> int | None:
        return _host_of(self.uids, uid)

    def host_gid(self, gid: int) -> int | None:
        return _host_of(self.gids, gid)

    @property
    def root_uid(self) -> int:
        """The host uid of the namespace's root (always mapped: :func:`from_cri` checks)."""
        host = self.host_uid(0)
        assert host is not None
        return host

    @property
    def root_gid(self) -> int:
        host = self.host_gid(0)
        assert host is not None
        return host

    def oci(self) -> dict[str, list[dict[str, int]]]:
        """``linux.uidMappings`` and ``linux.gidMappings`` of a runtime spec."""

        def convert(maps: Sequence[IdMap]) -> list[dict[str, int]]:
            return [
                {"containerID": m.container_id, "hostID": m.host_id, "size": m.size} for m in maps
            ]

        return {"uidMappings": convert(self.uids), "gidMappings": convert(self.gids)}

    def to_json(self) -> dict[str, Any]:
        return {
            "uids": [[m.container_id, m.host_id, m.size] for m in self.uids],
            "gids": [[m.container_id, m.host_id, m.size] for m in self.gids],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> UsernsConfig:
        return cls(
            uids=tuple(IdMap(*(int(v) for v in m)) for m in doc["uids"]),
            gids=tuple(IdMap(*(int(v) for v in m)) for m in doc["gids"]),
        )

    @staticmethod
    def map_file(maps: Sequence[IdMap]) -> str:
        """The text written to ``/proc/<pid>/uid_map`` (or gid_map)."""
        return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)


def _check_maps(mappings: Sequence[api_pb2.IDMapping], field: str) -> tuple[IdMap, ...]:
    if not mappings:
        raise InvalidArgument(f"{field}: a user namespace needs at least one mapping")
    if len(mappings) > _MAX_LINES:
        raise InvalidArgument(f"{field}: {len(mappings)} mappings, the kernel takes {_MAX_LINES}")
    out = []
    for i, m in enumerate(mappings):
        if m.length == 0:
            raise InvalidArgument(f"{field}[{i}].length: must not be 0")
        for name, start in (("container_id", m.container_id), ("host_id", m.host_id)):
            if start + m.length > _ID_LIMIT:
                raise InvalidArgument(f"{field}[{i}].{name}: {start}+{m.length} overflows ids")
        out.append(IdMap(m.container_id, m.host_id, m.length))
    for kind in ("container", "host"):
        spans = sorted((getattr(m, f"{kind}_id"), m.size) for m in out)
        for (a, a_size), (b, _) in itertools.pairwise(spans):
            if a + a_size > b:
                raise InvalidArgument(f"{field}: {kind} id ranges overlap")
    if _host_of(out, 0) is None:
        raise InvalidArgument(f"{field}: id 0 (the pod's root) must be mapped")
    if _host_of(out, 0) == 0:
        # Mapping the pod's root to the host's would make the namespace pointless.
        raise InvalidArgument(f"{field}: id 0 must not map to host id 0")
    return tuple(out)


def from_cri(options: api_pb2.NamespaceOption, field: str) -> UsernsConfig | None:
    """The pod's user namespace, or None when it uses the host's (mode NODE or unset)."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    where = f"{field}.userns_options"
    if userns.mode == api_pb2.NamespaceMode.NODE:
        if len(userns.uids) or len(userns.gids):
            raise InvalidArgument(f"{where}: mappings are only valid with mode POD")
        return None
    if userns.mode != api_pb2.NamespaceMode.POD:
        name = api_pb2.NamespaceMode.Name(userns.mode)
        raise InvalidArgument(f"{where}.mode: {name} is not supported; use POD or NODE")
    return UsernsConfig(
        uids=_check_maps(userns.uids, f"{where}.uids"),
        gids=_check_maps(userns.gids, f"{where}.gids"),
    )


def mount_maps(mount: api_pb2.Mount, field: str) -> UsernsConfig | None:
    """The ID mapping requested for a volume (``Mount.uidMappings``), or None."""
    if not len(mount.uidMappings) and not len(mount.gidMappings):
        return None
    return UsernsConfig(
        uids=_check_maps(mount.uidMappings, f"{field}.uidMappings"),
        gids=_check_maps(mount.gidMappings, f"{field}.gidMappings"),
    )


# -- creating and pinning -----------------------------------------------------------


def remove_pin(path: str | os.PathLike[str]) -> None:
    """Unpin a namespace file made here and delete it.  Idempotent."""
    netns.remove_netns(path)


def helper_binary() -> str | None:
    """The util-linux ``unshare`` this module runs, if installed."""
    return shutil.which("unshare")


def create_pod_namespaces(
    config: UsernsConfig, user_pin: Path, net_pin: Path | None = None
) -> None:
    """Create a user namespace with ``config``'s maps pinned at ``user_pin``.

    With ``net_pin``, a network namespace owned by it is created and pinned there too.
    Blocking (a helper process runs for a few milliseconds).  On failure nothing is left.
    """
    binary = helper_binary()
    if binary is None:
        raise FailedPrecondition(
            "user namespaces need util-linux's unshare(1) on the node; it is not installed"
        )
    pins = [user_pin] + ([net_pin] if net_pin is not None else [])
    made: list[Path] = []
    args = [binary, "--user"] + (["--net"] if net_pin is not None else [])
    # The shell says when the namespaces exist, then waits for its stdin to close.
    proc = subprocess.Popen(
        [*args, "--", "/bin/sh", "-c", "echo ready; read -r _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        if proc.stdout.readline() != b"ready\n":
            proc.wait()
            reason = proc.stderr.read().decode(errors="replace").strip()
            reason = reason or "unshare failed"
            raise FailedPrecondition(f"cannot create a user namespace: {reason}")
        for name, maps in (("uid_map", config.uids), ("gid_map", config.gids)):
            with open(f"/proc/{proc.pid}/{name}", "w", encoding="ascii") as f:
                f.write(UsernsConfig.map_file(maps))
        for pin, kind in zip(pins, ("user", "net"), strict=False):
            netns.pin_namespace(f"/proc/{proc.pid}/ns/{kind}", pin)
            made.append(pin)
    except BaseException as exc:
        for pin in made:
            remove_pin(pin)
        if isinstance(exc, OSError):
            raise FailedPrecondition(f"cannot create the pod's user namespace: {exc}") from exc
        raise
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
