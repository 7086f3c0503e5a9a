"""Prometheus metrics of a real daemon (``--metrics-address``), scraped from its netns."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri.api import api_pb2
from cri.network.netns import run_in_netns
from tests.cri import conftest as cri_conftest
from tests.cri.conftest import Daemon

PORT = 9464  # inside the test's own network namespace: nothing else listens there


@pytest.fixture
def metrics_daemon(tmp_path: Path, image_archives: dict[str, Path]) -> Iterator[Daemon]:
    cri_conftest._require_tools()
    run_dir = Path(f"/run/rktlet-t-{secrets.token_hex(4)}")
    with cri_conftest.test_netns() as netns:
        d = Daemon(tmp_path, run_dir, netns, ["--metrics-address", f"127.0.0.1:{PORT}"])
        try:
            d.import_images({k: v for k, v in image_archives.items() if k == "busybox"})
            d.start()
            yield d
        finally:
            try:
                d.cleanup_pods()
            finally:
                d.stop()
                cri_conftest._force_cleanup(d)
                if os.environ.get("RKTLET_TEST_KEEP_LOG") and d.log_file.exists():
                    print(d.log_file.read_text()[-20000:])


def scrape(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    def get() -> bytes:
        with socket.create_connection(("127.0.0.1", PORT), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    raw = run_in_netns(daemon.netns, get)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    for (sample_name, sample_labels), sample_value in samples.items():
        if sample_name == name and set(labels.items()) <= sample_labels:
            return sample_value
    return None


@pytest.mark.timeout(90)
def test_metrics_counts_calls_logs_and_pulls(metrics_daemon: Daemon) -> None:
    daemon = metrics_daemon
    pod_id, pod_config = daemon.run_pod("metrics")
    script = (
        'i=0; while [ $i -lt 50 ]; do echo "line $i"; i=$((i+1)); done; '
        "head -c 20000 /dev/zero | tr '\\0' x; echo"
    )
    config = daemon.container_config("talker", "busybox", ["sh", "-c", script])
    container_id = daemon.run_container(pod_id, pod_config, config)
    status = daemon.wait_exited(container_id)
    assert status.exit_code == 0

    with pytest.raises(grpc.RpcError):
        daemon.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="nope"))
    with pytest.raises(grpc.RpcError):
        daemon.images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="127.0.0.1:1/absent:1")),
            timeout=60,
        )

    # One exec over SPDY, counted by kind and negotiated protocol.
    from streaming.client import spdy_exec
    from tests.cri.test_streaming import exec_url, in_netns

    sleeper = daemon.run_container(
        pod_id, pod_config, daemon.container_config("sleeper", "busybox", ["sleep", "600"])
    )
    url = exec_url(daemon, sleeper, ["true"], stdout=True)
    assert in_netns(daemon, lambda: spdy_exec(url, stderr=False)).exit_code == 0

    samples = scrape(daemon)
    assert (
        value(samples, "rktlet_streaming_sessions_total", kind="exec", protocol="v5.channel.k8s.io")
        == 1
    )
    ids = {"container_id": container_id, "pod_sandbox_id": pod_id, "container_name": "talker"}
    # 50 short lines, then a 20,000-byte line: one P piece (16 KiB) and its F.
    assert value(samples, "rktlet_container_log_lines_total", **ids) == 52
    assert value(samples, "rktlet_container_log_partial_splits_total", **ids) == 1
    assert (
        value(samples, "rktlet_container_log_bytes_total", **ids)
        == sum(len(f"line {i}\n") for i in range(50)) + 20001
    )
    assert value(samples, "rktlet_container_log_dropped_lines_total", **ids) == 0
    assert value(samples, "rktlet_container_log_dropped_bytes_total", **ids) == 0
    assert value(samples, "rktlet_container_attach_sessions_total", **ids) == 0
    assert value(samples, "rktlet_container_attach_overflow_disconnects_total", **ids) == 0
    assert value(samples, "rktlet_monitors", state="up") == 1

    calls = "rktlet_cri_request_duration_seconds_count"
    assert value(samples, calls, method="RunPodSandbox", code="OK") == 1
    assert value(samples, calls, method="StartContainer", code="OK") == 2
    assert value(samples, calls, method="ContainerStatus", code="NOT_FOUND") == 1
    pulls = value(samples, "rktlet_image_pull_duration_seconds_count")
    assert pulls == 1
    assert value(samples, "rktlet_image_pull_duration_seconds_count", result="ok") is None
    assert value(samples, "process_resident_memory_bytes") is not None


def test_metrics_address_is_checked() -> None:
    from cri.config import load
    from cri.errors import InvalidArgument

    assert load([]).metrics_address == ""
    assert load(["--metrics-address", "127.0.0.1:9464"]).metrics_address == "127.0.0.1:9464"
    with pytest.raises(InvalidArgument, match="metrics_address: 'nope' is not HOST:PORT"):
        load(["--metrics-address", "nope"])
