"""Streaming clients that misbehave: one that stops reading, a thousand that never finish.

The clients are raw sockets inside the daemon's network namespace, doing just
enough of the protocol to be the fault: a WebSocket attach that completes its
handshake and then never reads, and TCP connections that send half a request
line and stop.
"""

from __future__ import annotations

import base64
import os
import resource
import secrets
import socket
import time
from urllib.parse import urlsplit

import pytest

from cri.api import api_pb2
from cri.network.netns import run_in_netns
from tests.faults import crilog
from tests.faults.conftest import (
    FaultDaemon,
    assert_no_leaks,
    run_logged,
    snapshot,
    wait_for,
)


def _connect(daemon: FaultDaemon, url: str) -> socket.socket:
    parts = urlsplit(url)

    def dial() -> socket.socket:
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        return sock

    return run_in_netns(daemon.netns, dial)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(180)
def test_stuck_attach_client_stalls_nothing(fdaemon: FaultDaemon) -> None:
    # ~6 MB/s of numbered 1 KB lines: enough to fill every buffer on the way to the
    # stuck client within seconds, little enough to keep the log small.
    loud = (
        'BEGIN { p = sprintf("%1000s", ""); gsub(/ /, "x", p); '
        'for (i = 0; ; i++) { printf "%d %s\\n", i, p; '
        'if (i % 64 == 63) { fflush(); system("sleep 0.01") } } }'
    )
    pod_id, ctr = run_logged(fdaemon, "loud", ["awk", loud])
    log_path = fdaemon.log_path(ctr)
    before = snapshot(fdaemon)
    url = fdaemon.runtime.Attach(api_pb2.AttachRequest(container_id=ctr, stdout=True)).url
    sock = _connect(fdaemon, url)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        path = urlsplit(url).path
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        # From here on the client reads nothing.
        daemon_rss = _rss(fdaemon.proc.pid) if fdaemon.proc else 0
        wait_for(
            lambda: (
                fdaemon.metric(
                    "rktlet_container_attach_overflow_disconnects_total", container_id=ctr
                )
                >= 1
            ),
            60,
            "the monitor to drop the stuck attacher",
        )
        # The app and its log went on at full speed meanwhile.
        size = log_path.stat().st_size
        wait_for(lambda: log_path.stat().st_size > size + 100_000, 10, "logging to go on")
        grown = (_rss(fdaemon.proc.pid) if fdaemon.proc else 0) - daemon_rss
        print(f"\ndaemon RSS grew {grown / 2**20:.1f} MiB while its attach client was stuck")
        assert grown < 64 << 20, "the daemon buffers what a stuck client does not read"
        fdaemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=ctr, timeout=5))
        # The server gives up on the stuck client (its writes stalled), so the session,
        # its monitor connection and its buffers are not held for hours: the daemon's
        # descriptors are back to what they were before the attach.
        took = wait_for(
            lambda: len(os.listdir(f"/proc/{before.daemon_pid}/fd")) <= before.fds,
            90,
            "the daemon to drop the stuck client",
        )
        print(f"the daemon dropped the stuck client {took:.0f} s after the app stopped")
    finally:
        sock.close()
    numbers = [line.split(b" ", 1)[0] for line in crilog.terminated(crilog.read_lines(log_path))]
    assert crilog.check_sequence(numbers) > 1000
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(180)
def test_a_thousand_half_open_streaming_connections(fdaemon: FaultDaemon) -> None:
    pod_id, ctr = run_logged(fdaemon, "busy", ["sleep", "3600"])
    url = fdaemon.runtime.Exec(api_pb2.ExecRequest(container_id=ctr, cmd=["true"], stdout=True)).url
    parts = urlsplit(url)
    before = snapshot(fdaemon)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))

    def open_many() -> list[socket.socket]:
        socks = []
        for _ in range(1000):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
            sock.sendall(b"GET /exec/")  # half a request line, then nothing
            socks.append(sock)
        return socks

    socks: list[socket.socket] = []
    try:
        started = time.monotonic()
        socks = run_in_netns(fdaemon.netns, open_many)
        print(f"\n1000 half-open connections opened in {time.monotonic() - started:.1f} s")
        # The daemon goes on serving: CRI calls, and a real exec on the same server.
        assert fdaemon.status(ctr).state == api_pb2.ContainerState.CONTAINER_RUNNING
        reply = fdaemon.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=ctr, cmd=["echo", "ok"], timeout=30)
        )
        assert reply.stdout == b"ok\n"
        import asyncio

        from streaming.client import spdy_exec

        fresh = fdaemon.runtime.Exec(
            api_pb2.ExecRequest(container_id=ctr, cmd=["echo", "streamed"], stdout=True)
        ).url
        result = run_in_netns(fdaemon.netns, lambda: asyncio.run(spdy_exec(fresh)))
        assert result.stdout == b"streamed\n" and result.exit_code == 0
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Every connection the clients dropped is released by the daemon.
    assert fdaemon.proc is not None
    wait_for(
        lambda: len(os.listdir(f"/proc/{before.daemon_pid}/fd")) <= before.fds + 5,
        30,
        "the daemon to close the dropped connections",
    )
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)
