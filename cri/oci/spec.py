"""OCI runtime-spec ``config.json`` for pod infra and app containers, from CRI configs.

:func:`build_container_spec` turns a CRI ``ContainerConfig`` (with its pod's
``PodSandboxConfig``), the image's configuration and the facts only the daemon knows (a
:class:`ContainerContext`: where the rootfs is, which namespaces to join, which files to
bind) into the dict runc reads.  :func:`build_sandbox_spec` does the same for the pod
infra container, Debian's static ``catatonit -P``, which creates and holds the pod's IPC
and UTS namespaces (and PID when the pod shares one) while joining the network
namespace the daemon pinned.

Both functions are pure apart from reading the container's ``/etc/passwd`` and
``/etc/group`` (securely, inside the rootfs), stat-ing host paths of volumes and
devices, and loading Localhost seccomp profiles; host facts come in a
:class:`~cri.oci.host.HostInfo`.  Every validation problem raises
:class:`cri.errors.InvalidArgument` naming the CRI field; settings that the host cannot
honour but that need not fail the container are reported through ``warn``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument
from cri.oci.capabilities import ALL_CAPABILITIES, normalize_capability, resolve_capabilities
from cri.oci.devices import DeviceNode, device_nodes, host_devices
from cri.oci.host import HostInfo, detect_host
from cri.oci.image_config import ImageConfig
from cri.oci.mounts import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    cri_mounts,
    mount_propagation,
    standard_mounts,
)
from cri.oci.resources import check_sysctls, linux_resources, oom_score_adj
from cri.oci.seccomp import load_localhost_profile, runtime_default_profile
from cri.oci.user import resolve_user
from cri.oci.userns import UsernsConfig

__all__ = [
    "ANNOTATION_CONTAINER_NAME",
    "ANNOTATION_CONTAINER_TYPE",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_SANDBOX_ID",
    "ANNOTATION_SANDBOX_LOG_DIR",
    "ANNOTATION_SANDBOX_NAME",
    "ANNOTATION_SANDBOX_NAMESPACE",
    "ANNOTATION_SANDBOX_UID",
    "CATATONIT",
    "DEFAULT_PATH",
    "OCI_VERSION",
    "SANDBOX_OOM_SCORE_ADJ",
    "ContainerContext",
    "PodNamespaces",
    "SandboxContext",
    "build_container_spec",
    "build_sandbox_spec",
    "pod_namespaces",
    "prepare_sandbox_rootfs",
    "process_args",
]

log = logging.getLogger(__name__)

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CATATONIT = "/usr/bin/catatonit"
# The kubelet's adjustment for infra containers: they should be the last thing killed.
SANDBOX_OOM_SCORE_ADJ = -998
DEFAULT_NOFILE = (1024, 524288)
SANDBOX_USER = 65535

ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"

_HOSTNAME_RE = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
)

Warn = Callable[[str], None]


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class PodNamespaces:
    """Namespaces of a pod, as paths a container can join; None means the host's.

    ``pid`` is set only when the pod shares one PID namespace (``shareProcessNamespace``);
    otherwise each container gets its own.
    """

    network: str | None = None
    ipc: str | None = None
    uts: str | None = None
    pid: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerContext:
    """What the daemon knows about a container that the CRI config does not say.

    ``rootfs``: the prepared root filesystem (an overlay mount).  ``readonly_rootfs``:
    force a read-only root whatever the security context says.  ``cgroups_path``:
    ``linux.cgroupsPath`` (see :func:`cri.cgroups.cgroups_path`).  ``hostname``: the pod's
    hostname (defaults to the sandbox config's).  ``*_path``: host files bind-mounted at
    /etc/resolv.conf, /etc/hosts, /etc/hostname and /dev/shm (None: not mounted; a
    tmpfs for /dev/shm).  ``target_pid_namespace``: the PID namespace path of the
    target container for NamespaceMode TARGET.  ``image_name``: for the image-name
    annotation (defaults to the config's image).  ``annotations``: added to the spec
    (the io.kubernetes.cri.* keys win).  ``apparmor_default_profile``: the loaded
    profile RuntimeDefault means, if any.  ``userns``: the pod's user namespace maps
    (with ``namespaces.user`` its pinned path), None for the host's.  ``volume_sources``:
    what the daemon prepared for mount ``i`` (an image volume, an idmapped copy).
    ``rro_unsupported``: why recursive read-only mounts are unavailable ("" if they are).
    """

    rootfs: str
    container_id: str
    sandbox_id: str
    cgroups_path: str
    namespaces: PodNamespaces = field(default_factory=PodNamespaces)
    readonly_rootfs: bool = False
    hostname: str = ""
    resolv_conf_path: str | None = None
    hosts_path: str | None = None
    hostname_path: str | None = None
    shm_path: str | None = None
    target_pid_namespace: str | None = None
    image_name: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    apparmor_default_profile: str | None = None
    userns: UsernsConfig | None = None
    volume_sources: Mapping[int, str] = field(default_factory=dict)
    rro_unsupported: str = ""


@dataclass(frozen=True, slots=True)
class SandboxContext:
    """What the daemon knows about a pod infra container.

    ``rootfs``: a directory from :func:`prepare_sandbox_rootfs` (shared by all pods, kept
    read-only).  ``network_ns``: the pinned network namespace, None for host network.
    ``shm_path``: a host directory (tmpfs) to serve as the pod's /dev/shm, or None.
    ``userns``/``userns_path``: the pod's user namespace maps and pinned path, if any.
    """

    rootfs: str
    sandbox_id: str
    cgroups_path: str
    network_ns: str | None = None
    shm_path: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    apparmor_default_profile: str | None = None
    userns: UsernsConfig | None = None
    userns_path: str | None = None


def _default_warn(message: str) -> None:
    log.warning("%s", message)


# ------------------------------------------------------------------------------ process


def process_args(config: api_pb2.ContainerConfig, image: ImageConfig) -> list[str]:
    """argv as Kubernetes defines it from ``command``/``args`` and the image's Entrypoint/Cmd.

    ``command`` replaces the Entrypoint and drops the image's Cmd; ``args`` replace Cmd.
    """
    if config.command:
        argv = [*config.command, *config.args]
    elif config.args:
        argv = [*image.entrypoint, *config.args]
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise InvalidArgument("command: no command specified, and the image has none")
    if not argv[0]:
        raise InvalidArgument("command: the executable name is empty")
    return argv


def _merge_env(
    image_env: Sequence[str], config_env: Sequence[api_pb2.KeyValue], hostname: str
) -> list[str]:
    # Keyed by name so that a later value replaces an earlier one in its original place.
    merged: dict[str, str] = {"PATH": f"PATH={DEFAULT_PATH}"}
    if hostname:
        merged["HOSTNAME"] = f"HOSTNAME={hostname}"
    for entry in image_env:
        name = entry.split("=", 1)[0]
        if name:
            merged[name] = entry
    for i, kv in enumerate(config_env):
        if not kv.key or "=" in kv.key or "\0" in kv.key:
            raise InvalidArgument(f"envs[{i}].key: {kv.key!r} is not a variable name")
        if "\0" in kv.value:
            raise InvalidArgument(f"envs[{i}].value: contains a NUL byte")
        merged[kv.key] = f"{kv.key}={kv.value}"
    return list(merged.values())


def _working_dir(config: api_pb2.ContainerConfig, image: ImageConfig) -> str:
    if config.working_dir:
        if not posixpath.isabs(config.working_dir):
            raise InvalidArgument(f"working_dir: {config.working_dir!r} must be absolute")
        return posixpath.normpath(config.working_dir)
    if image.working_dir:
        # Docker stores WorkingDir as given in the Dockerfile; relative means from /.
        return posixpath.normpath("/" + image.working_dir.lstrip("/"))
    return "/"


def _rlimits(host: HostInfo) -> list[dict[str, Any]]:
    hard = min(DEFAULT_NOFILE[1], host.nofile_hard)
    soft = min(DEFAULT_NOFILE[0], hard)
    return [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": soft}]


def _capabilities(caps: Sequence[str], ambient: Sequence[str]) -> dict[str, list[str]]:
    # Inheritable stays empty (CVE-2022-24769) unless ambient capabilities need it.
    return {
        "bounding": list(caps),
        "effective": list(caps),
        "permitted": list(caps),
        "inheritable": list(ambient),
        "ambient": list(ambient),
    }


# ----------------------------------------------------------------------------- security


def _legacy_profile(value: str, field: str) -> api_pb2.SecurityProfile | None:
    """The deprecated string form (``runtime/default``, ``localhost/<x>`` …) as a profile."""
    if not value:
        return None
    if value in ("runtime/default", "docker/default"):
        return api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    if value == "unconfined":
        return api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)
    if value.startswith("localhost/"):
        return api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.Localhost,
            localhost_ref=value[len("localhost/") :],
        )
    raise InvalidArgument(f"{field}: unknown profile {value!r}")


def _seccomp(sc: Any, prefix: str, caps: Sequence[str], host: HostInfo) -> dict[str, Any] | None:
    """``linux.seccomp`` for a security context; None means unconfined.

    An unset profile is Unconfined, as in containerd: the kubelet always sends one
    (RuntimeDefault under ``--seccomp-default``), so unset means a bare CRI client.
    """
    profile = sc.seccomp if sc.HasField("seccomp") else None
    field_name = f"{prefix}.seccomp"
    if profile is None:
        field_name = f"{prefix}.seccomp_profile_path"
        profile = _legacy_profile(sc.seccomp_profile_path, field_name)
    if profile is None or profile.profile_type == api_pb2.SecurityProfile.Unconfined:
        return None
    if profile.profile_type == api_pb2.SecurityProfile.RuntimeDefault:
        return runtime_default_profile(caps, host.machine)
    if profile.profile_type == api_pb2.SecurityProfile.Localhost:
        ref_field = f"{field_name}.localhost_ref" if sc.HasField("seccomp") else field_name
        return load_localhost_profile(
            profile.localhost_ref, ref_field, capabilities=caps, machine=host.machine
        )
    raise InvalidArgument(f"{field_name}.profile_type: unknown type {profile.profile_type}")


def _apparmor(
    sc: Any,
    prefix: str,
    host: HostInfo,
    default_profile: str | None,
    warn: Warn,
) -> str | None:
    """``process.apparmorProfile``; None when none applies (disabled LSM, unconfined)."""
    explicit = sc.apparmor if sc.HasField("apparmor") else None
    field_name = f"{prefix}.apparmor"
    if explicit is None:
        field_name = f"{prefix}.apparmor_profile"
        # The sandbox security context has no deprecated string field.
        explicit = _legacy_profile(getattr(sc, "apparmor_profile", ""), field_name)
    kind = explicit.profile_type if explicit is not None else api_pb2.SecurityProfile.RuntimeDefault
    if kind == api_pb2.SecurityProfile.Localhost:
        name = explicit.localhost_ref if explicit is not None else ""
        name = name.removeprefix("localhost/")
        if not name:
            raise InvalidArgument(f"{field_name}.localhost_ref: a profile name is required")
        if not host.apparmor_enabled:
            warn(f"{field_name}: profile {name!r} ignored, AppArmor is not enabled on this host")
            return None
        return name
    if kind == api_pb2.SecurityProfile.Unconfined:
        return None
    if kind != api_pb2.SecurityProfile.RuntimeDefault:
        raise InvalidArgument(f"{field_name}.profile_type: unknown type {kind}")
    if not host.apparmor_enabled:
        if explicit is not None:
            warn(f"{field_name}: RuntimeDefault ignored, AppArmor is not enabled on this host")
        return None
    if default_profile is None:
        if explicit is not None:
            warn(f"{field_name}: RuntimeDefault ignored, no default AppArmor profile is loaded")
        return None
    return default_profile


def _paths(values: Sequence[str], defaults: Sequence[str], field: str) -> list[str]:
    # The kubelet sends the defaults for procMount Default; empty means "runtime default".
    if not values:
        return list(defaults)
    out = []
    for i, p in enumerate(values):
        if not posixpath.isabs(p):
            raise InvalidArgument(f"{field}[{i}]: {p!r} must be an absolute path")
        out.append(p)
    return out


# --------------------------------------------------------------------------- namespaces


def _ns(kind: str, path: str | None) -> dict[str, str]:
    return {"type": kind, "path": path} if path else {"type": kind}


def _container_namespaces(
    opts: api_pb2.NamespaceOption, ctx: ContainerContext, host: HostInfo, privileged: bool
) -> list[dict[str, str]]:
    prefix = "linux.security_context.namespace_options"
    pod = ctx.namespaces
    spaces = [{"type": "mount"}]
    if opts.network != api_pb2.NODE and pod.network:
        spaces.append(_ns("network", pod.network))
    if opts.ipc == api_pb2.CONTAINER:
        spaces.append({"type": "ipc"})
    elif opts.ipc != api_pb2.NODE and pod.ipc:
        spaces.append(_ns("ipc", pod.ipc))
    if opts.network != api_pb2.NODE and pod.uts:
        spaces.append(_ns("uts", pod.uts))
    if opts.pid == api_pb2.POD:
        if not pod.pid:
            raise InvalidArgument(f"{prefix}.pid: POD, but the pod does not share a PID namespace")
        spaces.append(_ns("pid", pod.pid))
    elif opts.pid == api_pb2.CONTAINER:
        spaces.append({"type": "pid"})
    elif opts.pid == api_pb2.TARGET:
        if not ctx.target_pid_namespace:
            raise InvalidArgument(
                f"{prefix}.target_id: no PID namespace known for target {opts.target_id!r}"
            )
        spaces.append(_ns("pid", ctx.target_pid_namespace))
    elif opts.pid != api_pb2.NODE:
        raise InvalidArgument(f"{prefix}.pid: unknown mode {opts.pid}")
    wants_userns = opts.HasField("userns_options") and opts.userns_options.mode != api_pb2.NODE
    if ctx.userns is not None:
        if not pod.user:
            raise FailedPrecondition(f"{prefix}.userns_options: the pod's user namespace is gone")
        spaces.append(_ns("user", pod.user))
    elif wants_userns:
        raise InvalidArgument(
            f"{prefix}.userns_options: the pod sandbox does not have a user namespace"
        )
    if host.cgroup_v2 and not privileged:
        spaces.append({"type": "cgroup"})
    return spaces


def _check_mapped(userns: UsernsConfig | None, uid: int, gids: Sequence[int], field: str) -> None:
    """runc cannot switch to an id the pod's user namespace does not map."""
    if userns is None:
        return
    if userns.host_uid(uid) is None:
        raise InvalidArgument(f"{field}: uid {uid} is not mapped in the pod's user namespace")
    for gid in gids:
        if userns.host_gid(gid) is None:
            raise InvalidArgument(f"{field}: gid {gid} is not mapped in the pod's user namespace")


def pod_namespaces(
    sandbox_config: api_pb2.PodSandboxConfig, infra_pid: int, network_ns: str | None
) -> PodNamespaces:
    """The namespaces a running pod infra process (``infra_pid``) offers its containers."""
    opts = sandbox_config.linux.security_context.namespace_options
    host_net = opts.network == api_pb2.NODE
    return PodNamespaces(
        network=None if host_net else network_ns,
        ipc=None if opts.ipc == api_pb2.NODE else f"/proc/{infra_pid}/ns/ipc",
        uts=None if host_net else f"/proc/{infra_pid}/ns/uts",
        pid=f"/proc/{infra_pid}/ns/pid" if opts.pid == api_pb2.POD else None,
    )


# ------------------------------------------------------------------------------- helpers


def _check_hostname(name: str, field: str) -> str:
    if len(name) > 64 or not _HOSTNAME_RE.match(name):
        raise InvalidArgument(f"{field}: {name!r} is not a valid host name")
    return name


def _pod_annotations(sandbox_config: api_pb2.PodSandboxConfig, sandbox_id: str) -> dict[str, str]:
    meta = sandbox_config.metadata
    return {
        ANNOTATION_SANDBOX_ID: sandbox_id,
        ANNOTATION_SANDBOX_NAME: meta.name,
        ANNOTATION_SANDBOX_NAMESPACE: meta.namespace,
        ANNOTATION_SANDBOX_UID: meta.uid,
    }


def _devices(
    config: api_pb2.ContainerConfig, privileged: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(linux.devices, cgroup device rules)."""
    nodes: dict[str, DeviceNode] = {}
    if privileged:
        for node in host_devices():
            nodes[node.path] = node
    for i, dev in enumerate(config.devices):
        for node in device_nodes(
            dev.host_path, dev.container_path, dev.permissions, f"devices[{i}]"
        ):
            nodes[node.path] = node
    if privileged:
        rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
    else:
        rules = [{"allow": False, "access": "rwm"}]
        rules += [n.cgroup_rule() for n in nodes.values()]
    return [n.spec_entry() for n in nodes.values()], rules


def _file_mounts(ctx: ContainerContext, readonly: bool) -> list[dict[str, Any]]:
    out = []
    for dest, source in (
        ("/etc/hostname", ctx.hostname_path),
        ("/etc/hosts", ctx.hosts_path),
        ("/etc/resolv.conf", ctx.resolv_conf_path),
    ):
        if source:
            options = ["rbind", "rprivate", "ro" if readonly else "rw"]
            out.append({"destination": dest, "type": "bind", "source": source, "options": options})
    return out


# ------------------------------------------------------------------------------ builders


def build_container_spec(
    config: api_pb2.ContainerConfig,
    sandbox_config: api_pb2.PodSandboxConfig,
    image: ImageConfig,
    ctx: ContainerContext,
    *,
    host: HostInfo | None = None,
    warn: Warn | None = None,
    propagation_of: Callable[[str], str] = mount_propagation,
) -> dict[str, Any]:
    """The runtime spec of an app container.

    ``host`` defaults to :func:`cri.oci.host.detect_host`; ``warn`` (default: this
    module's logger) receives one line per setting that was accepted but not applied.
    ``propagation_of`` reports a host path's mount propagation (tests replace it).
    """
    host = host if host is not None else detect_host()
    warn = warn if warn is not None else _default_warn
    if not config.metadata.name:
        raise InvalidArgument("metadata.name: a container name is required")
    linux = config.linux
    sc = linux.security_context
    prefix = "linux.security_context"
    privileged = sc.privileged
    if privileged and not sandbox_config.linux.security_context.privileged:
        raise InvalidArgument(f"{prefix}.privileged: the pod sandbox is not privileged")
    if privileged and ctx.userns is not None:
        raise InvalidArgument(f"{prefix}.privileged: not allowed in a pod with a user namespace")

    hostname = ctx.hostname or sandbox_config.hostname
    user = resolve_user(
        ctx.rootfs,
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        image_user=image.user,
        supplemental_groups=list(sc.supplemental_groups),
        supplemental_groups_policy=sc.supplemental_groups_policy,
        field_prefix=prefix,
    )
    _check_mapped(ctx.userns, user.uid, [user.gid, *user.additional_gids], f"{prefix}.run_as_user")
    env = _merge_env(image.env, config.envs, hostname)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home or '/'}")

    if privileged:
        caps = [c for c in ALL_CAPABILITIES if c in host.capabilities]
    else:
        caps = resolve_capabilities(
            list(sc.capabilities.add_capabilities),
            list(sc.capabilities.drop_capabilities),
            available=host.capabilities,
            field_prefix=f"{prefix}.capabilities",
            warn=warn,
        )
    ambient = []
    for i, name in enumerate(sc.capabilities.add_ambient_capabilities):
        cap = normalize_capability(name, f"{prefix}.capabilities.add_ambient_capabilities[{i}]")
        if cap not in host.capabilities:
            warn(f"{prefix}.capabilities.add_ambient_capabilities: {cap} is not available")
            continue
        if cap not in caps:
            caps.append(cap)
        ambient.append(cap)

    process: dict[str, Any] = {
        "terminal": bool(config.tty),
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": list(user.additional_gids),
        },
        "args": process_args(config, image),
        "env": env,
        "cwd": _working_dir(config, image),
        "capabilities": _capabilities(caps, ambient),
        "rlimits": _rlimits(host),
        "noNewPrivileges": bool(sc.no_new_privs),
    }
    if linux.HasField("resources"):
        process["oomScoreAdj"] = oom_score_adj(
            linux.resources.oom_score_adj, host, field="linux.resources", warn=warn
        )
    if not privileged:
        profile = _apparmor(sc, prefix, host, ctx.apparmor_default_profile, warn)
        if profile is not None:
            process["apparmorProfile"] = profile

    readonly = bool(sc.readonly_rootfs or ctx.readonly_rootfs)
    volume_mounts, rootfs_propagation = cri_mounts(
        config.mounts,
        propagation_of=propagation_of,
        sources=ctx.volume_sources,
        rro_unsupported=ctx.rro_unsupported,
    )
    taken = {m["destination"] for m in volume_mounts}
    mounts = [
        m
        for m in standard_mounts(privileged=privileged, shm_path=ctx.shm_path)
        + _file_mounts(ctx, readonly)
        if m["destination"] not in taken
    ] + volume_mounts

    devices, device_rules = _devices(config, privileged)
    resources: dict[str, Any] = {"devices": device_rules}
    if linux.HasField("resources"):
        resources.update(linux_resources(linux.resources, host, warn=warn))

    ns_opts = sc.namespace_options
    pod_sc = sandbox_config.linux.security_context
    namespaces = _container_namespaces(ns_opts, ctx, host, privileged)
    spec_linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": ctx.cgroups_path,
        "resources": resources,
        "devices": devices,
    }
    if ctx.userns is not None:
        spec_linux.update(ctx.userns.oci())
    if sandbox_config.linux.sysctls:
        pod_opts = pod_sc.namespace_options
        spec_linux["sysctl"] = check_sysctls(
            sandbox_config.linux.sysctls,
            host_network=pod_opts.network == api_pb2.NODE,
            host_ipc=pod_opts.ipc == api_pb2.NODE,
            host_uts=pod_opts.network == api_pb2.NODE,
            field="sandbox linux.sysctls",
        )
    if rootfs_propagation is not None:
        spec_linux["rootfsPropagation"] = rootfs_propagation
    if privileged:
        spec_linux["maskedPaths"] = []
        spec_linux["readonlyPaths"] = []
    else:
        spec_linux["maskedPaths"] = _paths(
            sc.masked_paths, DEFAULT_MASKED_PATHS, f"{prefix}.masked_paths"
        )
        spec_linux["readonlyPaths"] = _paths(
            sc.readonly_paths, DEFAULT_READONLY_PATHS, f"{prefix}.readonly_paths"
        )
        seccomp = _seccomp(sc, prefix, caps, host)
        if seccomp is not None:
            spec_linux["seccomp"] = seccomp

    annotations = dict(ctx.annotations)
    annotations.update(_pod_annotations(sandbox_config, ctx.sandbox_id))
    annotations[ANNOTATION_CONTAINER_TYPE] = "container"
    annotations[ANNOTATION_CONTAINER_NAME] = config.metadata.name
    annotations[ANNOTATION_IMAGE_NAME] = (
        ctx.image_name or config.image.user_specified_image or config.image.image
    )

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": ctx.rootfs, "readonly": readonly},
        "mounts": mounts,
        "annotations": annotations,
        "linux": spec_linux,
    }
    # No "hostname": an app container always shares the pod's (or the host's) UTS
    # namespace, where the sandbox already set it.
    return spec


def prepare_sandbox_rootfs(directory: str | os.PathLike[str], catatonit: str = CATATONIT) -> str:
    """Create (once) the read-only root filesystem every pod infra container shares.

    It holds a copy of the static catatonit — a copy rather than a bind mount, so that a
    package upgrade replacing the host binary never changes a running pod — and the
    mount points runc would otherwise create, so that the directory is never written to
    while pods use it.  Returns the directory as a string.
    """
    root = os.fspath(directory)
    os.makedirs(root, mode=0o755, exist_ok=True)
    for sub in ("proc", "dev", "sys", "etc", "tmp"):
        os.makedirs(os.path.join(root, sub), mode=0o755, exist_ok=True)
    target = os.path.join(root, "catatonit")
    try:
        current = os.stat(target)
        wanted = os.stat(catatonit)
        fresh = current.st_size == wanted.st_size and current.st_mtime >= wanted.st_mtime
    except FileNotFoundError:
        fresh = False
    if not fresh:
        tmp = target + ".tmp"
        shutil.copy2(catatonit, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    return root


def build_sandbox_spec(
    sandbox_config: api_pb2.PodSandboxConfig,
    ctx: SandboxContext,
    *,
    host: HostInfo | None = None,
    warn: Warn | None = None,
) -> dict[str, Any]:
    """The runtime spec of a pod infra container running ``/catatonit -P``.

    It creates the pod's IPC and UTS namespaces (unless host IPC / host network) and a
    PID namespace (unless host PID), joins ``ctx.network_ns``, sets the pod hostname and
    sysctls, and runs with no capabilities as uid 65535 — or the pod's run_as_user.
    """
    host = host if host is not None else detect_host()
    warn = warn if warn is not None else _default_warn
    linux = sandbox_config.linux
    sc = linux.security_context
    prefix = "linux.security_context"
    opts = sc.namespace_options
    userns = ctx.userns
    wants_userns = opts.HasField("userns_options") and opts.userns_options.mode != api_pb2.NODE
    if userns is None and wants_userns:
        raise FailedPrecondition(
            f"{prefix}.namespace_options.userns_options: the user namespace was not prepared"
        )
    if userns is not None and not ctx.userns_path:
        raise FailedPrecondition(f"{prefix}.namespace_options.userns_options: no namespace path")
    host_net = opts.network == api_pb2.NODE
    host_ipc = opts.ipc == api_pb2.NODE
    host_pid = opts.pid == api_pb2.NODE
    if not host_net and not ctx.network_ns:
        raise InvalidArgument(
            f"{prefix}.namespace_options.network: pod network requested but no network "
            "namespace was prepared"
        )

    namespaces: list[dict[str, str]] = [{"type": "mount"}]
    if not host_net:
        namespaces.append(_ns("network", ctx.network_ns))
        namespaces.append({"type": "uts"})
    if not host_ipc:
        namespaces.append({"type": "ipc"})
    if not host_pid:
        namespaces.append({"type": "pid"})
    if host.cgroup_v2 and not sc.privileged:
        namespaces.append({"type": "cgroup"})
    if userns is not None:
        namespaces.append(_ns("user", ctx.userns_path))

    default_user = SANDBOX_USER
    if userns is not None and (
        userns.host_uid(SANDBOX_USER) is None or userns.host_gid(SANDBOX_USER) is None
    ):
        default_user = 0  # the pod's root: still unprivileged on the host
    uid = sc.run_as_user.value if sc.HasField("run_as_user") else default_user
    gid = sc.run_as_group.value if sc.HasField("run_as_group") else default_user
    for name, value in (("run_as_user", uid), ("run_as_group", gid)):
        if not 0 <= value < 2**32 - 1:
            raise InvalidArgument(f"{prefix}.{name}: {value} is not a valid id")
    gids = [gid]
    for i, g in enumerate(sc.supplemental_groups):
        if not 0 <= g < 2**32 - 1:
            raise InvalidArgument(f"{prefix}.supplemental_groups[{i}]: {g} is not a valid id")
        if g not in gids:
            gids.append(g)

    _check_mapped(userns, uid, gids, f"{prefix}.run_as_user")
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": uid, "gid": gid, "additionalGids": gids},
        "args": ["/catatonit", "-P"],
        "env": [f"PATH={DEFAULT_PATH}"],
        "cwd": "/",
        "capabilities": _capabilities([], []),
        "rlimits": _rlimits(host),
        "noNewPrivileges": True,
        "oomScoreAdj": oom_score_adj(SANDBOX_OOM_SCORE_ADJ, host, field="sandbox", warn=warn),
    }
    if not sc.privileged:
        profile = _apparmor(sc, prefix, host, ctx.apparmor_default_profile, warn)
        if profile is not None:
            process["apparmorProfile"] = profile

    spec_linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": ctx.cgroups_path,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    }
    if userns is not None:
        spec_linux.update(userns.oci())
    if linux.sysctls:
        spec_linux["sysctl"] = check_sysctls(
            linux.sysctls, host_network=host_net, host_ipc=host_ipc, host_uts=host_net
        )
    if not sc.privileged:
        spec_linux["maskedPaths"] = list(DEFAULT_MASKED_PATHS)
        spec_linux["readonlyPaths"] = list(DEFAULT_READONLY_PATHS)
        seccomp = _seccomp(sc, prefix, [], host)
        if seccomp is not None:
            spec_linux["seccomp"] = seccomp

    annotations = dict(ctx.annotations)
    annotations.update(_pod_annotations(sandbox_config, ctx.sandbox_id))
    annotations[ANNOTATION_CONTAINER_TYPE] = "sandbox"
    annotations[ANNOTATION_SANDBOX_LOG_DIR] = sandbox_config.log_directory

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": ctx.rootfs, "readonly": True},
        "mounts": standard_mounts(privileged=False, shm_path=ctx.shm_path),
        "annotations": annotations,
        "linux": spec_linux,
    }
    if not host_net and sandbox_config.hostname:
        # Without one the pod keeps the node's host name (as containerd's pods do): a
        # new UTS namespace starts as a copy of the runtime's.
        spec["hostname"] = _check_hostname(sandbox_config.hostname, "hostname")
    return spec
