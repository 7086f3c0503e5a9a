"""Prometheus metrics of the daemon: the registry and the numbers the daemon counts.

* CRI call latency, by method and gRPC code: observed by :func:`cri.service.instrument`
  through :func:`observe_call`, a dictionary lookup and a histogram update per call.
* Image pulls: durations (the PullImage call) and the size of the images pulled.
* Monitor deaths and streaming sessions.

Everything in the daemon may count here, the runtime included, so this module
imports nothing of it.  The per-container counters the monitors own, and the
endpoint that serves all of it on ``--metrics-address``, are
:mod:`cri.metrics_server`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

#: The daemon's own registry: importing this module twice (tests) never clashes with
#: prometheus_client's global one.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CRI_LATENCY = Histogram(
    "rktlet_cri_request_duration_seconds",
    "Latency of CRI calls, by method and gRPC status code.",
    ("method", "code"),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
IMAGE_PULL_DURATION = Histogram(
    "rktlet_image_pull_duration_seconds",
    "Duration of CRI PullImage calls, by result (ok or the gRPC code).",
    ("result",),
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
IMAGE_PULL_BYTES = Counter(
    "rktlet_image_pull_bytes",
    "Size of the images returned by successful PullImage calls.",
    registry=REGISTRY,
)

MONITOR_DEATHS = Counter(
    "rktlet_monitor_deaths",
    "Pod monitors that died without being asked to (kill, OOM kill, crash).",
    registry=REGISTRY,
)

STREAMING_SESSIONS = Counter(
    "rktlet_streaming_sessions",
    "Exec, attach and port-forward sessions served, by kind and negotiated protocol.",
    ("kind", "protocol"),
    registry=REGISTRY,
)


def observe_streaming_session(kind: str, protocol: str) -> None:
    STREAMING_SESSIONS.labels(kind, protocol).inc()


#: (method, code) -> the histogram child, so that a call costs one dict lookup.
_children: dict[tuple[str, str], Any] = {}


def observe_call(method: str, code: str, seconds: float) -> None:
    child = _children.get((method, code))
    if child is None:
        child = _children[(method, code)] = CRI_LATENCY.labels(method, code)
    child.observe(seconds)


def observe_pull(servicer: Any, response: Any, code: str, seconds: float) -> None:
    """A PullImage call ended: its duration, and the image's size when it succeeded."""
    IMAGE_PULL_DURATION.labels("ok" if code == "OK" else code).observe(seconds)
    if code != "OK" or response is None:
        return
    with contextlib.suppress(Exception):
        record = servicer.images.manager.lookup(response.image_ref)
        if record is not None:
            IMAGE_PULL_BYTES.inc(int(record.size))
