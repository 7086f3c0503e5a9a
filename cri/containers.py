"""Container RPCs: Create, Start, Stop, Remove, Status, List, Update, ReopenContainerLog.

A container is an app of its pod's monitor whose process the OCI runtime runs:
the monitor owns its stdio (CRI log + attach endpoint), runs ``runc create``
and ``runc start``, reaps it, and reports its exit.  The daemon keeps the
record (SQLite), the root filesystem (overlay over the image) and the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import secrets
import shutil
import signal as signal_module
import sqlite3
from pathlib import Path
from typing import Any

from cri import faults, validate
from cri.api import api_pb2
from cri.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from cri.monitors import MonitorConnection
from cri.oci import spec as oci_spec
from cri.oci import userns
from cri.oci._securepath import resolve_in_root
from cri.oci.image_config import ImageConfig
from cri.runtime import (
    INFRA_APP,
    MONITOR_DIED,
    Runtime,
    pod_userns,
    write_private,
)
from cri.statuses import CONTAINER_STATES, container_status_proto
from cri.store import ContainerRecord, SandboxRecord, now_ns

log = logging.getLogger("rktlet.containers")

#: How long StopContainer waits for SIGKILL to be reaped before giving up.
KILL_WAIT = 30.0


def check_config(config: api_pb2.ContainerConfig) -> None:
    validate.name(config.metadata.name, "config.metadata.name")
    if not config.image.image:
        raise InvalidArgument("config.image.image: must not be empty")
    validate.bounded(config.image.image, "config.image.image", 4096)
    validate.relative_log_path(config.log_path, "config.log_path")
    if config.working_dir:
        validate.absolute_path(config.working_dir, "config.working_dir")
    validate.mapping(dict(config.labels), "config.labels")
    validate.mapping(dict(config.annotations), "config.annotations")
    for i, env in enumerate(config.envs):
        if not env.key or "=" in env.key or "\0" in env.key + env.value:
            raise InvalidArgument(f"config.envs[{i}].key: {env.key[:80]!r} is not a valid name")
    for i, arg in enumerate([*config.command, *config.args]):
        if "\0" in arg:
            raise InvalidArgument(f"config.command/args[{i}]: contains NUL")
    for i, mount in enumerate(config.mounts):
        validate.absolute_path(mount.container_path, f"config.mounts[{i}].container_path")
        if mount.host_path:
            validate.absolute_path(mount.host_path, f"config.mounts[{i}].host_path")
    security = config.linux.security_context
    validate.group_has_user(
        security.HasField("run_as_group"),
        security.HasField("run_as_user") or bool(security.run_as_username),
        "config.linux.security_context",
    )


# -- CreateContainer --------------------------------------------------------------------


async def create(rt: Runtime, request: api_pb2.CreateContainerRequest) -> Any:
    validate.required_id(request.pod_sandbox_id, "pod_sandbox_id")
    if not request.HasField("config"):
        raise InvalidArgument("config: is required")
    config = request.config
    check_config(config)
    sandbox = rt.sandbox(request.pod_sandbox_id)
    if sandbox.state != "ready":
        raise FailedPrecondition(f"pod_sandbox_id: pod {sandbox.id} is not ready")
    meta = config.metadata
    if rt.store.container_by_name(sandbox.id, meta.name, meta.attempt) is not None:
        raise AlreadyExists(
            f"config.metadata: container {meta.name!r} (attempt {meta.attempt}) already exists "
            f"in pod {sandbox.id}"
        )
    image = rt.images.lookup(config.image.image, "config.image.image")
    if image is None:
        raise NotFound(f"config.image.image: image {config.image.image!r} not found")
    image_config = ImageConfig.from_json(json.loads(rt.image_store.read_blob(image.id)))
    container_id = secrets.token_hex(32)
    sandbox_config = api_pb2.PodSandboxConfig.FromString(sandbox.config)
    log_path = ""
    if sandbox_config.log_directory and config.log_path:
        log_path = os.path.join(sandbox_config.log_directory, config.log_path)
    record = ContainerRecord(
        id=container_id,
        sandbox_id=sandbox.id,
        name=meta.name,
        attempt=meta.attempt,
        state="creating",
        created_at=now_ns(),
        image=config.image.image,
        image_id=image.id,
        image_ref=image.repo_digests[0] if image.repo_digests else image.id,
        config=config.SerializeToString(),
        log_path=log_path,
    )
    try:
        rt.store.add_container(record)
    except sqlite3.IntegrityError as exc:
        raise AlreadyExists(f"config.metadata: container {meta.name!r} exists") from exc
    try:
        async with rt.lock(container_id):
            await _create(rt, sandbox, sandbox_config, record, config, image_config)
    except BaseException:
        await rollback_container(rt, record)
        raise
    rt.publish(record, api_pb2.ContainerEventType.CONTAINER_CREATED_EVENT)
    return api_pb2.CreateContainerResponse(container_id=container_id)


async def _create(
    rt: Runtime,
    sandbox: SandboxRecord,
    sandbox_config: api_pb2.PodSandboxConfig,
    record: ContainerRecord,
    config: api_pb2.ContainerConfig,
    image_config: ImageConfig,
) -> None:
    security = config.linux.security_context
    readonly = security.readonly_rootfs
    bundle = rt.bundle_dir(record.id)
    bundle.mkdir(parents=True, exist_ok=True)
    record.info["bundle"] = str(bundle)
    maps = pod_userns(sandbox)
    userns_path = sandbox.info.get("userns_path") if maps is not None else None
    if userns_path is not None and not os.path.exists(userns_path):
        raise FailedPrecondition(f"pod_sandbox_id: the user namespace of pod {sandbox.id} is gone")
    rootfs = await asyncio.to_thread(
        rt.rootfs.create,
        record.id,
        record.image_id,
        False,
        userns=userns_path,
        owner=(maps.root_uid, maps.root_gid) if maps is not None else None,
    )
    record.info["rootfs"] = str(rootfs)
    rt.store.update_container(record)
    sources = await asyncio.to_thread(_prepare_volumes, rt, record, config, maps, userns_path)
    rt.store.update_container(record)
    features = await rt.handler_features(sandbox.runtime_handler)
    cgroups_path = rt.cgroups_path(sandbox_config.linux.cgroup_parent, record.id)
    record.info["cgroups_path"] = cgroups_path
    state_dir = rt.pod_state_dir(sandbox.id)
    ns = sandbox_config.linux.security_context.namespace_options
    infra_pid = int(sandbox.info.get("infra_pid", 0))
    proc_ns = f"/proc/{infra_pid}/ns"
    namespaces = oci_spec.PodNamespaces(
        network=sandbox.info.get("netns") or None,
        ipc=None if ns.ipc == api_pb2.NamespaceMode.NODE else f"{proc_ns}/ipc",
        uts=None if ns.network == api_pb2.NamespaceMode.NODE else f"{proc_ns}/uts",
        pid=f"{proc_ns}/pid" if ns.pid == api_pb2.NamespaceMode.POD else None,
        user=userns_path,
    )
    spec = oci_spec.build_container_spec(
        config,
        sandbox_config,
        image_config,
        oci_spec.ContainerContext(
            rootfs=str(rootfs),
            container_id=record.id,
            sandbox_id=sandbox.id,
            cgroups_path=cgroups_path,
            namespaces=namespaces,
            readonly_rootfs=readonly,
            hostname=sandbox.info.get("hostname", ""),
            resolv_conf_path=str(state_dir / "resolv.conf"),
            hosts_path=str(state_dir / "hosts"),
            hostname_path=str(state_dir / "hostname"),
            image_name=record.image,
            userns=maps,
            volume_sources=sources,
            rro_unsupported=features.rro_reason,
        ),
        warn=lambda message: log.warning("container %s: %s", record.id, message),
    )
    write_private(bundle / "config.json", json.dumps(spec))
    record.info["stop_signal"] = image_config.stop_signal or "SIGTERM"
    tty = config.tty
    if tty:
        modes = {"stdin": "tty" if config.stdin else "null", "stdout": "tty", "stderr": "tty"}
    else:
        modes = {
            "stdin": "stream" if config.stdin else "null",
            "stdout": "stream",
            "stderr": "stream",
        }
    fields: dict[str, Any] = dict(modes)
    if record.log_path:
        fields["log_path"] = record.log_path
        fields["log_root"] = os.path.normpath(sandbox_config.log_directory)
    oci = {
        "runtime": rt.config.handler_binary(sandbox.runtime_handler),
        "root": rt.runc_root,
        "bundle": str(bundle),
        "id": record.id,
    }
    connection = rt.monitor(sandbox.id)
    created = await connection.request(
        "add", app=record.id, oci=oci, stdin_once=config.stdin_once, **fields
    )
    record.info["pid"] = created.get("pid", 0)
    record.info["user"] = _initial_user(record.info["pid"], record.id, spec["process"]["user"])
    faults.point("CreateContainer:added")
    record.state = "created"
    rt.store.update_container(record)


def _prepare_volumes(
    rt: Runtime,
    record: ContainerRecord,
    config: api_pb2.ContainerConfig,
    maps: userns.UsernsConfig | None,
    userns_path: str | None,
) -> dict[int, str]:
    """Mount what the daemon provides for volumes: images, idmapped host paths.

    Returns the host path runc should bind for each such mount, by index.  Everything
    is mounted below the container's rootfs directory, which removal (and the rollback
    of a failed create) unmounts as a whole.
    """
    sources: dict[int, str] = {}
    image_ids: dict[str, str] = record.info.setdefault("image_volumes", {})
    for i, mount in enumerate(config.mounts):
        field = f"config.mounts[{i}]"
        if mount.image.image:
            if mount.host_path:
                raise InvalidArgument(f"{field}.host_path: must be empty for an image volume")
            target, image_id = rt.rootfs.mount_image(
                record.id, i, mount.image.image, userns=userns_path
            )
            image_ids[str(i)] = image_id
            rt.store.update_container(record)  # RemoveImage now sees the volume
            sources[i] = str(target)
            if mount.image_sub_path:
                sources[i] = _image_sub_path(target, mount.image_sub_path, field)
            continue
        wanted = userns.mount_maps(mount, field)
        if wanted is None:
            continue
        if not os.path.exists(mount.host_path):
            raise InvalidArgument(f"{field}.host_path: {mount.host_path} does not exist")
        if wanted == maps and userns_path is not None:
            sources[i] = str(rt.rootfs.idmapped_volume(record.id, i, mount.host_path, userns_path))
            continue
        # Maps other than the pod's: a namespace of their own, just for the mapping.
        pin = rt.rootfs.dir / record.id / f"userns-{i}"
        userns.create_pod_namespaces(wanted, pin)
        try:
            sources[i] = str(rt.rootfs.idmapped_volume(record.id, i, mount.host_path, str(pin)))
        finally:
            userns.remove_pin(pin)
    return sources


def _image_sub_path(root: Path, sub_path: str, field: str) -> str:
    """The directory or file ``sub_path`` names inside a mounted image volume."""
    clean = posixpath.normpath("/" + sub_path)
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise InvalidArgument(f"{field}.image_sub_path: {sub_path!r} must be relative, no '..'")
    try:
        return resolve_in_root(root, clean)
    except OSError as exc:
        raise InvalidArgument(
            f"{field}.image_sub_path: {sub_path!r} is not in the image ({exc.strerror})"
        ) from exc


async def rollback_container(rt: Runtime, record: ContainerRecord) -> None:
    """Remove whatever a failed or interrupted create made."""
    connection = rt.monitors.get(record.sandbox_id)
    if connection is not None and not connection.closed:
        with contextlib.suppress(Exception):
            await connection.request("signal", app=record.id, signal="KILL")
        with contextlib.suppress(Exception):
            await connection.request("remove", app=record.id)
    await _remove_leftovers(rt, record)
    with contextlib.suppress(Exception):
        await asyncio.to_thread(rt.rootfs.remove, record.id)
    shutil.rmtree(rt.bundle_dir(record.id), ignore_errors=True)
    rt.store.delete_container(record.id)
    rt.forget_container(record.id)


async def _remove_leftovers(rt: Runtime, record: ContainerRecord) -> None:
    """What no monitor removed: runc's container, its processes and cgroups."""
    sandbox = rt.store.get_sandbox(record.sandbox_id)
    if sandbox is not None:
        await rt.remove_leftovers(sandbox, record.id, record.info.get("cgroups_path", ""))


# -- Start / Stop / Remove ---------------------------------------------------------------


async def start(rt: Runtime, request: api_pb2.StartContainerRequest) -> Any:
    record = rt.container(request.container_id)
    async with rt.lock(record.id):
        record = rt.store.get_container(record.id) or record
        if record.state != "created":
            raise FailedPrecondition(
                f"container_id: container {record.id} is {record.state}, not created"
            )
        connection = rt.monitor(record.sandbox_id)
        reply = await connection.request("start", app=record.id)
        started_at = int(reply.get("started_at") or now_ns())
        faults.point("StartContainer:started")
        fresh = rt.store.get_container(record.id) or record
        if fresh.state == "created":  # the exit event may already have landed
            fresh.state = "running"
            fresh.started_at = started_at
            rt.store.update_container(fresh)
        elif not fresh.started_at:
            fresh.started_at = started_at
            rt.store.update_container(fresh)
    rt.publish(fresh, api_pb2.ContainerEventType.CONTAINER_STARTED_EVENT)
    return api_pb2.StartContainerResponse()


def _signal_number(name: str) -> int:
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal_module.Signals[name])
    except KeyError:
        return int(signal_module.SIGTERM)


async def stop(rt: Runtime, request: api_pb2.StopContainerRequest) -> Any:
    validate.required_id(request.container_id, "container_id")
    if request.timeout < 0:
        raise InvalidArgument("timeout: must not be negative")
    try:
        record = rt.container(request.container_id)
    except NotFound:
        # Idempotent, as the CRI asks: the kubelet stops again containers already gone.
        return api_pb2.StopContainerResponse()
    async with rt.lock(record.id):
        fresh = rt.store.get_container(record.id)
        if fresh is not None:
            await stop_record(rt, fresh, timeout=request.timeout)
    return api_pb2.StopContainerResponse()


async def stop_record(rt: Runtime, record: ContainerRecord, *, timeout: float) -> None:
    """Stop signal, then SIGKILL after ``timeout`` seconds; returns once it has exited.

    Without a monitor (it died, before or during the stop) the container is
    ended by :meth:`Runtime.monitor_died`, which records why.
    """
    if record.state == "exited":
        return
    connection = await rt.monitor_or_cleanup(record.sandbox_id)
    try:
        if connection is not None:
            await _stop_through(rt, connection, record, timeout)
            return
    except Unavailable:
        if await rt.monitor_or_cleanup(record.sandbox_id) is not None:
            raise
    fresh = rt.store.get_container(record.id)
    if fresh is not None and fresh.state != "exited":
        await _remove_leftovers(rt, fresh)
        rt.record_exit(
            fresh, {"exit_code": 255, "reason": MONITOR_DIED, "message": "its monitor is gone"}
        )
    _finish(rt, record, {})


async def _stop_through(
    rt: Runtime, connection: MonitorConnection, record: ContainerRecord, timeout: float
) -> None:
    if record.state == "created":
        # Never started: kill the waiting init and record the exit.
        with contextlib.suppress(Exception):
            await connection.request("signal", app=record.id, signal="KILL")
    if timeout > 0:
        signum = _signal_number(record.info.get("stop_signal", "SIGTERM"))
        with contextlib.suppress(FailedPrecondition):
            await connection.request("signal", app=record.id, signal=signum)
        faults.point("StopContainer:signalled")
        try:
            status = await connection.request("wait", app=record.id, timeout=timeout)
            _finish(rt, record, status)
            return
        except TimeoutError:
            log.info("container %s: stop signal not heeded in %ss; killing", record.id, timeout)
    with contextlib.suppress(FailedPrecondition):
        await connection.request("signal", app=record.id, signal="KILL")
    status = await connection.request("wait", app=record.id, timeout=KILL_WAIT)
    _finish(rt, record, status)


def _finish(rt: Runtime, record: ContainerRecord, status: dict[str, Any]) -> None:
    fresh = rt.store.get_container(record.id)
    if fresh is not None and fresh.state != "exited":
        rt.record_exit(fresh, status)
    if fresh is not None:
        record.__dict__.update(fresh.__dict__)
    record.state = "exited"


async def remove(rt: Runtime, request: api_pb2.RemoveContainerRequest) -> Any:
    validate.required_id(request.container_id, "container_id")
    try:
        record = rt.container(request.container_id)
    except NotFound:
        return api_pb2.RemoveContainerResponse()  # idempotent
    async with rt.lock(record.id):
        fresh = rt.store.get_container(record.id)
        if fresh is None:
            return api_pb2.RemoveContainerResponse()
        if fresh.state in ("running", "created"):
            await stop_record(rt, fresh, timeout=0)
        await remove_record(rt, fresh)
    rt.forget_lock(record.id)  # again: a waiter may have made it anew
    return api_pb2.RemoveContainerResponse()


async def remove_record(rt: Runtime, record: ContainerRecord) -> None:
    connection = await rt.monitor_or_cleanup(record.sandbox_id)
    if connection is not None:
        try:
            await connection.request("remove", app=record.id)
        except NotFound:
            pass
    else:
        await _remove_leftovers(rt, record)
    faults.point("RemoveContainer:removed-from-monitor")
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(rt.rootfs.remove, record.id)
    shutil.rmtree(rt.bundle_dir(record.id), ignore_errors=True)
    rt.store.delete_container(record.id)
    rt.forget_container(record.id)
    rt.publish(record, api_pb2.ContainerEventType.CONTAINER_DELETED_EVENT)


# -- Status / List ------------------------------------------------------------------------


def _initial_user(pid: int, container_id: str, given: dict[str, Any]) -> list[Any]:
    """[uid, gid, groups] the created container's process holds, for ContainerStatus.

    Read from the kernel once runc has created the container: its init has switched to
    the container's identity and waits to exec the app, so this is what the app starts
    with ("initially attached", as the CRI puts it), whatever it does later.  The spec's
    values stand in only if the process cannot be read.
    """
    identity = process_identity(pid, container_id) if pid else None
    if identity is None:
        groups = sorted({int(g) for g in given.get("additionalGids", [])})
        return [int(given["uid"]), int(given["gid"]), groups]
    return list(identity)


def process_identity(pid: int, container_id: str) -> tuple[int, int, list[int]] | None:
    """Real uid, gid and groups of ``pid`` from /proc, if it is still that container's."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            # A recycled pid would sit in another cgroup: ours are named by the id.
            if container_id.encode() not in f.read():
                return None
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        uid = int(fields[b"Uid"].split()[0])
        gid = int(fields[b"Gid"].split()[0])
        groups = sorted(int(g) for g in fields.get(b"Groups", b"").split())
    except (OSError, KeyError, ValueError):
        return None
    return uid, gid, groups


async def status(rt: Runtime, request: api_pb2.ContainerStatusRequest) -> Any:
    # Read-only, and asked for every container every few seconds: from the views.
    record = rt.peek_container(request.container_id)
    response = api_pb2.ContainerStatusResponse(
        status=rt.views.container_status(record, rt.log_drop_message(record.id))
    )
    if request.verbose:
        response.info["info"] = json.dumps(
            {"sandboxID": record.sandbox_id, "state": record.state, **record.info}, sort_keys=True
        )
    return response


async def list_(rt: Runtime, request: api_pb2.ListContainersRequest) -> Any:
    flt = request.filter if request.HasField("filter") else None
    if flt is None or flt == _NO_FILTER:  # the kubelet's relist, every second
        return rt.views.unfiltered("ListContainers", lambda: _list_response(rt, None))
    key = flt.SerializeToString(deterministic=True)
    return rt.views.filtered("ListContainers", key, lambda: _list_response(rt, flt))


_NO_FILTER = api_pb2.ContainerFilter()


def _list_response(
    rt: Runtime, flt: api_pb2.ContainerFilter | None
) -> api_pb2.ListContainersResponse:
    listing = rt.views.container_listing()
    items = listing.select(flt.label_selector) if flt is not None else listing.items
    out = []
    for item in items:
        record = item.record
        if flt is not None:
            if flt.id and not record.id.startswith(flt.id):
                continue
            if flt.pod_sandbox_id and not record.sandbox_id.startswith(flt.pod_sandbox_id):
                continue
            if flt.HasField("state") and CONTAINER_STATES.get(record.state) != flt.state.state:
                continue
        out.append(item.message)
    return api_pb2.ListContainersResponse(containers=out)


# -- Update, Reopen -----------------------------------------------------------------------


async def update_resources(rt: Runtime, request: api_pb2.UpdateContainerResourcesRequest) -> Any:
    """Change a running container's cgroup limits in place (``runc update``).

    A memory limit below what the container uses is refused rather than applied: the
    kernel would OOM-kill the app to meet it.
    """
    record = rt.container(request.container_id)
    if not request.HasField("linux"):
        return api_pb2.UpdateContainerResourcesResponse()
    from cri.oci.host import detect_host
    from cri.oci.resources import linux_resources
    from cri.oci.runc import Runc

    resources = linux_resources(request.linux, detect_host(), field="linux")
    async with rt.lock(record.id):
        record = rt.store.get_container(record.id) or record
        if record.state not in ("created", "running"):
            raise FailedPrecondition(f"container_id: container {record.id} is {record.state}")
        cgroups_path = record.info.get("cgroups_path", "")
        if cgroups_path:
            rt.check_memory_limit(
                rt.cgroup_dir(cgroups_path), request.linux.memory_limit_in_bytes, "linux"
            )
        binary = rt.config.handler_binary(rt.sandbox(record.sandbox_id).runtime_handler)
        await Runc(rt.runc_root, binary=binary).update(record.id, resources)
        config = api_pb2.ContainerConfig.FromString(record.config)
        config.linux.resources.CopyFrom(request.linux)
        record.config = config.SerializeToString()
        rt.store.update_container_config(record)
    return api_pb2.UpdateContainerResourcesResponse()


async def checkpoint(rt: Runtime, request: api_pb2.CheckpointContainerRequest) -> Any:
    """CheckpointContainer: refused with the reason CRIU gives on this node."""
    from cri.oci.features import criu_unavailable

    record = rt.container(request.container_id)
    if record.state != "running":
        raise FailedPrecondition(f"container_id: container {record.id} is not running")
    reason = await asyncio.to_thread(criu_unavailable)
    if reason:
        raise FailedPrecondition(f"container_id: cannot checkpoint {record.id}: {reason}")
    raise Unimplemented(
        "CheckpointContainer: CRIU works on this node, but rktlet does not write checkpoint "
        "archives"
    )


async def reopen_log(rt: Runtime, request: api_pb2.ReopenContainerLogRequest) -> Any:
    record = rt.container(request.container_id)
    if record.state != "running":
        raise FailedPrecondition(f"container_id: container {record.id} is not running")
    if not record.log_path:
        raise FailedPrecondition(f"container_id: container {record.id} has no log path")
    await rt.monitor(record.sandbox_id).request("reopen", app=record.id)
    return api_pb2.ReopenContainerLogResponse()


__all__ = ["INFRA_APP", "container_status_proto", "create", "remove", "start", "stop"]
