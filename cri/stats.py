"""Stats RPCs: ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.

Figures come straight from the cgroup files (v1, v2 or hybrid, see
:mod:`cri.cgroups`).  ``usage_nano_cores`` needs two samples: the runtime keeps
the previous CPU sample of every cgroup it was asked about.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cri import cgroups
from cri.api import api_pb2
from cri.network.netns import interface_counters_via
from cri.runtime import Runtime, labels_match
from cri.store import ContainerRecord, SandboxRecord, now_ns


def _u64(value: int | None) -> api_pb2.UInt64Value | None:
    return None if value is None else api_pb2.UInt64Value(value=max(0, value))


def _cgroup_stats(rt: Runtime, cgroups_path: str) -> cgroups.CgroupStats:
    directory = rt.cgroup_dir(cgroups_path)
    stats = cgroups.read_usage(
        directory, rt.cgroup_layout, previous_cpu=rt.cpu_samples.get(directory)
    )
    if stats.cpu is not None:
        rt.cpu_samples[directory] = stats.cpu
    return stats


def _cpu(stats: cgroups.CgroupStats) -> api_pb2.CpuUsage | None:
    if stats.cpu is None:
        return None
    return api_pb2.CpuUsage(
        timestamp=stats.cpu.timestamp_ns,
        usage_core_nano_seconds=_u64(stats.cpu.usage_core_ns),
        usage_nano_cores=_u64(stats.cpu.usage_nano_cores),
    )


def _memory(stats: cgroups.CgroupStats) -> api_pb2.MemoryUsage | None:
    memory = stats.memory
    if memory is None:
        return None
    return api_pb2.MemoryUsage(
        timestamp=memory.timestamp_ns,
        working_set_bytes=_u64(memory.working_set_bytes),
        available_bytes=_u64(memory.available_bytes),
        usage_bytes=_u64(memory.usage_bytes),
        rss_bytes=_u64(memory.rss_bytes),
        page_faults=_u64(memory.page_faults),
        major_page_faults=_u64(memory.major_page_faults),
    )


def container_stats_proto(rt: Runtime, record: ContainerRecord) -> api_pb2.ContainerStats:
    config = rt.views.container_config(record)
    result = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=record.id,
            metadata=config.metadata,
            labels=config.labels,
            annotations=config.annotations,
        )
    )
    path = record.info.get("cgroups_path", "")
    if path and record.state == "running":
        stats = _cgroup_stats(rt, path)
        cpu, memory = _cpu(stats), _memory(stats)
        if cpu is not None:
            result.cpu.CopyFrom(cpu)
        if memory is not None:
            result.memory.CopyFrom(memory)
    rootfs = record.info.get("rootfs", "")
    if rootfs:
        result.writable_layer.CopyFrom(writable_layer_usage(rt, record))
    return result


def writable_layer_usage(rt: Runtime, record: ContainerRecord) -> api_pb2.FilesystemUsage:
    """Bytes and inodes of the container's writable layer (its overlay upper dir).

    From the runtime's usage cache, as ImageFsInfo: the timestamp is when it was measured.
    """
    layer = rt.fs_usage.layer(record.id)
    return api_pb2.FilesystemUsage(
        timestamp=layer.timestamp_ns,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(rt.rootfs.dir)),
        used_bytes=api_pb2.UInt64Value(value=layer.used_bytes),
        inodes_used=api_pb2.UInt64Value(value=layer.inodes_used),
    )


async def container_stats(rt: Runtime, request: api_pb2.ContainerStatsRequest) -> Any:
    record = rt.peek_container(request.container_id)
    return api_pb2.ContainerStatsResponse(stats=container_stats_proto(rt, record))


async def list_container_stats(rt: Runtime, request: api_pb2.ListContainerStatsRequest) -> Any:
    flt = request.filter if request.HasField("filter") else None
    out = []
    for listed in rt.views.containers():
        # A node's worth of cgroup reads and layer walks: let the calls that came
        # meanwhile (the kubelet's relist, its status polls) through between containers,
        # and take each container as it is when its turn comes.
        await asyncio.sleep(0)
        record = rt.views.get_container(listed.id)
        if record is None or record.state != "running":
            continue
        if flt is not None:
            if flt.id and not record.id.startswith(flt.id):
                continue
            if flt.pod_sandbox_id and not record.sandbox_id.startswith(flt.pod_sandbox_id):
                continue
            config = rt.views.container_config(record)
            if not labels_match(config.labels, flt.label_selector):
                continue
        out.append(container_stats_proto(rt, record))
    return api_pb2.ListContainerStatsResponse(stats=out)


def pod_stats_proto(rt: Runtime, record: SandboxRecord) -> api_pb2.PodSandboxStats:
    config = rt.views.sandbox_config(record)
    result = api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=record.id,
            metadata=config.metadata,
            labels=config.labels,
            annotations=config.annotations,
        )
    )
    linux = result.linux
    # Always there, even empty: the kubelet (PodAndContainerStatsFromCRI) reads
    # linux.containers of every pod without checking that linux is set.
    linux.SetInParent()
    if record.state == "ready":
        # The pod's figures: the pod cgroup when the kubelet gave one, else the sum
        # of what runs in it (infra container + containers).
        parent = config.linux.cgroup_parent
        containers = [c for c in rt.views.containers(record.id) if c.state == "running"]
        if parent:
            stats = cgroups.read_usage(
                cgroups.pod_cgroup_dir(parent, rt.cgroup_driver), rt.cgroup_layout
            )
            cpu, memory = _cpu(stats), _memory(stats)
            if cpu is not None:
                linux.cpu.CopyFrom(cpu)
            if memory is not None:
                linux.memory.CopyFrom(memory)
        for container in containers:
            linux.containers.append(container_stats_proto(rt, container))
        netns = record.info.get("netns")
        if netns:
            network = _network(str(netns), int(record.info.get("infra_pid") or 0))
            if network is not None:
                linux.network.CopyFrom(network)
        infra = record.info.get("cgroups_path", "")
        cgroup_dirs = [rt.cgroup_dir(p) for p in (infra, *_paths(containers)) if p]
        linux.process.timestamp = now_ns()
        linux.process.process_count.value = sum(
            len(cgroups.cgroup_pids(d, rt.cgroup_layout)) for d in cgroup_dirs
        )
        if not parent and linux.containers:
            linux.cpu.timestamp = now_ns()
            linux.cpu.usage_core_nano_seconds.value = sum(
                c.cpu.usage_core_nano_seconds.value for c in linux.containers
            )
            linux.memory.timestamp = now_ns()
            linux.memory.working_set_bytes.value = sum(
                c.memory.working_set_bytes.value for c in linux.containers
            )
    return result


def _paths(containers: list[ContainerRecord]) -> list[str]:
    return [c.info.get("cgroups_path", "") for c in containers]


def _network(netns: str, infra_pid: int) -> api_pb2.NetworkUsage | None:
    """The pod's interfaces; the default one is eth0, the one CNI made."""
    try:
        counters = interface_counters_via(netns, infra_pid)
    except OSError:
        return None  # gone with its pod meanwhile
    usage = api_pb2.NetworkUsage(timestamp=now_ns())
    for name, c in sorted(counters.items()):
        if name == "lo":
            continue
        interface = api_pb2.NetworkInterfaceUsage(
            name=name,
            rx_bytes=_u64(c.rx_bytes),
            rx_errors=_u64(c.rx_errors),
            tx_bytes=_u64(c.tx_bytes),
            tx_errors=_u64(c.tx_errors),
        )
        usage.interfaces.append(interface)
        if name == "eth0":
            usage.default_interface.CopyFrom(interface)
    return usage


async def pod_sandbox_stats(rt: Runtime, request: api_pb2.PodSandboxStatsRequest) -> Any:
    record = rt.peek_sandbox(request.pod_sandbox_id)
    return api_pb2.PodSandboxStatsResponse(stats=pod_stats_proto(rt, record))


async def list_pod_sandbox_stats(rt: Runtime, request: api_pb2.ListPodSandboxStatsRequest) -> Any:
    flt = request.filter if request.HasField("filter") else None
    out = []
    for listed in rt.views.sandboxes():
        await asyncio.sleep(0)  # as in list_container_stats: others' calls go first
        record = rt.views.get_sandbox(listed.id)
        if record is None or record.state != "ready":
            continue
        if flt is not None:
            if flt.id and not record.id.startswith(flt.id):
                continue
            config = rt.views.sandbox_config(record)
            if not labels_match(config.labels, flt.label_selector):
                continue
        out.append(pod_stats_proto(rt, record))
    return api_pb2.ListPodSandboxStatsResponse(stats=out)
