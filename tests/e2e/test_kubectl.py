"""kubectl as a person uses it, through kube-apiserver, to pods on two registered nodes."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime
from typing import Any

from tests.e2e.cluster import Node, wait_until
from tests.e2e.conftest import Cluster
from tests.e2e.pods import StaticPod, container, shell, static_pod
from tests.e2e.terminal import Terminal

WAIT_SIZE = 'until [ "$(stty size 2>/dev/null)" = "{}" ]; do sleep 0.05; done;'
ECHO_LINES = 'while read line; do echo "echo:$line"; done'
PAGE = b"hello from rktlet httpd\n"


@contextmanager
def mirrored(
    cluster: Cluster, node: Node, prefix: str, containers: list[dict[str, Any]], **spec: Any
) -> Iterator[StaticPod]:
    """A static pod on ``node``, once the API server has its mirror pod."""
    with static_pod(node, prefix, containers, **spec) as pod:
        wait_until(
            f"mirror pod {pod.full_name}",
            lambda: cluster.api.kubectl("get", "pod", pod.full_name, check=False).returncode == 0,
            60,
        )
        yield pod


def kubectl_out(cluster: Cluster, *args: str, input: bytes | None = None) -> bytes:
    return cluster.api.kubectl(*args, input=input).stdout


def test_nodes_register_and_static_pods_are_mirrored(cluster: Cluster) -> None:
    names = kubectl_out(cluster, "get", "nodes", "-o", "name").decode().split()
    assert sorted(names) == sorted(f"node/{n.name}" for n in cluster.nodes)
    node = cluster.nodes[0]
    with mirrored(
        cluster, node, "mirror", [container("c", node.image("busybox"), ["sleep", "3600"])]
    ) as pod:
        fields = (
            kubectl_out(
                cluster,
                "get",
                "pod",
                pod.full_name,
                "-o",
                "jsonpath={.spec.nodeName} {.metadata.annotations.kubernetes\\.io/config\\.mirror}",
            )
            .decode()
            .split()
        )
        assert fields[0] == node.name and len(fields) == 2


def test_kubectl_logs_options(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    script = "seq 1 10; until [ -e /tmp/go ]; do sleep 0.05; done; echo new; exec sleep 3600"
    with mirrored(cluster, node, "klogs", [shell("c", node.image("busybox"), script)]) as pod:
        name = pod.full_name
        wait_until("ten lines", lambda: kubectl_out(cluster, "logs", name).endswith(b"10\n"), 30)
        assert kubectl_out(cluster, "logs", name, "--tail=3") == b"8\n9\n10\n"
        assert kubectl_out(cluster, "logs", name, "--limit-bytes=5") == b"1\n2\n3"
        stamped = kubectl_out(cluster, "logs", name, "--timestamps").splitlines()
        assert [line.split(b" ", 1)[1] for line in stamped] == [b"%d" % i for i in range(1, 11)]
        first = datetime.fromisoformat(stamped[-1].split()[0].decode()[:26] + "+00:00").timestamp()
        wait_until("3 s since the last line", lambda: time.time() - first > 3, 10, step=0.1)
        cluster.api.kubectl("exec", name, "-c", "c", "--", "touch", "/tmp/go")
        wait_until(
            "the new line", lambda: kubectl_out(cluster, "logs", name).endswith(b"new\n"), 30
        )
        assert kubectl_out(cluster, "logs", name, "--since=2s") == b"new\n"


def test_kubectl_logs_follow(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    script = (
        "echo first; until [ -e /tmp/go ]; do sleep 0.05; done; echo second;"
        " until [ -e /tmp/end ]; do sleep 0.05; done; echo last"
    )
    with mirrored(
        cluster, node, "kfollow", [shell("c", node.image("busybox"), script)], restartPolicy="Never"
    ) as pod:
        proc = subprocess.Popen(
            cluster.api.kubectl_argv("logs", "-f", pod.full_name), stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"first\n"
            cluster.api.kubectl("exec", pod.full_name, "--", "touch", "/tmp/go")
            assert proc.stdout.readline() == b"second\n"
            cluster.api.kubectl("exec", pod.full_name, "--", "touch", "/tmp/end")
            assert proc.stdout.read() == b"last\n"
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait()


def test_kubectl_logs_previous(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    script = (
        "if [ -e /data/ran ]; then echo second run; exec sleep 3600; fi;"
        " touch /data/ran; echo first run; exit 1"
    )
    ctr = shell(
        "c", node.image("busybox"), script, volumeMounts=[{"name": "d", "mountPath": "/data"}]
    )
    with mirrored(cluster, node, "kprev", [ctr], volumes=[{"name": "d", "emptyDir": {}}]) as pod:
        pod.wait_container(
            "c", lambda s: s.get("restartCount") == 1 and "running" in s["state"], "running again"
        )
        wait_until(
            "second run", lambda: kubectl_out(cluster, "logs", pod.full_name) == b"second run\n", 30
        )
        assert kubectl_out(cluster, "logs", pod.full_name, "--previous") == b"first run\n"


def _sleeper(cluster: Cluster, node: Node, prefix: str) -> AbstractContextManager[StaticPod]:
    return mirrored(
        cluster, node, prefix, [container("c", node.image("busybox"), ["sleep", "3600"])]
    )


def test_kubectl_exec_output_and_exit_code(cluster: Cluster) -> None:
    with _sleeper(cluster, cluster.nodes[0], "kexec") as pod:
        proc = cluster.api.kubectl(
            "exec", pod.full_name, "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False
        )
        assert proc.returncode == 3
        assert proc.stdout == b"out\n"
        assert proc.stderr.startswith(b"err\n")


def test_kubectl_exec_stdin(cluster: Cluster) -> None:
    with _sleeper(cluster, cluster.nodes[0], "kexec-in") as pod:
        out = kubectl_out(
            cluster,
            "exec",
            "-i",
            pod.full_name,
            "--",
            "sh",
            "-c",
            "cat; echo done",
            input=b"abc\ndef",
        )
        assert out == b"abc\ndefdone\n"


def test_kubectl_exec_tty_with_resize(cluster: Cluster) -> None:
    script = (
        WAIT_SIZE.format("40 100")
        + " echo first;"
        + WAIT_SIZE.format("30 90")
        + ' echo second; read line; echo "got:$line"; exit 4'
    )
    with _sleeper(cluster, cluster.nodes[0], "kexec-tty") as pod:
        term = Terminal(
            cluster.api.kubectl_argv("exec", "-it", pod.full_name, "--", "sh", "-c", script),
            rows=40,
            cols=100,
        )
        try:
            term.read_until(b"first\r\n")
            term.resize(30, 90)  # kubectl sees SIGWINCH and sends the new size
            term.read_until(b"second\r\n")
            term.write(b"hello\r")
            term.read_until(b"got:hello\r\n")
            assert term.wait(30) == 4
        finally:
            term.close()


def test_kubectl_attach_stdin(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    ctr = shell("c", node.image("busybox"), ECHO_LINES, stdin=True)
    with mirrored(cluster, node, "kattach", [ctr]) as pod:
        proc = cluster.api.kubectl(
            "attach", "-i", pod.full_name, "-c", "c", input=b"abc\n", timeout=60
        )
        # The session ends once kubectl's input has (after the runtime sent what it had:
        # containerd 1.6 may end it before the answer, so the log is the witness).
        assert b"echo:abc\n".startswith(proc.stdout)
        wait_until(
            "the answer in the log",
            lambda: kubectl_out(cluster, "logs", pod.full_name) == b"echo:abc\n",
            30,
        )
        status = pod.container_status("c")
        assert "running" in status["state"] and status.get("restartCount", 0) == 0


def test_kubectl_attach_tty(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    ctr = shell(
        "c",
        node.image("busybox"),
        WAIT_SIZE.format("40 100") + " echo resized; " + ECHO_LINES,
        stdin=True,
        tty=True,
    )
    with mirrored(cluster, node, "kattach-tty", [ctr]) as pod:
        term = Terminal(
            cluster.api.kubectl_argv("attach", "-it", pod.full_name, "-c", "c"), rows=40, cols=100
        )
        try:
            term.read_until(b"resized\r\n")
            term.write(b"abc\r")
            term.read_until(b"echo:abc\r\n")
        finally:
            term.close()
        status = pod.container_status("c")
        assert "running" in status["state"] and status.get("restartCount", 0) == 0


def _http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_kubectl_port_forward_two_connections(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    web = container("web", node.image("httpd"), ["httpd", "-f", "-p", "80", "-h", "/www"])
    with mirrored(cluster, node, "kpf", [web]) as pod:
        pod.wait_running()
        proc = subprocess.Popen(
            cluster.api.kubectl_argv("port-forward", f"pod/{pod.full_name}", ":80"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 80", line)
            assert match, line
            port = int(match.group(1))
            # kubectl keeps reading its output pipe; drain it so it never blocks.
            threading.Thread(target=proc.stdout.read, daemon=True).start()

            def both() -> list[bytes]:
                with ThreadPoolExecutor(2) as pool:
                    return list(pool.map(_http_get, [port, port]))

            for response in node.call(both):
                assert response.startswith(b"HTTP/1.") and response.endswith(PAGE)
        finally:
            proc.kill()
            proc.wait()


def test_two_nodes_kubectl_logs_and_exec_reach_both(cluster: Cluster) -> None:
    with ExitStack() as stack:
        pods = []
        for node in cluster.nodes:
            ctr = shell("c", node.image("busybox"), f"echo on {node.name}; exec sleep 3600")
            pods.append(stack.enter_context(mirrored(cluster, node, "two", [ctr])))
        for node, pod in zip(cluster.nodes, pods, strict=True):
            on = kubectl_out(
                cluster, "get", "pod", pod.full_name, "-o", "jsonpath={.spec.nodeName}"
            )
            assert on.decode() == node.name
            line = f"on {node.name}\n".encode()

            def printed(name: str = pod.full_name, line: bytes = line) -> bool:
                return kubectl_out(cluster, "logs", name) == line

            wait_until("its line", printed, 30)
            # The exec lands in that node's pod network.
            out = kubectl_out(cluster, "exec", pod.full_name, "--", "hostname", "-i").decode()
            subnet = node.pod_subnet.rsplit(".", 1)[0] + "."
            assert out.strip().startswith(subnet), (out, node.pod_subnet)
