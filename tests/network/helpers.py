"""Helpers for the pod-network tests: a private "host" namespace per test, pod
namespaces created from inside it, HTTP servers in pods, and test CNI plugins.

Every test that runs CNI plugins does so inside its own network namespace (the test's
"host"), so the bridge, the veths and portmap's iptables rules are all created there
and vanish with it: nothing on the real host is touched and no packet leaves the
machine.  Namespaces, servers and files are removed in finalizers, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import os
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from cri.network import create_netns, remove_netns, run_in_netns

T = TypeVar("T")

CNI_BIN = "/usr/lib/cni"


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, from /proc/self/mountinfo."""
    prefix = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            target = line.split(" ")[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return found


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.greeting  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietHTTPServer(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves its address with getfqdn(): a DNS query from
        # inside the pod.  Skip it; tests never leave their namespaces.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class PodHTTPServer:
    """A python http.server whose listening socket lives in a pod's namespace."""

    def __init__(self, netns: Path, address: str, port: int, greeting: bytes) -> None:
        # The socket is created and bound inside the pod namespace; it keeps that
        # namespace afterwards, so serving can happen on an ordinary thread.
        self.server = run_in_netns(netns, lambda: _QuietHTTPServer((address, port), _Handler))
        self.server.greeting = greeting  # type: ignore[attr-defined]
        # A short poll interval keeps shutdown() quick.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def http_get(host: str, port: int, timeout: float = 5.0) -> bytes:
    """GET / from the calling thread's namespace (no proxies, no retries)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


class HostNS:
    """The test's private "host" network namespace and what lives in it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.run_dir = tmp_path / "run"
        self.path = create_netns(self.run_dir, f"rktlet-test-{uuid.uuid4().hex[:8]}")
        self.pods: list[Path] = []
        self.servers: list[PodHTTPServer] = []

    def run(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` in a thread inside this namespace."""
        return run_in_netns(self.path, fn)

    def run_async(self, scenario: Callable[[], Awaitable[T]]) -> T:
        """Run an asyncio scenario whose loop (and so every CNI plugin it starts) lives
        in this namespace."""

        async def main() -> T:
            return await scenario()

        return self.run(lambda: asyncio.run(main()))

    def new_pod_netns(self, name: str) -> Path:
        path = self.run(lambda: create_netns(self.run_dir, name))
        self.pods.append(path)
        return path

    def serve(self, netns: Path, address: str, port: int, greeting: bytes) -> PodHTTPServer:
        server = PodHTTPServer(netns, address, port, greeting)
        self.servers.append(server)
        return server

    def interfaces(self, netns: Path | None = None) -> set[str]:
        return {name for _, name in run_in_netns(netns or self.path, socket.if_nameindex)}

    def sh(self, *argv: str) -> str:
        """Run a command inside this namespace and return its stdout."""
        return self.run(
            lambda: subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        )

    def close(self) -> None:
        errors: list[BaseException] = []
        for server in self.servers:
            try:
                server.close()
            except Exception as exc:
                errors.append(exc)
        for pod in [*self.pods, self.path]:
            try:
                remove_netns(pod)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def write_plugin(bin_dir: Path, name: str, body: str) -> Path:
    """Install an executable test plugin (a Python script) called ``name``."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


RECORDER = """\
import json, os, sys
conf = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(conf["log"], "a") as f:
    f.write(json.dumps({"tag": conf["tag"], "env": env, "conf": conf}) + "\\n")
if env["CNI_COMMAND"] == "ADD":
    json.dump(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}, sys.stdout)
elif env["CNI_COMMAND"] == "VERSION":
    json.dump({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}, sys.stdout)
"""


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_conflist(conf_dir: Path, filename: str, obj: dict[str, Any]) -> Path:
    path = conf_dir / filename
    path.write_text(json.dumps(obj))
    return path


def bridge_plugin(bridge: str, subnet: str | list[str], data_dir: Path) -> dict[str, Any]:
    subnets = [subnet] if isinstance(subnet, str) else subnet
    return {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": s}] for s in subnets],
            "dataDir": str(data_dir),
        },
    }


def allocated_ips(data_dir: Path) -> set[str]:
    """IPs host-local holds under ``data_dir`` (one file per address)."""
    found: set[str] = set()
    for network_dir in data_dir.glob("*"):
        for entry in network_dir.iterdir():
            with contextlib.suppress(ValueError):
                found.add(str(ipaddress.ip_address(entry.name)))
    return found
