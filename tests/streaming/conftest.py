"""Fixtures for the streaming tests: a pod network namespace with a real HTTP
server in it, a host-network HTTP server, and a helper that runs a coroutine
against a started streaming ``Server`` over the host-process test runtime."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streaming import Server, StreamingConfig

from .hostruntime import HostRuntime

HERE = Path(__file__).resolve().parent
BIG_FILE_SIZE = 8 * 1024 * 1024
INDEX = b"<html><body>rktlet port-forward test page</body></html>\n"


@dataclass
class HttpTarget:
    netns_path: str | None
    port: int
    root: Path


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "index.html").write_bytes(INDEX)
    (root / "big.bin").write_bytes(os.urandom(BIG_FILE_SIZE))
    return root


def _start_http(root: Path, netns: str | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(HERE / "httpserver.py"), str(root)]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="session")
def pod_http(http_root: Path) -> Iterator[HttpTarget]:
    """An HTTP server on 127.0.0.1 inside a network namespace of its own."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = f"rktlet-stream-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        proc = _start_http(http_root, name)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield HttpTarget(f"/run/netns/{name}", port, http_root)
    finally:
        if proc is not None:
            _stop(proc)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="session")
def host_http(http_root: Path) -> Iterator[HttpTarget]:
    """An HTTP server in the host's namespace, for host-network pods."""
    proc = _start_http(http_root, None)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield HttpTarget(None, port, http_root)
    finally:
        _stop(proc)


Main = Callable[[Server, HostRuntime], Awaitable[Any]]


def run_server(
    main: Main,
    *,
    pods: dict[str, str | None] | None = None,
    config: StreamingConfig | None = None,
    timeout: float = 60,
    **server_args: Any,
) -> Any:
    """Start a Server over a HostRuntime, run ``main(server, runtime)``, clean up.

    Afterwards no test-double process may be left running and no connection
    task may be left in the server.
    """

    async def body() -> Any:
        runtime = HostRuntime()
        runtime.netns.update(pods or {})
        server = Server(runtime, config=config, **server_args)
        await server.start()
        try:
            return await asyncio.wait_for(main(server, runtime), timeout)
        finally:
            await server.stop()
            await runtime.close()
            leaked = [pid for pid in runtime.running if _alive(pid)]
            assert not leaked, f"processes left running: {leaked}"

    return asyncio.run(body())


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    return False
