"""Exec, attach and port-forward end to end: CRI URL, streaming server, real containers.

The daemon (and so its streaming server on 127.0.0.1) lives in the test's network
namespace; the clients run in a thread that has entered it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest

from cri.api import api_pb2
from cri.network.netns import run_in_netns
from streaming.client import SpdyExec, SpdyPortForward, spdy_exec
from tests.cri.conftest import Daemon
from tests.cri.test_runtime_service import wait_for_port

T = TypeVar("T")


def in_netns(daemon: Daemon, make: Callable[[], Awaitable[T]]) -> T:
    return run_in_netns(daemon.netns, lambda: asyncio.run(make()))  # type: ignore[arg-type]


def running(daemon: Daemon, name: str, command: list[str], **fields: Any) -> str:
    pod_id, pod_config = daemon.run_pod(name)
    return daemon.run_container(
        pod_id, pod_config, daemon.container_config(name, "busybox", command, **fields)
    )


def exec_url(daemon: Daemon, container_id: str, cmd: list[str], **flags: bool) -> str:
    return str(
        daemon.runtime.Exec(api_pb2.ExecRequest(container_id=container_id, cmd=cmd, **flags)).url
    )


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exec_exit_codes_and_stdin(daemon: Daemon, code: int) -> None:
    container = running(daemon, f"exec{code}", ["sleep", "600"])
    url = exec_url(
        daemon,
        container,
        ["sh", "-c", f"cat; echo err >&2; exit {code}"],
        stdin=True,
        stdout=True,
        stderr=True,
    )
    result = in_netns(daemon, lambda: spdy_exec(url, stdin=b"through runc exec\n"))
    assert result.stdout == b"through runc exec\n"
    assert result.stderr == b"err\n"
    assert result.exit_code == code


def test_exec_runs_with_the_containers_user(daemon: Daemon) -> None:
    container = running(
        daemon,
        "execuser",
        ["sleep", "600"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                run_as_user=api_pb2.Int64Value(value=4321)
            )
        ),
    )
    url = exec_url(daemon, container, ["id", "-u"], stdout=True)
    result = in_netns(daemon, lambda: spdy_exec(url, stderr=False))
    assert result.stdout == b"4321\n"


def test_exec_tty_resize_seen_by_stty(daemon: Daemon) -> None:
    container = running(daemon, "exectty", ["sleep", "600"])
    url = exec_url(daemon, container, ["sh"], stdin=True, stdout=True, tty=True)

    async def session() -> tuple[bytes, int | None]:
        exe = await SpdyExec.connect(url, stdin=True, stdout=True, stderr=False, tty=True)
        await exe.resize(100, 40)
        await exe.write_stdin(b"stty size; exit 3\r")
        result = await exe.wait(timeout=30)
        return result.stdout, result.exit_code

    out, code = in_netns(daemon, session)
    assert b"40 100" in out
    assert code == 3


def test_attach_with_stdin_once_ends_the_shell(daemon: Daemon) -> None:
    container = running(daemon, "attach", ["sh"], stdin=True, stdin_once=True)
    url = str(
        daemon.runtime.Attach(
            api_pb2.AttachRequest(container_id=container, stdin=True, stdout=True, stderr=True)
        ).url
    )
    result = in_netns(daemon, lambda: spdy_exec(url, stdin=b"echo via attach\nexit 4\n"))
    assert result.stdout == b"via attach\n"
    status = daemon.wait_exited(container)
    assert status.exit_code == 4


def test_port_forward_two_connections_and_host_network(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("pf")
    daemon.run_container(pod_id, pod_config, daemon.container_config("httpd", "httpd", []))
    ip = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status.network.ip
    wait_for_port(daemon.netns, ip, 80)
    url = str(
        daemon.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[80])).url
    )

    async def two() -> list[bytes]:
        forward = await SpdyPortForward.connect(url)
        try:
            request = b"GET /index.html HTTP/1.0\r\n\r\n"
            results = await asyncio.gather(
                forward.request(80, request), forward.request(80, request)
            )
        finally:
            await forward.close()
        return [data for data, _error in results]

    for response in in_netns(daemon, two):
        assert response.startswith(b"HTTP/1.") and b"200 OK" in response


def test_stream_requests_are_validated(daemon: Daemon) -> None:
    container = running(daemon, "bad", ["sleep", "600"])
    for request, code in (
        (
            api_pb2.ExecRequest(container_id=container, cmd=["true"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            api_pb2.ExecRequest(
                container_id=container, cmd=["true"], tty=True, stdout=True, stderr=True
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            api_pb2.ExecRequest(container_id="", cmd=["true"], stdout=True),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            api_pb2.ExecRequest(container_id="nope", cmd=["true"], stdout=True),
            grpc.StatusCode.NOT_FOUND,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            daemon.runtime.Exec(request)
        assert err.value.code() == code


def test_port_forward_to_a_host_network_pod(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod(
        "pfhost",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NamespaceMode.NODE)
            )
        ),
    )
    daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "httpd", "httpd", ["httpd", "-f", "-p", "127.0.0.1:8282", "-h", "/www"]
        ),
    )
    wait_for_port(daemon.netns, "127.0.0.1", 8282)
    url = str(
        daemon.runtime.PortForward(
            api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[8282])
        ).url
    )

    async def one() -> bytes:
        forward = await SpdyPortForward.connect(url)
        try:
            data, _error = await forward.request(8282, b"GET /index.html HTTP/1.0\r\n\r\n")
        finally:
            await forward.close()
        return data

    assert b"200 OK" in in_netns(daemon, one)
