"""ListMetricDescriptors and ListPodSandboxMetrics of a real daemon: cAdvisor's names,
values from the pod's and containers' cgroups and from the pod's network namespace."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from cri import cgroups
from cri.api import api_pb2
from cri.network.netns import InterfaceCounters
from cri.pod_metrics import network_samples
from tests.cri.conftest import Daemon
from tests.cri.test_runtime_service import http_get, wait_for_port

#: What the kubelet's /metrics/cadvisor dashboards use most (cAdvisor's names).
KUBELET_ASKS = {
    "container_cpu_usage_seconds_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_memory_working_set_bytes",
    "container_memory_usage_bytes",
    "container_memory_rss",
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
    "container_network_receive_packets_dropped_total",
    "container_fs_usage_bytes",
    "container_fs_reads_bytes_total",
    "container_processes",
    "container_threads",
    "container_file_descriptors",
    "container_sockets",
    "container_spec_memory_limit_bytes",
    "container_spec_cpu_shares",
    "container_oom_events_total",
    "container_start_time_seconds",
}


def test_network_families_leave_loopback_out() -> None:
    counters = {
        "lo": InterfaceCounters(100, 2, 0, 0, 100, 2, 0, 0),
        "eth0": InterfaceCounters(1586, 19, 1, 2, 936, 12, 3, 4),
    }
    samples = network_samples(counters)
    assert samples["container_network_receive_bytes_total"] == [(("eth0",), 1586)]
    assert samples["container_network_receive_packets_total"] == [(("eth0",), 19)]
    assert samples["container_network_receive_errors_total"] == [(("eth0",), 1)]
    assert samples["container_network_receive_packets_dropped_total"] == [(("eth0",), 2)]
    assert samples["container_network_transmit_bytes_total"] == [(("eth0",), 936)]
    assert samples["container_network_transmit_packets_total"] == [(("eth0",), 12)]
    assert samples["container_network_transmit_errors_total"] == [(("eth0",), 3)]
    assert samples["container_network_transmit_packets_dropped_total"] == [(("eth0",), 4)]


@pytest.fixture
def pod_parent(daemon: Daemon) -> Iterator[str]:
    """A pod cgroup the way the kubelet makes one (its parent), removed afterwards."""
    parent = f"/rktlet-t-metrics-{secrets.token_hex(4)}"
    try:
        yield parent
    finally:
        daemon.cleanup_pods()  # runc removes the pod's own cgroups; the parent is ours
        cgroups.remove_cgroup(parent)


def by_name(metrics: list[api_pb2.Metric]) -> dict[str, list[api_pb2.Metric]]:
    out: dict[str, list[api_pb2.Metric]] = {}
    for metric in metrics:
        out.setdefault(metric.name, []).append(metric)
    return out


def value(metrics: dict[str, list[api_pb2.Metric]], name: str) -> int:
    (metric,) = metrics[name]
    return int(metric.value.value)


def test_metrics_of_a_running_pod(daemon: Daemon, pod_parent: str) -> None:
    descriptors = daemon.runtime.ListMetricDescriptors(
        api_pb2.ListMetricDescriptorsRequest()
    ).descriptors
    keys = {d.name: list(d.label_keys) for d in descriptors}
    assert len(keys) == len(descriptors), "a family described twice"
    assert KUBELET_ASKS.issubset(keys)
    assert all(
        k[:6] == ["container", "id", "image", "name", "namespace", "pod"] for k in keys.values()
    )

    pod_id, pod_config = daemon.run_pod(
        "metered", linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=pod_parent)
    )
    resources = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, cpu_shares=512, cpu_quota=50000, cpu_period=100000
    )
    web_config = daemon.container_config(
        "web", "httpd", [], linux=api_pb2.LinuxContainerConfig(resources=resources)
    )
    # The kubelet names the image by id and passes the pod spec's name beside it.
    web_config.image.user_specified_image = "rktlet/httpd"
    web = daemon.run_container(pod_id, pod_config, web_config)
    sleeper = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config("two", "busybox", ["sh", "-c", "sleep 600 & wait"]),
    )
    ip = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status.network.ip
    wait_for_port(daemon.netns, ip, 80)
    assert b"200 OK" in http_get(daemon.netns, ip, 80, "/index.html")
    # busybox sh forks sleep: wait until it has (an exec returns once it saw it).
    daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=sleeper,
            cmd=["sh", "-c", "until pidof sleep >/dev/null; do :; done"],
            timeout=30,
        )
    )

    (pod,) = daemon.runtime.ListPodSandboxMetrics(
        api_pb2.ListPodSandboxMetricsRequest()
    ).pod_metrics
    assert pod.pod_sandbox_id == pod_id
    every = [*pod.metrics, *(m for c in pod.container_metrics for m in c.metrics)]
    for metric in every:
        assert len(metric.label_values) == len(keys[metric.name]), metric.name
        assert metric.timestamp > 0

    pod_level = by_name(list(pod.metrics))
    eth0 = {
        m.name: m.value.value
        for m in pod.metrics
        if m.name.startswith("container_network_") and m.label_values[6] == "eth0"
    }
    assert eth0["container_network_receive_bytes_total"] > 0
    assert eth0["container_network_transmit_bytes_total"] > 0
    assert eth0["container_network_receive_packets_total"] > 0
    assert value(pod_level, "container_memory_usage_bytes") > 0
    # httpd, sh and sleep, and the pod's infra process.
    assert value(pod_level, "container_processes") == 4
    assert list(pod_level["container_memory_usage_bytes"][0].label_values) == [
        "",
        pod_parent,
        "",
        "",
        "default",
        "metered",
    ]

    containers = {c.container_id: by_name(list(c.metrics)) for c in pod.container_metrics}
    assert set(containers) == {web, sleeper}
    served = containers[web]
    assert list(served["container_processes"][0].label_values)[:6] == [
        "web",
        cgroups.cgroup_dir(f"{pod_parent}/{web}"),
        "rktlet/httpd",
        web,
        "default",
        "metered",
    ]
    assert value(served, "container_spec_memory_limit_bytes") == 64 << 20
    assert value(served, "container_spec_cpu_shares") == 512
    assert value(served, "container_spec_cpu_quota") == 50000
    assert value(served, "container_spec_cpu_period") == 100000
    assert value(served, "container_processes") == 1
    assert value(served, "container_sockets") >= 1  # httpd's listening socket
    assert value(served, "container_file_descriptors") >= value(served, "container_sockets")
    assert 0 < value(served, "container_memory_working_set_bytes") <= 64 << 20
    assert value(served, "container_oom_events_total") == 0
    assert "container_fs_usage_bytes" in served
    assert served["container_cpu_usage_seconds_total"][0].label_values[6] == "total"
    assert value(containers[sleeper], "container_processes") == 2  # sh and sleep
    assert value(containers[sleeper], "container_threads") >= 2


def test_pod_stats_always_carry_linux_network_and_processes(daemon: Daemon) -> None:
    # The kubelet with PodAndContainerStatsFromCRI reads stats.linux.containers of every
    # pod without a nil check: a pod with no container running crashed it.
    pod_id, _ = daemon.run_pod("bare")
    (stats,) = daemon.runtime.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest()).stats
    assert stats.attributes.id == pod_id
    assert stats.HasField("linux")
    assert list(stats.linux.containers) == []
    assert stats.linux.network.default_interface.name == "eth0"
    assert [i.name for i in stats.linux.network.interfaces] == ["eth0"]
    assert stats.linux.process.process_count.value >= 1  # the pod's infra process
