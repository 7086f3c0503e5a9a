"""CRI metrics RPCs: ListMetricDescriptors and ListPodSandboxMetrics.

With these the kubelet serves ``/metrics/cadvisor`` from the runtime instead of
cAdvisor (feature ``PodAndContainerStatsFromCRI``): it asks once for the descriptors,
then on every scrape for the samples, and publishes each sample whose name it was
told about.  So the names, help texts and units are cAdvisor's, and the labels are
those of the kubelet's cAdvisor metrics (``container``, ``id``, ``image``, ``name``,
``namespace``, ``pod``) plus each family's own (``cpu``, ``interface``, ``device``,
``failure_type``, ``scope``).  Values are whole numbers, as the CRI carries them:
seconds are cut to whole seconds.

Container samples come from the container's cgroup (v1, v2 or hybrid, through
:mod:`cri.cgroups`) and its processes; pod samples from the pod's cgroup, when the
kubelet gave it one, and from the interfaces of the pod's network namespace.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cri import cgroups
from cri.api import api_pb2
from cri.network.netns import InterfaceCounters, interface_counters
from cri.runtime import Runtime
from cri.stats import writable_layer_usage
from cri.store import ContainerRecord, SandboxRecord

__all__ = ["FAMILIES", "list_metric_descriptors", "list_pod_sandbox_metrics"]

COUNTER = api_pb2.MetricType.COUNTER
GAUGE = api_pb2.MetricType.GAUGE
LABELS = ("container", "id", "image", "name", "namespace", "pod")
_NS = 1_000_000_000

#: What one sample of a family is: the family's own label values and the value.
Sample = tuple[tuple[str, ...], int]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    help: str
    kind: int
    extra_labels: tuple[str, ...] = ()


def _families() -> list[Family]:
    c, g = COUNTER, GAUGE
    dev, iface = ("device",), ("interface",)
    families = [
        Family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.",
               c, ("cpu",)),
        Family("container_cpu_user_seconds_total",
               "Cumulative user cpu time consumed in seconds.", c),
        Family("container_cpu_system_seconds_total",
               "Cumulative system cpu time consumed in seconds.", c),
        Family("container_cpu_cfs_periods_total",
               "Number of elapsed enforcement period intervals.", c),
        Family("container_cpu_cfs_throttled_periods_total",
               "Number of throttled period intervals.", c),
        Family("container_cpu_cfs_throttled_seconds_total",
               "Total time duration the container has been throttled.", c),
        Family("container_memory_usage_bytes",
               "Current memory usage in bytes, including all memory regardless of when it was "
               "accessed", g),
        Family("container_memory_working_set_bytes", "Current working set in bytes.", g),
        Family("container_memory_rss", "Size of RSS in bytes.", g),
        Family("container_memory_cache", "Number of bytes of page cache memory.", g),
        Family("container_memory_mapped_file", "Size of memory mapped files in bytes.", g),
        Family("container_memory_swap", "Container swap usage in bytes.", g),
        Family("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", g),
        Family("container_memory_failcnt", "Number of memory usage hits limits", c),
        Family("container_memory_failures_total",
               "Cumulative count of memory allocation failures.", c, ("failure_type", "scope")),
        Family("container_oom_events_total",
               "Count of out of memory events observed for the container", c),
        Family("container_processes", "Number of processes running inside the container.", g),
        Family("container_threads", "Number of threads running inside the container", g),
        Family("container_threads_max",
               "Maximum number of threads allowed inside the container, infinity if value is "
               "zero", g),
        Family("container_file_descriptors",
               "Number of open file descriptors for the container.", g),
        Family("container_sockets", "Number of open sockets for the container.", g),
        Family("container_spec_cpu_period", "CPU period of the container.", g),
        Family("container_spec_cpu_quota", "CPU quota of the container.", g),
        Family("container_spec_cpu_shares", "CPU share of the container.", g),
        Family("container_spec_memory_limit_bytes", "Memory limit for the container.", g),
        Family("container_spec_memory_reservation_limit_bytes",
               "Memory reservation limit for the container.", g),
        Family("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.",
               g),
        Family("container_start_time_seconds",
               "Start time of the container since unix epoch in seconds.", g),
        Family("container_last_seen", "Last time a container was seen by the exporter", g),
        Family("container_fs_usage_bytes",
               "Number of bytes that are consumed by the container on this filesystem.", g, dev),
        Family("container_fs_reads_bytes_total", "Cumulative count of bytes read", c, dev),
        Family("container_fs_writes_bytes_total", "Cumulative count of bytes written", c, dev),
        Family("container_fs_reads_total", "Cumulative count of reads completed", c, dev),
        Family("container_fs_writes_total", "Cumulative count of writes completed", c, dev),
    ]  # fmt: skip
    for direction, done, doing in (
        ("receive", "received", "receiving"),
        ("transmit", "transmitted", "transmitting"),
    ):
        families += [
            Family(f"container_network_{direction}_bytes_total",
                   f"Cumulative count of bytes {done}", c, iface),
            Family(f"container_network_{direction}_packets_total",
                   f"Cumulative count of packets {done}", c, iface),
            Family(f"container_network_{direction}_errors_total",
                   f"Cumulative count of errors encountered while {doing}", c, iface),
            Family(f"container_network_{direction}_packets_dropped_total",
                   f"Cumulative count of packets dropped while {doing}", c, iface),
        ]  # fmt: skip
    return families


#: Every family this runtime reports, in a fixed order.
FAMILIES = _families()


async def list_metric_descriptors(
    rt: Runtime, request: api_pb2.ListMetricDescriptorsRequest
) -> api_pb2.ListMetricDescriptorsResponse:
    return api_pb2.ListMetricDescriptorsResponse(
        descriptors=[
            api_pb2.MetricDescriptor(
                name=family.name, help=family.help, label_keys=[*LABELS, *family.extra_labels]
            )
            for family in FAMILIES
        ]
    )


async def list_pod_sandbox_metrics(
    rt: Runtime, request: api_pb2.ListPodSandboxMetricsRequest
) -> api_pb2.ListPodSandboxMetricsResponse:
    sandboxes = [s for s in rt.store.list_sandboxes() if s.state == "ready"]
    containers: dict[str, list[ContainerRecord]] = {}
    for record in rt.store.list_containers():
        if record.state == "running":
            containers.setdefault(record.sandbox_id, []).append(record)
    # Hundreds of small file reads: off the event loop.
    pods = await asyncio.to_thread(
        lambda: [_pod_metrics(rt, s, containers.get(s.id, [])) for s in sandboxes]
    )
    return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=pods)


def _pod_metrics(
    rt: Runtime, sandbox: SandboxRecord, containers: list[ContainerRecord]
) -> api_pb2.PodSandboxMetrics:
    config = api_pb2.PodSandboxConfig.FromString(sandbox.config)
    meta = config.metadata
    now = time.time_ns()
    result = api_pb2.PodSandboxMetrics(pod_sandbox_id=sandbox.id)
    pod_cgroup = ""
    samples: dict[str, list[Sample]] = {}
    if config.linux.cgroup_parent:
        pod_cgroup = cgroups.pod_cgroup_dir(config.linux.cgroup_parent, rt.cgroup_driver)
        # The pod cgroup holds no process itself: count those of its children.
        children = [sandbox.info.get("cgroups_path", "")]
        children += [c.info.get("cgroups_path", "") for c in containers]
        pids = tuple(
            pid
            for path in children
            if path
            for pid in cgroups.cgroup_pids(rt.cgroup_dir(path), rt.cgroup_layout)
        )
        samples.update(_cgroup_samples(rt, pod_cgroup, now, pids))
    netns = sandbox.info.get("netns")
    if netns:
        try:
            samples.update(network_samples(interface_counters(str(netns))))
        except OSError:
            pass  # the namespace went with its pod meanwhile
    labels = ("", pod_cgroup, "", "", meta.namespace, meta.name)
    result.metrics.extend(_metrics(samples, labels, now))
    for record in containers:
        cgroup = rt.cgroup_dir(record.info.get("cgroups_path", ""))
        container_config = api_pb2.ContainerConfig.FromString(record.config)
        samples = _cgroup_samples(rt, cgroup, now)
        samples.update(_container_samples(rt, record, now))
        labels = (
            container_config.metadata.name,
            cgroup,
            # What the pod spec names (the kubelet passes the image id as image.image).
            container_config.image.user_specified_image or record.image,
            record.id,
            meta.namespace,
            meta.name,
        )
        result.container_metrics.append(
            api_pb2.ContainerMetrics(container_id=record.id, metrics=_metrics(samples, labels, now))
        )
    return result


def _metrics(
    samples: Mapping[str, list[Sample]], labels: tuple[str, ...], now: int
) -> Iterator[api_pb2.Metric]:
    for family in FAMILIES:
        for extra, value in samples.get(family.name, ()):
            yield api_pb2.Metric(
                name=family.name,
                timestamp=now,
                metric_type=family.kind,  # type: ignore[arg-type]
                label_values=[*labels, *extra],
                value=api_pb2.UInt64Value(value=max(0, value)),
            )


def _one(value: int | None) -> list[Sample]:
    return [] if value is None else [((), value)]


def _cgroup_samples(
    rt: Runtime, cgroup: str, now: int, pids: tuple[int, ...] | None = None
) -> dict[str, list[Sample]]:
    """The cgroup families of ``cgroup``; process counts over ``pids`` if given, else its own."""
    layout = rt.cgroup_layout
    stats = cgroups.read_stats(cgroup, layout, clock=lambda: now)
    detail = cgroups.read_detail(cgroup, layout)
    pids = detail.pids if pids is None else pids
    values = detail.values
    out: dict[str, list[Sample]] = {}
    if stats.cpu is not None:
        out["container_cpu_usage_seconds_total"] = [(("total",), stats.cpu.usage_core_ns // _NS)]
    for name, key, scale in (
        ("container_cpu_user_seconds_total", "cpu_user", _NS),
        ("container_cpu_system_seconds_total", "cpu_system", _NS),
        ("container_cpu_cfs_periods_total", "cfs_periods", 1),
        ("container_cpu_cfs_throttled_periods_total", "cfs_throttled_periods", 1),
        ("container_cpu_cfs_throttled_seconds_total", "cfs_throttled", _NS),
        ("container_memory_cache", "memory_cache", 1),
        ("container_memory_mapped_file", "memory_mapped_file", 1),
        ("container_memory_max_usage_bytes", "memory_max_usage", 1),
        ("container_memory_failcnt", "memory_failcnt", 1),
        ("container_threads", "threads", 1),
        ("container_threads_max", "threads_max", 1),
        ("container_spec_cpu_period", "spec_cpu_period", 1),
        ("container_spec_cpu_quota", "spec_cpu_quota", 1),
        ("container_spec_cpu_shares", "spec_cpu_shares", 1),
        ("container_spec_memory_reservation_limit_bytes", "spec_memory_reservation", 1),
        ("container_spec_memory_swap_limit_bytes", "spec_memory_swap_limit", 1),
    ):
        if key in values:
            out[name] = [((), values[key] // scale)]
    memory = stats.memory
    if memory is not None:
        out["container_memory_usage_bytes"] = _one(memory.usage_bytes)
        out["container_memory_working_set_bytes"] = _one(memory.working_set_bytes)
        out["container_memory_rss"] = _one(memory.rss_bytes)
        out["container_memory_swap"] = _one(memory.swap_usage_bytes)
        out["container_spec_memory_limit_bytes"] = _one(memory.limit_bytes)
        # cAdvisor reports the cgroup's page faults as its memory "failures".
        out["container_memory_failures_total"] = [
            (("pgfault", "container"), memory.page_faults),
            (("pgmajfault", "container"), memory.major_page_faults),
        ]
    oom = cgroups.oom_kill_count(cgroup, layout)
    out["container_oom_events_total"] = _one(oom)
    out["container_processes"] = [((), len(pids))]
    fds, sockets = _open_files(pids)
    out["container_file_descriptors"] = [((), fds)]
    out["container_sockets"] = [((), sockets)]
    io: dict[str, list[Sample]] = {}
    for device, counts in sorted(detail.io.items()):
        name = _device_name(device)
        for family, key in (
            ("container_fs_reads_bytes_total", "read_bytes"),
            ("container_fs_writes_bytes_total", "write_bytes"),
            ("container_fs_reads_total", "reads"),
            ("container_fs_writes_total", "writes"),
        ):
            if key in counts:
                io.setdefault(family, []).append(((name,), counts[key]))
    out.update(io)
    out["container_last_seen"] = [((), now // _NS)]
    return out


def _container_samples(rt: Runtime, record: ContainerRecord, now: int) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    if record.started_at:
        out["container_start_time_seconds"] = [((), record.started_at // _NS)]
    if record.info.get("rootfs"):
        usage = writable_layer_usage(rt, record)
        device = _device_name(_device_of(str(rt.rootfs.dir)))
        out["container_fs_usage_bytes"] = [((device,), usage.used_bytes.value)]
    return out


def _open_files(pids: tuple[int, ...]) -> tuple[int, int]:
    """Open file descriptors, and how many are sockets, over ``pids``."""
    fds = sockets = 0
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue  # gone meanwhile
        fds += len(names)
        for name in names:
            try:
                if os.readlink(os.path.join(directory, name)).startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
    return fds, sockets


def _device_of(path: str) -> str:
    try:
        st_dev = os.stat(path).st_dev
    except OSError:
        return ""
    return f"{os.major(st_dev)}:{os.minor(st_dev)}"


def _device_name(device: str) -> str:
    """``/dev/sda`` for ``8:0``, as cAdvisor names devices; the numbers if sysfs has none."""
    try:
        with open(f"/sys/dev/block/{device}/uevent", encoding="ascii") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return "/dev/" + line.split("=", 1)[1].strip()
    except (OSError, ValueError):
        pass
    return device


def network_samples(counters: Mapping[str, InterfaceCounters]) -> dict[str, list[Sample]]:
    """The network families from a namespace's interfaces (not loopback, as cAdvisor)."""
    out: dict[str, list[Sample]] = {}
    for interface, c in sorted(counters.items()):
        if interface == "lo":
            continue
        for family, count in (
            ("container_network_receive_bytes_total", c.rx_bytes),
            ("container_network_receive_packets_total", c.rx_packets),
            ("container_network_receive_errors_total", c.rx_errors),
            ("container_network_receive_packets_dropped_total", c.rx_dropped),
            ("container_network_transmit_bytes_total", c.tx_bytes),
            ("container_network_transmit_packets_total", c.tx_packets),
            ("container_network_transmit_errors_total", c.tx_errors),
            ("container_network_transmit_packets_dropped_total", c.tx_dropped),
        ):
            out.setdefault(family, []).append(((interface,), count))
    return out
