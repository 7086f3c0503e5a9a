"""Linux capability names, the default container set, and CRI add/drop resolution."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from cri.errors import InvalidArgument

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "capabilities_from_mask",
    "host_capabilities",
    "normalize_capability",
    "resolve_capabilities",
]

# Indexed by capability number (linux/capability.h); the order matters for masks.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# The set Docker and containerd give an unprivileged container; workloads expect it.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_KNOWN = frozenset(ALL_CAPABILITIES)


def normalize_capability(name: str, field: str) -> str:
    """``net_admin``, ``NET_ADMIN`` or ``CAP_NET_ADMIN`` → ``CAP_NET_ADMIN``."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in _KNOWN:
        raise InvalidArgument(f"{field}: unknown capability {name!r}")
    return full


def capabilities_from_mask(mask: int) -> frozenset[str]:
    return frozenset(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)


def host_capabilities(status_path: str = "/proc/self/status") -> frozenset[str]:
    """Capabilities this process may hand to a container (its permitted set).

    runc cannot grant a capability its caller lacks: asking for one fails the start with
    EPERM.  On hosts where the runtime runs without, say, CAP_SYS_RESOURCE, "all
    capabilities" has to mean the ones actually held.
    """
    with open(status_path, encoding="ascii") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return capabilities_from_mask(int(line.split()[1], 16))
    raise OSError(f"{status_path}: no CapPrm line")


def resolve_capabilities(
    add: Sequence[str],
    drop: Sequence[str],
    *,
    available: Collection[str],
    field_prefix: str = "linux.security_context.capabilities",
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """The capability set after CRI ``add_capabilities`` / ``drop_capabilities``.

    ``ALL`` in ``add`` starts from every available capability, ``ALL`` in ``drop`` from
    none; the named additions then apply, then the named drops — so ``add: [ALL], drop:
    [CHOWN]`` is everything but CAP_CHOWN and ``drop: [ALL], add: [NET_BIND_SERVICE]`` is
    just that one.  A requested capability the host cannot grant is left out with a
    warning rather than making the container impossible to start.
    """
    adds = [a for a in add if a.strip().upper() != "ALL"]
    drops = [d for d in drop if d.strip().upper() != "ALL"]
    added = [
        normalize_capability(a, f"{field_prefix}.add_capabilities[{i}]")
        for i, a in enumerate(add)
        if a in adds
    ]
    dropped = {
        normalize_capability(d, f"{field_prefix}.drop_capabilities[{i}]")
        for i, d in enumerate(drop)
        if d in drops
    }
    caps: list[str] = list(DEFAULT_CAPABILITIES)
    if len(adds) != len(add):
        caps = [c for c in ALL_CAPABILITIES if c in available]
    if len(drops) != len(drop):
        caps = []
    for cap in added:
        if cap in caps:
            continue
        if cap not in available:
            if warn is not None:
                warn(f"{field_prefix}.add_capabilities: {cap} is not available on this host")
            continue
        caps.append(cap)
    return [c for c in caps if c not in dropped and c in available]
