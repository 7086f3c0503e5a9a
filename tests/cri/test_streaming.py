"""Exec, attach and port-forward end to end: CRI URL, streaming server, real containers.

The daemon (and so its streaming server on 127.0.0.1) lives in the test's network
namespace; the clients run in a thread that has entered it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest

from cri.api import api_pb2
from cri.network.netns import run_in_netns
from iottymux.control import ControlClient
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


def test_tty_exec_input_waits_for_the_process(daemon: Daemon) -> None:
    # crictl exec -it sends a NUL when its terminal goes raw with an EOF pending; fed
    # into the terminal before runc has started the process, the terminal echoed it
    # ("^@") ahead of any output.  Input now flows once the process runs, as with
    # containerd's shim -- so a command that never starts echoes nothing at all.
    container = running(daemon, "exectty-early", ["sleep", "600"])
    url = exec_url(daemon, container, ["/no/such/binary"], stdin=True, stdout=True, tty=True)

    async def session() -> tuple[bytes, str]:
        exe = await SpdyExec.connect(url, stdin=True, stdout=True, stderr=False, tty=True)
        await exe.write_stdin(b"\x00typed ahead\r")
        result = await exe.wait(timeout=30)
        return result.stdout, result.status.message

    out, message = in_netns(daemon, session)
    assert out == b""
    assert "/no/such/binary" in message
    # Once it runs, what the client types reaches it, byte for byte.
    url = exec_url(
        daemon, container, ["sh", "-c", "read x; echo got $x"], stdin=True, stdout=True, tty=True
    )

    async def typed() -> bytes:
        exe = await SpdyExec.connect(url, stdin=True, stdout=True, stderr=False, tty=True)
        await exe.write_stdin(b"abc\r")
        return (await exe.wait(timeout=30)).stdout

    assert in_netns(daemon, typed) == b"abc\r\ngot abc\r\n"


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


def attach_url(daemon: Daemon, container_id: str, **flags: bool) -> str:
    return str(daemon.runtime.Attach(api_pb2.AttachRequest(container_id=container_id, **flags)).url)


async def ws_v5(url: str, chunks: list[bytes]) -> tuple[str | None, dict[int, bytes], int | None]:
    """A v5.channel.k8s.io session: send ``chunks`` on stdin, CLOSE it, read to the end.

    Returns the subprotocol, what arrived on each channel, and the close code.
    """
    from websockets.asyncio.client import connect as ws_connect

    from streaming import remotecommand as rc

    got: dict[int, bytes] = {}
    async with ws_connect("ws" + url[len("http") :], subprotocols=[rc.V5]) as ws:  # type: ignore[list-item]
        for chunk in chunks:
            await ws.send(rc.encode_channel_message(0, chunk, base64_mode=False))
        await ws.send(rc.encode_close_signal(0))
        async for message in ws:
            data = message.encode() if isinstance(message, str) else bytes(message)
            decoded = rc.decode_channel_message(data, base64_mode=False)
            assert decoded is not None
            got[decoded[0]] = got.get(decoded[0], b"") + decoded[1]
        return ws.subprotocol, got, ws.close_code


def test_attach_ends_when_the_clients_input_ends(daemon: Daemon) -> None:
    # Not stdin_once: the client's half-close ends its session (exit 0, as containerd),
    # after the app's answer to the last input came through; the app keeps running with
    # its stdin open for the next attacher -- over SPDY and over WebSocket.
    container = running(daemon, "attach-many", ["sh"], stdin=True)

    async def spdy(typed: bytes) -> tuple[bytes, int | None]:
        url = attach_url(daemon, container, stdin=True, stdout=True, stderr=True)
        session = await SpdyExec.connect(url, stdin=True, stdout=True, stderr=True)
        await session.write_stdin(typed)
        await session.close_stdin()
        result = await session.wait(timeout=30)
        return result.stdout, result.exit_code

    assert in_netns(daemon, lambda: spdy(b"echo first\n")) == (b"first\n", 0)
    assert in_netns(daemon, lambda: spdy(b"echo second\n")) == (b"second\n", 0)
    url = attach_url(daemon, container, stdin=True, stdout=True, stderr=True)
    _, got, _ = in_netns(daemon, lambda: ws_v5(url, [b"echo third\n"]))
    assert got.get(1) == b"third\n"
    assert json.loads(got[3])["status"] == "Success"
    status = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container)
    ).status
    assert status.state == api_pb2.ContainerState.CONTAINER_RUNNING


def test_attach_output_comes_through_the_monitors_ring_byte_for_byte(daemon: Daemon) -> None:
    # About 17 MB in 60 paced bursts: more than the ring holds (it wraps), at a
    # pace the SPDY client keeps up with.
    script = "read go; for i in $(seq 1 60); do seq 1 50000; sleep 0.05; done; echo end >&2"
    pod_id, pod_config = daemon.run_pod("ringattach")
    container = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "ringattach", "busybox", ["sh", "-c", script], stdin=True, stdin_once=True
        ),
    )
    url = str(
        daemon.runtime.Attach(
            api_pb2.AttachRequest(container_id=container, stdin=True, stdout=True, stderr=True)
        ).url
    )
    result = in_netns(daemon, lambda: spdy_exec(url, stdin=b"go\n"))
    block = b"".join(b"%d\n" % i for i in range(1, 50001))
    assert result.stdout == block * 60
    assert result.stderr == b"end\n"
    with ControlClient(str(daemon.run_dir / "pods" / pod_id / "control.sock")) as monitor:
        attach = monitor.request("status", app=container)["apps"][0]["attach"]
    assert attach["ring_sessions"] == 1 and attach["overflow_disconnects"] == 0


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


# -- independent clients and concurrency against the real daemon -------------------------


def _kube_config(url: str) -> Any:
    from urllib.parse import urlsplit

    from kubernetes.client import Configuration

    config = Configuration()
    parts = urlsplit(url)
    config.host = f"{parts.scheme}://{parts.netloc}"
    return config


def test_kubernetes_python_client_exec_in_a_container(daemon: Daemon) -> None:
    """The ``kubernetes`` package's WebSocket stream client, not ours, runs an exec."""
    from kubernetes.stream import ws_client

    container = running(daemon, "kubeexec", ["sleep", "600"])
    url = exec_url(
        daemon,
        container,
        ["sh", "-c", "read x; echo got $x; echo e >&2; exit 3"],
        stdin=True,
        stdout=True,
        stderr=True,
    )

    def client_side() -> tuple[str, str, int | None, str]:
        client = ws_client.websocket_call(  # type: ignore[no-untyped-call]
            _kube_config(url), "GET", url, _preload_content=False
        )
        try:
            client.write_stdin("from kubernetes\n")
            client.close_channel(ws_client.STDIN_CHANNEL)
            client.run_forever(timeout=30)
            return (
                client.read_stdout(),
                client.read_stderr(),
                client.returncode,
                client.subprotocol,
            )
        finally:
            client.close()
            client.sock.shutdown()  # the library leaves the socket open once the server closed

    out, err, code, protocol = run_in_netns(daemon.netns, client_side)
    assert (out, err, code) == ("got from kubernetes\n", "e\n", 3)
    assert protocol == "v5.channel.k8s.io"


def test_kubernetes_python_client_port_forward_to_a_pod(daemon: Daemon) -> None:
    from kubernetes.stream import ws_client

    pod_id, pod_config = daemon.run_pod("kubepf")
    daemon.run_container(pod_id, pod_config, daemon.container_config("httpd", "httpd", []))
    ip = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status.network.ip
    wait_for_port(daemon.netns, ip, 80)
    url = str(
        daemon.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[80])).url
    )

    def client_side() -> tuple[bytes, Any]:
        pf = ws_client.portforward_call(  # type: ignore[no-untyped-call]
            _kube_config(url), "GET", url, query_params=[("ports", "80")]
        )
        try:
            sock = pf.socket(80)
            sock.setblocking(True)
            sock.settimeout(30)
            sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
            sock.close()
            return b"".join(chunks), pf.error(80)
        finally:
            pf.websocket.shutdown()  # the library's proxy thread may leave it open

    response, error = run_in_netns(daemon.netns, client_side)
    assert error is None
    assert response.startswith(b"HTTP/1.") and b"200 OK" in response.split(b"\r\n", 1)[0]
    assert response.endswith(b"\r\n\r\nhello from rktlet httpd\n")


def test_fifty_concurrent_execs_in_one_container(daemon: Daemon) -> None:
    container = running(daemon, "manyexec", ["sleep", "600"])
    sessions = 50
    urls = [
        exec_url(daemon, container, ["echo", str(n)], stdout=True, stderr=True)
        for n in range(sessions)
    ]

    async def all_at_once() -> list[tuple[bytes, bytes, int | None]]:
        results = await asyncio.gather(*(spdy_exec(url, timeout=60) for url in urls))
        return [(r.stdout, r.stderr, r.exit_code) for r in results]

    results = in_netns(daemon, all_at_once)
    assert results == [(f"{n}\n".encode(), b"", 0) for n in range(sessions)]


def test_websocket_v5_stdin_close_reaches_cat(daemon: Daemon) -> None:
    """v5.channel.k8s.io CLOSE of stdin is EOF for ``cat`` in the container: it exits 0."""
    from streaming import remotecommand as rc

    container = running(daemon, "wscat", ["sleep", "600"])
    url = exec_url(daemon, container, ["cat"], stdin=True, stdout=True, stderr=True)
    payload = [b"first line\n", b"second, " * 1000 + b"end\n"]
    protocol, got, close_code = in_netns(daemon, lambda: asyncio.wait_for(ws_v5(url, payload), 30))
    assert protocol == rc.V5
    assert got.get(1, b"") == b"".join(payload)
    assert got.get(2, b"") == b""
    assert json.loads(got[3])["status"] == "Success"
    assert close_code == 1000
