"""Pod sandbox RPCs: RunPodSandbox, Stop, Remove, Status, List.

A pod is: a pinned network namespace set up by CNI (unless it uses the host's),
its resolv.conf / hosts / hostname files, one iottymux monitor, and an infra
container (``catatonit -P`` under the OCI runtime) that holds the pod's IPC and
UTS (and, when shared, PID) namespaces for the containers to join.

Creation is a sequence of steps, each pushing its undo; any failure runs the
undos in reverse, so a failed RunPodSandbox leaves nothing behind.  The record
is committed as ``creating`` first, so that a daemon killed half-way finds and
rolls it back on restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from cri import cgroups, faults, validate
from cri.api import api_pb2
from cri.containers import remove_record, stop_record
from cri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cri.monitors import start_monitor
from cri.network import netns, podfiles
from cri.oci import spec as oci_spec
from cri.oci import userns
from cri.oci.host import detect_host
from cri.oci.resources import linux_resources
from cri.runtime import INFRA_APP, Runtime, pod_userns, write_private
from cri.store import SandboxRecord, now_ns

log = logging.getLogger("rktlet.sandboxes")

Undo = Callable[[], Awaitable[None]]

NODE = api_pb2.NamespaceMode.NODE
POD = api_pb2.NamespaceMode.POD


# -- validation ---------------------------------------------------------------------


def check_config(config: api_pb2.PodSandboxConfig) -> None:
    meta = config.metadata
    validate.name(meta.name, "config.metadata.name")
    validate.name(meta.namespace, "config.metadata.namespace")
    validate.name(meta.uid, "config.metadata.uid")
    validate.bounded(config.hostname, "config.hostname", 253)
    if config.log_directory:
        validate.absolute_path(config.log_directory, "config.log_directory")
    validate.mapping(dict(config.labels), "config.labels")
    validate.mapping(dict(config.annotations), "config.annotations")
    security = config.linux.security_context
    validate.group_has_user(
        security.HasField("run_as_group"),
        security.HasField("run_as_user"),
        "config.linux.security_context",
    )
    for i, mapping in enumerate(config.port_mappings):
        where = f"config.port_mappings[{i}]"
        if not 0 < mapping.container_port < 65536:
            raise InvalidArgument(f"{where}.container_port: {mapping.container_port} out of range")
        if not 0 <= mapping.host_port < 65536:
            raise InvalidArgument(f"{where}.host_port: {mapping.host_port} out of range")


# -- RunPodSandbox --------------------------------------------------------------------


async def run(rt: Runtime, request: api_pb2.RunPodSandboxRequest) -> Any:
    if not request.HasField("config"):
        raise InvalidArgument("config: is required")
    config = request.config
    check_config(config)
    rt.config.handler_binary(request.runtime_handler)  # InvalidArgument if unknown
    pod_userns = await _check_userns(rt, config, request.runtime_handler)
    meta = config.metadata
    existing = rt.store.sandbox_by_name(meta.namespace, meta.name, meta.uid, meta.attempt)
    if existing is not None:
        raise AlreadyExists(
            f"config.metadata: pod {meta.namespace}/{meta.name} (uid {meta.uid}, attempt "
            f"{meta.attempt}) already exists as {existing.id}"
        )
    sandbox_id = secrets.token_hex(32)
    record = SandboxRecord(
        id=sandbox_id,
        name=meta.name,
        namespace=meta.namespace,
        uid=meta.uid,
        attempt=meta.attempt,
        state="creating",
        created_at=now_ns(),
        config=config.SerializeToString(),
        runtime_handler=request.runtime_handler,
        info={"run_dir": rt.pod_run_dir(sandbox_id)},
    )
    if pod_userns is not None:
        record.info["userns"] = pod_userns.to_json()
        record.info["userns_path"] = str(rt.userns_pin(sandbox_id))
    try:
        rt.store.add_sandbox(record)
    except sqlite3.IntegrityError as exc:  # the unique index: a concurrent RunPodSandbox won
        raise AlreadyExists(f"config.metadata: pod {meta.namespace}/{meta.name} exists") from exc
    undo: list[Undo] = []
    async with rt.lock(sandbox_id):
        try:
            await _create(rt, record, config, undo)
        except BaseException:
            await _unwind(undo, sandbox_id)
            rt.store.delete_sandbox(sandbox_id)
            rt.forget_lock(sandbox_id)
            raise
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


async def _check_userns(
    rt: Runtime, config: api_pb2.PodSandboxConfig, handler: str
) -> userns.UsernsConfig | None:
    """The pod's user namespace maps, once the handler and node are known to take them."""
    field = "config.linux.security_context.namespace_options"
    options = config.linux.security_context.namespace_options
    pod_userns = userns.from_cri(options, field)
    if pod_userns is None:
        return None
    if options.network == NODE:
        raise InvalidArgument(
            f"{field}.userns_options: a user namespace with the host network is not supported"
        )
    if config.linux.security_context.privileged:
        raise InvalidArgument(f"{field}.userns_options: a privileged pod cannot have one")
    features = await rt.handler_features(handler)
    if not features.user_namespaces:
        raise FailedPrecondition(
            f"{field}.userns_options: runtime handler {handler!r} cannot run user namespaces "
            f"on this node: {features.userns_reason}"
        )
    for directory in (rt.root, *rt.root.parents):
        # runc's init finds the root filesystem as the pod's root, nobody on the host.
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise FailedPrecondition(
                f"{field}.userns_options: {directory} must be searchable by others (o+x) for "
                "pods with a user namespace to reach their root filesystems"
            )
    return pod_userns


async def _unwind(undo: list[Undo], sandbox_id: str) -> None:
    for step in reversed(undo):
        try:
            await step()
        except Exception:
            log.exception("pod %s: rollback step failed", sandbox_id)


async def _create(
    rt: Runtime, record: SandboxRecord, config: api_pb2.PodSandboxConfig, undo: list[Undo]
) -> None:
    sandbox_id = record.id
    ns_options = config.linux.security_context.namespace_options
    host_network = ns_options.network == NODE
    state_dir = rt.pod_state_dir(sandbox_id)
    state_dir.mkdir(parents=True, exist_ok=True)

    async def remove_state_dir() -> None:
        shutil.rmtree(state_dir, ignore_errors=True)

    undo.append(remove_state_dir)
    if config.hostname:
        podfiles.validate_hostname(config.hostname, "config.hostname")
    # Empty means the node's host name, as containerd does; the pod's name never stands
    # in for it (crictl's generated pod names are longer than a host name may be).
    hostname = config.hostname or socket.gethostname()
    podfiles.validate_dns_config(config.dns_config if config.HasField("dns_config") else None)
    record.info.update(host_network=host_network, hostname=hostname, ip="", additional_ips=[])

    # The monitor needs no network: start it while CNI works.
    run_dir = rt.pod_run_dir(sandbox_id)
    monitor_start = asyncio.create_task(start_monitor(run_dir, sandbox_id))

    async def stop_monitor() -> None:
        with contextlib.suppress(BaseException):
            await monitor_start
        connection = await rt.retire_monitor(sandbox_id)
        if connection is None and os.path.exists(os.path.join(run_dir, "control.sock")):
            with contextlib.suppress(Exception):
                await rt.connect_monitor(sandbox_id)
                connection = await rt.retire_monitor(sandbox_id)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.request("shutdown", timeout=30)
            await connection.close()
        shutil.rmtree(run_dir, ignore_errors=True)

    undo.append(stop_monitor)
    maps = pod_userns(record)
    if maps is not None:
        # Before the network namespace: that one must belong to the user namespace.
        user_pin = rt.userns_pin(sandbox_id)

        async def drop_userns() -> None:
            await asyncio.to_thread(userns.remove_pin, user_pin)

        undo.append(drop_userns)
    if not host_network:
        if maps is not None:
            netns_path = netns.netns_path(rt.run_dir, sandbox_id)
            await asyncio.to_thread(userns.create_pod_namespaces, maps, user_pin, netns_path)
            await asyncio.to_thread(netns.run_in_netns, netns_path, netns.bring_up_loopback)
        else:
            netns_path = await asyncio.to_thread(netns.create_netns, rt.run_dir, sandbox_id)
        record.info["netns"] = str(netns_path)

        async def drop_netns() -> None:
            await asyncio.to_thread(netns.remove_netns, netns_path)

        undo.append(drop_netns)
        rt.store.update_sandbox(record)  # recovery needs the netns path
        ports = list(config.port_mappings)
        result = await rt.network.setup(
            sandbox_id,
            str(netns_path),
            config.metadata.namespace,
            config.metadata.name,
            config.metadata.uid,
            ports,
        )

        async def network_down() -> None:
            await rt.network.teardown(
                sandbox_id,
                str(netns_path),
                config.metadata.namespace,
                config.metadata.name,
                config.metadata.uid,
                ports,
            )

        undo.append(network_down)
        record.info["ip"] = result.ip
        record.info["additional_ips"] = list(result.additional_ips)
    podfiles.write_pod_files(
        state_dir,
        hostname=hostname,
        pod_ips=[record.info["ip"], *record.info["additional_ips"]] if record.info["ip"] else [],
        dns_config=config.dns_config if config.HasField("dns_config") else None,
        host_network=host_network,
    )
    if maps is not None:
        # The pod's root may rewrite them, as it may elsewhere.
        for name in ("resolv.conf", "hosts", "hostname"):
            with contextlib.suppress(FileNotFoundError):
                os.chown(state_dir / name, maps.root_uid, maps.root_gid)

    # The monitor: one per pod, detached; it outlives this daemon.
    record.info["monitor_pid"] = await monitor_start
    connection = await rt.connect_monitor(sandbox_id)
    faults.point("RunPodSandbox:monitor-started")

    # The infra container holds the pod's namespaces.
    bundle = state_dir / "infra"
    bundle.mkdir(exist_ok=True)
    cgroups_path = rt.cgroups_path(config.linux.cgroup_parent, sandbox_id)
    record.info["cgroups_path"] = cgroups_path
    rootfs = await asyncio.to_thread(oci_spec.prepare_sandbox_rootfs, rt.root / "infra-rootfs")
    spec = oci_spec.build_sandbox_spec(
        config,
        oci_spec.SandboxContext(
            rootfs=rootfs,
            sandbox_id=sandbox_id,
            cgroups_path=cgroups_path,
            network_ns=record.info.get("netns") or None,
            userns=maps,
            userns_path=record.info.get("userns_path"),
        ),
        warn=lambda message: log.warning("pod %s: %s", sandbox_id, message),
    )
    write_private(bundle / "config.json", json.dumps(spec))
    oci = {
        "runtime": rt.config.handler_binary(record.runtime_handler),
        "root": rt.runc_root,
        "bundle": str(bundle),
        "id": sandbox_id,
    }

    async def drop_infra() -> None:
        with contextlib.suppress(Exception):
            await connection.request("signal", app=INFRA_APP, signal="KILL")
            await connection.request("wait", app=INFRA_APP, timeout=30)
        with contextlib.suppress(Exception):
            await connection.request("remove", app=INFRA_APP)
        # The monitor may have died mid-create: runc's container is ours to end then.
        await rt.remove_leftovers(record, sandbox_id, cgroups_path)

    undo.append(drop_infra)
    created = await connection.request(
        "add", app=INFRA_APP, oci=oci, stdin="null", stdout="null", stderr="null"
    )
    record.info["infra_pid"] = created.get("pid", 0)
    faults.point("RunPodSandbox:infra-created")
    await connection.request("start", app=INFRA_APP)
    record.state = "ready"
    rt.store.update_sandbox(record)


# -- Stop and Remove --------------------------------------------------------------------


async def stop(rt: Runtime, request: api_pb2.StopPodSandboxRequest) -> Any:
    validate.required_id(request.pod_sandbox_id, "pod_sandbox_id")
    try:
        record = rt.sandbox(request.pod_sandbox_id)
    except NotFound:
        return api_pb2.StopPodSandboxResponse()  # idempotent, as CRI asks
    async with rt.lock(record.id):
        record = rt.store.get_sandbox(record.id) or record
        await teardown(rt, record, remove=False)
    return api_pb2.StopPodSandboxResponse()


async def remove(rt: Runtime, request: api_pb2.RemovePodSandboxRequest) -> Any:
    validate.required_id(request.pod_sandbox_id, "pod_sandbox_id")
    try:
        record = rt.sandbox(request.pod_sandbox_id)
    except NotFound:
        return api_pb2.RemovePodSandboxResponse()
    async with rt.lock(record.id):
        record = rt.store.get_sandbox(record.id) or record
        await teardown(rt, record, remove=True)
        rt.store.delete_sandbox(record.id)
    rt.forget_container(record.id)
    return api_pb2.RemovePodSandboxResponse()


async def teardown(rt: Runtime, record: SandboxRecord, *, remove: bool) -> None:
    """Stop (and with ``remove``, delete) everything of a pod but its record."""
    for container in rt.store.list_containers(record.id):
        if container.state in ("running", "created"):
            await stop_record(rt, container, timeout=0)
        if remove:
            await remove_record(rt, container)
    faults.point("StopPodSandbox:containers-stopped" if not remove else "RemovePodSandbox:mid")
    connection = await rt.monitor_or_cleanup(record.id)
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.request("signal", app=INFRA_APP, signal="KILL")
        with contextlib.suppress(Exception):
            await connection.request("wait", app=INFRA_APP, timeout=30)
    netns_path = record.info.get("netns", "")
    if netns_path and not record.info.get("network_down"):
        config = api_pb2.PodSandboxConfig.FromString(record.config)
        try:
            await rt.network.teardown(
                record.id,
                netns_path,
                config.metadata.namespace,
                config.metadata.name,
                config.metadata.uid,
                list(config.port_mappings),
            )
        except Exception as exc:
            log.warning("pod %s: CNI teardown: %s", record.id, exc)
        await asyncio.to_thread(netns.remove_netns, netns_path)
        record.info["network_down"] = True
    if record.info.get("userns_path"):
        # Once nothing of the pod runs: joining it is all it was kept for.
        await asyncio.to_thread(userns.remove_pin, record.info["userns_path"])
    if remove:
        if connection is not None and not connection.closed:
            with contextlib.suppress(Exception):
                await connection.request("remove", app=INFRA_APP)
            await rt.retire_monitor(record.id)
            with contextlib.suppress(Exception):
                await connection.request("shutdown", timeout=30)
            faults.point("RemovePodSandbox:monitor-shut-down")
        if connection is not None:
            await connection.close()
        rt.monitors.pop(record.id, None)
        # Whatever the monitor did not end (it died, or a step failed) ends here.
        await rt.remove_leftovers(record, record.id, record.info.get("cgroups_path", ""))
        shutil.rmtree(rt.pod_run_dir(record.id), ignore_errors=True)
        shutil.rmtree(rt.pod_state_dir(record.id), ignore_errors=True)
    else:
        record.state = "notready"
        rt.store.update_sandbox(record)


# -- Status and List -----------------------------------------------------------------------


async def status(rt: Runtime, request: api_pb2.PodSandboxStatusRequest) -> Any:
    # Read-only, and asked for every pod every few seconds: from the views.
    record = rt.peek_sandbox(request.pod_sandbox_id)
    response = api_pb2.PodSandboxStatusResponse()
    response.CopyFrom(rt.views.sandbox_status_response(record, rt.log_drop_message))
    if request.verbose:
        response.info["info"] = json.dumps(
            {"state": record.state, "runtimeHandler": record.runtime_handler, **record.info},
            sort_keys=True,
        )
    response.timestamp = now_ns()
    return response


async def list_(rt: Runtime, request: api_pb2.ListPodSandboxRequest) -> Any:
    flt = request.filter if request.HasField("filter") else None
    if flt is None or flt == _NO_FILTER:  # the kubelet's relist, every second
        return rt.views.unfiltered("ListPodSandbox", lambda: _list_response(rt, None))
    key = flt.SerializeToString(deterministic=True)
    return rt.views.filtered("ListPodSandbox", key, lambda: _list_response(rt, flt))


_NO_FILTER = api_pb2.PodSandboxFilter()


def _list_response(
    rt: Runtime, flt: api_pb2.PodSandboxFilter | None
) -> api_pb2.ListPodSandboxResponse:
    listing = rt.views.sandbox_listing()
    items = listing.select(flt.label_selector) if flt is not None else listing.items
    out = []
    for item in items:
        record = item.record
        if flt is not None:
            if flt.id and not record.id.startswith(flt.id):
                continue
            ready = record.state == "ready"
            if (
                flt.HasField("state")
                and (flt.state.state == api_pb2.PodSandboxState.SANDBOX_READY) != ready
            ):
                continue
        out.append(item.message)
    return api_pb2.ListPodSandboxResponse(items=out)


def _pod_limits(request: api_pb2.UpdatePodSandboxResourcesRequest) -> cgroups.CgroupLimits:
    """The pod cgroup's limits: the containers' sum plus the pod's overhead, as the kubelet."""
    res, extra = request.resources, request.overhead
    return cgroups.CgroupLimits(
        cpu_shares=res.cpu_shares + extra.cpu_shares if res.cpu_shares else None,
        cpu_quota=res.cpu_quota + max(extra.cpu_quota, 0) if res.cpu_quota > 0 else None,
        cpu_period=res.cpu_period or extra.cpu_period or None,
        memory_limit=res.memory_limit_in_bytes + extra.memory_limit_in_bytes
        if res.memory_limit_in_bytes
        else None,
    )


async def update_resources(rt: Runtime, request: api_pb2.UpdatePodSandboxResourcesRequest) -> Any:
    """In-place pod resize: record the pod's new resources and apply them to its cgroup.

    The kubelet calls this after it has resized the pod cgroup itself, so writing the
    same limits again changes nothing then; a CRI client without a kubelet gets its pod
    cgroup (``linux.cgroup_parent``) resized here.  A pod with no cgroup of its own (no
    parent given: its containers sit under rktlet's shared parent) only records them.
    """
    validate.required_id(request.pod_sandbox_id, "pod_sandbox_id")
    record = rt.sandbox(request.pod_sandbox_id)
    host = detect_host()
    for name in ("overhead", "resources"):
        if request.HasField(name):
            linux_resources(getattr(request, name), host, field=name)
    async with rt.lock(record.id):
        record = rt.store.get_sandbox(record.id) or record
        if record.state != "ready":
            raise FailedPrecondition(f"pod_sandbox_id: pod {record.id} is not ready")
        config = api_pb2.PodSandboxConfig.FromString(record.config)
        limits = _pod_limits(request)
        if config.linux.cgroup_parent and limits != cgroups.CgroupLimits():
            directory = cgroups.pod_cgroup_dir(config.linux.cgroup_parent, rt.cgroup_driver)
            if limits.memory_limit is not None:
                rt.check_memory_limit(directory, limits.memory_limit, "resources")
            try:
                await asyncio.to_thread(cgroups.set_limits, directory, rt.cgroup_layout, limits)
            except OSError as exc:
                raise FailedPrecondition(f"resources: pod cgroup {directory}: {exc}") from exc
        for name in ("overhead", "resources"):
            if request.HasField(name):
                getattr(config.linux, name).CopyFrom(getattr(request, name))
        record.config = config.SerializeToString()
        rt.store.update_sandbox_config(record)
    return api_pb2.UpdatePodSandboxResourcesResponse()
