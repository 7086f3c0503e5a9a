"""The metrics endpoint (``--metrics-address``, off by default) and the monitors' counters.

Per-container log and attach counters are owned by the pods' monitors: they are
collected on scrape by :class:`MonitorCollector`.  The scrape runs in the HTTP
server's thread; it asks the event loop for a fresh snapshot of every monitor's
``status`` and waits for it a bounded time, falling back to the last snapshot, so a
scrape never blocks the loop and a slow monitor never blocks a scrape for long.
The daemon's own counters are :mod:`cri.metrics`, served from the same registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import MetricsHandler, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cri.errors import InvalidArgument
from cri.metrics import REGISTRY
from cri.runtime import Runtime

log = logging.getLogger("rktlet.metrics")

# -- per-container counters from the monitors --------------------------------------------

_LOG_COUNTERS = (
    ("lines", "rktlet_container_log_lines", "CRI log records written (P pieces included)."),
    ("bytes", "rktlet_container_log_bytes", "Bytes of app output taken in by the log writer."),
    (
        "partial_splits",
        "rktlet_container_log_partial_splits",
        "P records made because a line exceeded the maximum line size.",
    ),
    (
        "dropped_lines",
        "rktlet_container_log_dropped_lines",
        "Log lines dropped because the log file could not be written.",
    ),
    (
        "dropped_bytes",
        "rktlet_container_log_dropped_bytes",
        "Log bytes dropped because the log file could not be written.",
    ),
    (
        "write_errors",
        "rktlet_container_log_write_errors",
        "Failed writes to the log file.",
    ),
)
_ATTACH_COUNTERS = (
    ("sessions", "rktlet_container_attach_sessions", "Attach sessions opened."),
    (
        "overflow_disconnects",
        "rktlet_container_attach_overflow_disconnects",
        "Attachers disconnected because their queue overflowed.",
    ),
    ("stdin_bytes", "rktlet_container_attach_stdin_bytes", "Bytes written to stdin by attachers."),
)
_LABELS = ("pod_sandbox_id", "container_id", "container_name")


@dataclass
class Snapshot:
    taken: float = 0.0
    #: (pod id, container id, container name, app status dict)
    apps: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    monitors_up: int = 0
    monitors_failed: int = 0


class MonitorCollector(Collector):
    """Per-container log/attach counters, from the monitors' ``status`` op."""

    def __init__(
        self,
        runtime: Runtime,
        loop: asyncio.AbstractEventLoop,
        *,
        max_age: float = 1.0,
        wait: float = 2.0,
        request_timeout: float = 2.0,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.max_age = max_age
        self.wait = wait
        self.request_timeout = request_timeout
        self.snapshot = Snapshot()
        self._loop_thread = threading.get_ident()  # made in the loop (MetricsServer.start)
        self._refreshing: concurrent.futures.Future[Snapshot] | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Any]:
        # Registration must not collect: that would wait on the loop from the loop.
        return iter(())

    async def refresh(self) -> Snapshot:
        """In the loop: ask every connected monitor for its status, concurrently."""
        rt = self.runtime
        monitors = [(pid, m) for pid, m in list(rt.monitors.items()) if not m.closed]

        async def one(pod_id: str, monitor: Any) -> list[tuple[str, str, str, dict[str, Any]]]:
            reply = await monitor.request("status", timeout=self.request_timeout)
            rows = []
            for app in reply.get("apps", []):
                container_id = str(app.get("app", ""))
                record = rt.store.get_container(container_id)
                name = record.name if record is not None else ""
                rows.append((pod_id, container_id, name, app))
            return rows

        results = await asyncio.gather(
            *(one(pod_id, m) for pod_id, m in monitors), return_exceptions=True
        )
        snapshot = Snapshot(taken=time.monotonic())
        # Pods whose monitor died and that the kubelet has not removed yet.
        snapshot.monitors_failed = sum(
            1 for sandbox in rt.store.list_sandboxes() if sandbox.info.get("monitor_lost")
        )
        for result in results:
            if isinstance(result, BaseException):
                log.debug("metrics: a monitor's status failed: %r", result)
                snapshot.monitors_failed += 1
            else:
                snapshot.monitors_up += 1
                snapshot.apps.extend(result)
        self.snapshot = snapshot
        return snapshot

    def _current(self) -> Snapshot:
        """From the scrape thread: a fresh snapshot if one comes in time, else the last."""
        snapshot = self.snapshot
        if (
            time.monotonic() - snapshot.taken < self.max_age
            or self.loop.is_closed()
            or threading.get_ident() == self._loop_thread  # waiting here would deadlock
        ):
            return snapshot
        with self._lock:
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.run_coroutine_threadsafe(self.refresh(), self.loop)
            pending = self._refreshing
        try:
            return pending.result(self.wait)
        except Exception:  # a timeout or a failed refresh: serve what we have
            return self.snapshot

    def collect(self) -> Iterator[Any]:
        snapshot = self._current()
        families: dict[str, CounterMetricFamily] = {}
        for key, name, doc in (*_LOG_COUNTERS, *_ATTACH_COUNTERS):
            families[key] = CounterMetricFamily(name, doc, labels=_LABELS)
        attachers = GaugeMetricFamily(
            "rktlet_container_attachers", "Attachers connected now.", labels=_LABELS
        )
        for pod_id, container_id, name, app in snapshot.apps:
            labels = [pod_id, container_id, name]
            for section, counters in (("log", _LOG_COUNTERS), ("attach", _ATTACH_COUNTERS)):
                values = app.get(section)
                if not isinstance(values, dict):
                    continue
                for key, _name, _doc in counters:
                    value = values.get(key)
                    if isinstance(value, int):
                        families[key].add_metric(labels, value)
            attach = app.get("attach")
            if isinstance(attach, dict) and isinstance(attach.get("attachers"), int):
                attachers.add_metric(labels, attach["attachers"])
        yield from families.values()
        yield attachers
        monitors = GaugeMetricFamily(
            "rktlet_monitors",
            "Pod monitors: up (answering), failed (dead, or not answering a status request).",
            labels=("state",),
        )
        monitors.add_metric(["up"], snapshot.monitors_up)
        monitors.add_metric(["failed"], snapshot.monitors_failed)
        yield monitors


#: ``metrics_address`` may name a unix socket instead of HOST:PORT.
UNIX_PREFIX = "unix://"


class _UnixMetricsServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def parse_address(address: str, field_name: str = "metrics_address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"{field_name}: {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """The HTTP endpoint (prometheus_client's server, in its own thread).

    The metrics name pods and containers and need no credentials: bind them to
    127.0.0.1, or to a unix socket (``unix:///run/rktlet/metrics.sock``, mode
    0660) that only root and the socket's group can reach.
    """

    def __init__(self, runtime: Runtime, address: str) -> None:
        self.socket_path = address[len(UNIX_PREFIX) :] if address.startswith(UNIX_PREFIX) else ""
        if self.socket_path:
            if not self.socket_path.startswith("/"):
                raise InvalidArgument(f"metrics_address: {address!r}: the path must be absolute")
            self.host, self.port = "", 0
        else:
            self.host, self.port = parse_address(address)
        self.runtime = runtime
        self.collector: MonitorCollector | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        if self.socket_path:
            return UNIX_PREFIX + self.socket_path
        return f"{self.host}:{self.port}"

    def _serve_unix(self) -> tuple[Any, threading.Thread]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        old_umask = os.umask(0o117)  # 0660 from the first instant
        try:
            server = _UnixMetricsServer(self.socket_path, MetricsHandler.factory(REGISTRY))
        finally:
            os.umask(old_umask)
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return server, thread

    def start(self) -> None:
        self.collector = MonitorCollector(self.runtime, asyncio.get_running_loop())
        REGISTRY.register(self.collector)
        try:
            if self.socket_path:
                self._server, self._thread = self._serve_unix()
                return
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=REGISTRY
            )
        except OSError as exc:
            REGISTRY.unregister(self.collector)
            raise InvalidArgument(
                f"metrics_address: cannot listen on {self.address}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            REGISTRY.unregister(self.collector)
            raise
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            if self.socket_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.collector is not None:
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(self.collector)
            self.collector = None
