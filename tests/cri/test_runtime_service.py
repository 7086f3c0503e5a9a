"""The CRI RuntimeService end to end: a real daemon, runc, CNI plugins and images."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2
from cri.network.netns import run_in_netns
from iottymux.logformat import parse_record
from tests.cri.conftest import Daemon

NODE = api_pb2.NamespaceMode.NODE
POD = api_pb2.NamespaceMode.POD


def log_lines(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    return [parse_record(line).content for line in data.split(b"\n")[:-1]]


def http_get(netns: str, host: str, port: int, path: str = "/") -> bytes:
    """An HTTP/1.0 GET made from inside the test's network namespace."""

    def get() -> bytes:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    return run_in_netns(netns, get)


def wait_for_port(netns: str, host: str, port: int, timeout: float = 30) -> None:
    def probe() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while not run_in_netns(netns, probe):
        if time.monotonic() > deadline:
            raise AssertionError(f"{host}:{port} never answered")
        time.sleep(0.05)  # no event exists for "a server in another netns listens"


def test_version_and_status(daemon: Daemon) -> None:
    version = daemon.runtime.Version(api_pb2.VersionRequest())
    assert (version.runtime_name, version.runtime_api_version) == ("rktlet", "v1")
    response = daemon.runtime.Status(api_pb2.StatusRequest(verbose=True))
    # Where the kubelet looks before it trusts ContainerStatus.user and the groups policy.
    assert response.features.supplemental_groups_policy is True
    status = response.status
    conditions = {c.type: c for c in status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True, conditions["NetworkReady"].message
    config = daemon.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert config.linux.cgroup_driver == api_pb2.CgroupDriver.CGROUPFS


def _children(pid: int) -> list[list[str]]:
    argvs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argvs.append([a.decode() for a in f.read().split(b"\0") if a])
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
    return argvs


def test_fork_server_runs_from_start_so_the_first_pod_changes_no_descriptor(
    daemon: Daemon,
) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    # Ready means serving, and serving means the fork server is already up: the
    # first RunPodSandbox forks a monitor instead of waiting for an interpreter.
    assert any("forkserver" in argv for argv in _children(pid)), _children(pid)
    before = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
    pod_id, _ = daemon.run_pod("first")
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert len(os.listdir(f"/proc/{pid}/fd")) == len(before)


def test_pod_and_container_lifecycle_with_logs(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("life")
    pod = daemon.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert pod.status.state == api_pb2.PodSandboxState.SANDBOX_READY
    assert pod.status.network.ip.startswith("10.89.0.")
    config = daemon.container_config(
        "hello", "busybox", ["sh", "-c", "echo hello from a pod; echo to stderr >&2; exit 3"]
    )
    container_id = daemon.run_container(pod_id, pod_config, config)
    status = daemon.wait_exited(container_id)
    assert (status.exit_code, status.reason) == (3, "Error")
    assert status.finished_at >= status.started_at >= status.created_at > 0
    assert status.log_path == os.path.join(pod_config.log_directory, "hello/0.log")
    assert sorted(log_lines(status.log_path)) == [b"hello from a pod", b"to stderr"]
    listed = daemon.runtime.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id))
    ).containers
    assert [c.id for c in listed] == [container_id]
    daemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    daemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    daemon.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    stopped = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status
    assert stopped.state == api_pb2.PodSandboxState.SANDBOX_NOTREADY
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_pod_ip_answers_and_port_mapping(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod(
        "web",
        port_mappings=[
            api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=80, host_port=8080)
        ],
    )
    ip = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status.network.ip
    daemon.run_container(pod_id, pod_config, daemon.container_config("httpd", "httpd", []))
    wait_for_port(daemon.netns, ip, 80)
    assert b"200 OK" in http_get(daemon.netns, ip, 80, "/index.html")
    gateway = ip.rsplit(".", 1)[0] + ".1"
    assert b"200 OK" in http_get(daemon.netns, gateway, 8080, "/index.html")


def test_host_network_pod(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod(
        "hostnet",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=NODE)
            )
        ),
    )
    status = daemon.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status
    assert status.network.ip == ""
    daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "httpd", "httpd", ["httpd", "-f", "-p", "127.0.0.1:8181", "-h", "/www"]
        ),
    )
    wait_for_port(daemon.netns, "127.0.0.1", 8181)
    assert b"200 OK" in http_get(daemon.netns, "127.0.0.1", 8181, "/index.html")


def run_and_log(
    daemon: Daemon,
    name: str,
    command: list[str],
    pod_overrides: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[api_pb2.ContainerStatus, list[bytes]]:
    pod_id, pod_config = daemon.run_pod(name, **(pod_overrides or {}))
    container_id = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(name, fields.pop("image", "busybox"), command, **fields),
    )
    status = daemon.wait_exited(container_id)
    return status, log_lines(status.log_path)


def test_shared_pid_namespace(daemon: Daemon) -> None:
    _, lines = run_and_log(
        daemon,
        "sharedpid",
        ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"],
        pod_overrides={
            "linux": api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(pid=POD)
                )
            )
        },
    )
    assert lines and b"catatonit" in lines[0]


@pytest.mark.parametrize(
    ("image", "context", "expected"),
    [
        (
            "busybox",
            api_pb2.LinuxContainerSecurityContext(run_as_user=api_pb2.Int64Value(value=4321)),
            b"4321",
        ),
        ("busybox", api_pb2.LinuxContainerSecurityContext(run_as_username="app"), b"1000"),
        ("user-uid-gid", api_pb2.LinuxContainerSecurityContext(), b"1234:5678"),
        ("user-name", api_pb2.LinuxContainerSecurityContext(), b"1000"),
    ],
)
def test_users(daemon: Daemon, image: str, context, expected: bytes) -> None:
    script = "echo $(id -u)" + (":$(id -g)" if b":" in expected else "")
    status, lines = run_and_log(
        daemon,
        f"user{expected.decode().replace(':', '-')}",
        ["sh", "-c", script],
        image=image,
        linux=api_pb2.LinuxContainerConfig(security_context=context),
    )
    assert status.exit_code == 0
    assert lines == [expected]


@pytest.mark.parametrize(
    ("policy", "groups"),
    [
        # Merge (the default) adds the groups the image's /etc/group gives user "app".
        (api_pb2.SupplementalGroupsPolicy.Merge, [1000, 5678, 60000]),
        (api_pb2.SupplementalGroupsPolicy.Strict, [1000, 60000]),
    ],
)
def test_container_status_reports_the_process_user(
    daemon: Daemon, policy: api_pb2.SupplementalGroupsPolicy, groups: list[int]
) -> None:
    pod_id, pod_config = daemon.run_pod(f"who{policy}")
    context = api_pb2.LinuxContainerSecurityContext(
        supplemental_groups=[60000], supplemental_groups_policy=policy
    )
    cid = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "who",
            "user-name",
            ["sleep", "600"],
            linux=api_pb2.LinuxContainerConfig(security_context=context),
        ),
    )

    def reported() -> tuple[int, int, list[int]]:
        status = daemon.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid))
        assert status.status.HasField("user")
        user = status.status.user.linux
        return user.uid, user.gid, list(user.supplemental_groups)

    assert reported() == (1000, 1000, groups)
    inside = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["id", "-G"], timeout=30)
    )
    assert sorted(int(g) for g in inside.stdout.split()) == groups
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    assert reported() == (1000, 1000, groups), "an exited container keeps its user"


def test_process_identity_is_read_from_proc_and_checks_the_cgroup() -> None:
    from cri.containers import process_identity

    me = process_identity(os.getpid(), "/")  # every cgroup line holds a "/"
    assert me is not None
    assert (me[0], me[1]) == (os.getuid(), os.getgid())
    assert me[2] == sorted(os.getgroups())
    assert process_identity(os.getpid(), "no-such-container-id") is None


def test_readonly_rootfs(daemon: Daemon) -> None:
    _status, lines = run_and_log(
        daemon,
        "ro",
        ["sh", "-c", "touch /newfile 2>/dev/null && echo wrote || echo refused"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(readonly_rootfs=True)
        ),
    )
    assert lines == [b"refused"]


def test_seccomp_runtime_default_refuses_unshare(daemon: Daemon) -> None:
    # A user namespace needs no capability, so only the seccomp profile decides.
    script = "unshare -U true 2>/dev/null && echo allowed || echo refused"
    default = api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.ProfileType.RuntimeDefault
        ),
    )
    _, lines = run_and_log(
        daemon,
        "seccomp",
        ["sh", "-c", script],
        linux=api_pb2.LinuxContainerConfig(security_context=default),
    )
    assert lines[-1] == b"refused"
    unconfined = api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.ProfileType.Unconfined
        ),
    )
    _, lines = run_and_log(
        daemon,
        "unconfined",
        ["sh", "-c", script],
        linux=api_pb2.LinuxContainerConfig(security_context=unconfined),
    )
    assert lines[-1] == b"allowed"


def test_capability_drop_is_visible(daemon: Daemon) -> None:
    context = api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(drop_capabilities=["ALL"], add_capabilities=["CHOWN"])
    )
    _, lines = run_and_log(
        daemon,
        "caps",
        ["sh", "-c", "grep CapEff /proc/self/status"],
        linux=api_pb2.LinuxContainerConfig(security_context=context),
    )
    assert lines == [b"CapEff:\t0000000000000001"]


def test_stop_timeout_then_kill(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("stubborn")
    container_id = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "stubborn",
            "busybox",
            ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        ),
    )
    started = time.monotonic()
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=1))
    assert time.monotonic() - started >= 1
    status = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)
    ).status
    assert status.state == api_pb2.ContainerState.CONTAINER_EXITED
    assert status.exit_code == 137


def test_exec_sync(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("execs")
    container_id = daemon.run_container(
        pod_id, pod_config, daemon.container_config("sleeper", "busybox", ["sleep", "600"])
    )
    reply = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", "echo out; echo err >&2; exit 7"]
        )
    )
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 7)
    started = time.monotonic()
    background = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", "sleep 30 & echo left a child"]
        )
    )
    assert (background.stdout, background.exit_code) == (b"left a child\n", 0)
    assert time.monotonic() - started < 10, "a background child held the ExecSync"
    big = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=["sh", "-c", "head -c 20000000 /dev/zero"]
        )
    )
    assert len(big.stdout) == 16 << 20
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=container_id, cmd=["sleep", "30"], timeout=1)
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 15


def test_oom_kill_is_reported(daemon: Daemon) -> None:
    resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=32 << 20)
    status, _ = run_and_log(
        daemon,
        "oom",
        ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo no"],
        linux=api_pb2.LinuxContainerConfig(resources=resources),
    )
    assert status.reason == "OOMKilled"
    assert status.exit_code == 137


def test_reopen_container_log(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("rotate")
    container_id = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "cat", "busybox", ["sh", "-c", "while read l; do echo $l; done"], stdin=True
        ),
    )
    status = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)
    ).status
    os.rename(status.log_path, status.log_path + ".1")
    daemon.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=container_id))
    assert os.path.exists(status.log_path)


@pytest.mark.parametrize(
    ("call", "request_obj", "field"),
    [
        ("RunPodSandbox", api_pb2.RunPodSandboxRequest(), "config"),
        (
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(
                config=api_pb2.PodSandboxConfig(
                    metadata=api_pb2.PodSandboxMetadata(name="../etc", namespace="ns", uid="u")
                )
            ),
            "config.metadata.name",
        ),
        (
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(
                config=api_pb2.PodSandboxConfig(
                    metadata=api_pb2.PodSandboxMetadata(name="x" * 5000, namespace="ns", uid="u")
                )
            ),
            "config.metadata.name",
        ),
        ("StopPodSandbox", api_pb2.StopPodSandboxRequest(), "pod_sandbox_id"),
        ("CreateContainer", api_pb2.CreateContainerRequest(), "pod_sandbox_id"),
        ("StartContainer", api_pb2.StartContainerRequest(), "container_id"),
        ("ContainerStatus", api_pb2.ContainerStatusRequest(), "container_id"),
        ("ExecSync", api_pb2.ExecSyncRequest(), "container_id"),
    ],
)
def test_malformed_requests(daemon: Daemon, call: str, request_obj, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(daemon.runtime, call)(request_obj)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)
    assert daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []


def test_bad_container_requests_create_nothing(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("bad")
    for config, field in (
        (
            daemon.container_config("x", "busybox", ["true"], log_path="../../escape.log"),
            "config.log_path",
        ),
        (daemon.container_config("../x", "busybox", ["true"]), "config.metadata.name"),
        (daemon.container_config("x", "nope", ["true"]), "config.image.image"),
        (
            daemon.container_config(
                "x",
                "user-uid",
                ["true"],
                linux=api_pb2.LinuxContainerConfig(
                    security_context=api_pb2.LinuxContainerSecurityContext(
                        run_as_group=api_pb2.Int64Value(value=5)
                    )
                ),
            ),
            "config.linux.security_context.run_as_group",
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            daemon.runtime.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config
                )
            )
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert err.value.details().startswith(field)
    assert daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    assert not any((daemon.root / "containers").iterdir())
    # The same rule for the pod's own security context (its infra process).
    with pytest.raises(grpc.RpcError) as err:
        daemon.run_pod(
            "group-only",
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    run_as_group=api_pb2.Int64Value(value=5)
                )
            ),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("config.linux.security_context.run_as_group: ")
    assert [
        p.metadata.name
        for p in daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    ] == ["bad"]


def test_failed_create_leaves_no_log_file_and_reports_the_runtime_error(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("nolog")
    config = daemon.container_config("broken", "busybox", ["/no/such/binary"])
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config
            )
        )
    assert "/no/such/binary" in err.value.details()
    log_dir = Path(pod_config.log_directory)
    assert not (log_dir / "broken" / "0.log").exists()
    assert not (log_dir / "broken").exists()
    assert "/no/such/binary" in daemon.log_file.read_text()
    assert daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    # The kubelet retries with the same attempt: that create works, and logs.
    good = daemon.container_config("broken", "busybox", ["echo", "second try"])
    cid = daemon.run_container(pod_id, pod_config, good)
    daemon.wait_exited(cid)
    assert log_lines(str(log_dir / "broken" / "0.log")) == [b"second try"]


def test_sandbox_hostname_empty_is_the_nodes_and_only_a_given_one_is_checked(
    daemon: Daemon,
) -> None:
    long_name = "create-PodSandbox-for-container-0c8e4b1a-4a43-4e61-9f1b-7b1b2f2e0a9d"
    pod_id, pod_config = daemon.run_pod(long_name, hostname="")
    cid = daemon.run_container(
        pod_id, pod_config, daemon.container_config("h", "busybox", ["hostname"])
    )
    daemon.wait_exited(cid)
    assert log_lines(str(Path(pod_config.log_directory, "h/0.log"))) == [
        socket.gethostname().encode()
    ]
    for bad in ("x" * 65, "under_score"):
        with pytest.raises(grpc.RpcError) as err:
            daemon.run_pod("named", hostname=bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("config.hostname: ")


def test_every_stop_and_remove_rpc_is_idempotent(daemon: Daemon) -> None:
    rt = daemon.runtime
    gone = "0f" * 32

    def stop_and_remove_all(container_id: str, pod_id: str) -> None:
        # The kubelet repeats these for objects already stopped or gone: all OK.
        rt.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=1))
        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    stop_and_remove_all(gone, gone)
    pod_id, pod_config = daemon.run_pod("idem")
    cid = daemon.run_container(
        pod_id, pod_config, daemon.container_config("s", "busybox", ["sleep", "600"])
    )
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    stop_and_remove_all(cid, pod_id)
    stop_and_remove_all(cid, pod_id)
    assert rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    # An id that is no id at all is still the caller's mistake.
    with pytest.raises(grpc.RpcError) as err:
        rt.StopContainer(api_pb2.StopContainerRequest(container_id="../x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("container_id")


def test_daemon_killed_and_restarted_while_pods_log(daemon: Daemon) -> None:
    pod_id, pod_config = daemon.run_pod("survivor")
    ticker = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "ticker",
            "busybox",
            ["sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done"],
        ),
    )
    short = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config("short", "busybox", ["sh", "-c", "read x; exit 42"], stdin=True),
    )
    log_path = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=ticker)
    ).status.log_path
    daemon.stop(signal.SIGKILL)
    before = len(log_lines(log_path))
    # While no daemon runs: the short app exits (its stdin is closed by killing it).
    state = json.loads((daemon.run_dir / "pods" / pod_id / "state.json").read_text())
    short_pid = state["apps"][short]["pid"]
    os.kill(short_pid, signal.SIGKILL)
    daemon.start()
    status = daemon.wait_exited(short)
    assert status.exit_code == 137
    running = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=ticker)
    ).status
    assert running.state == api_pb2.ContainerState.CONTAINER_RUNNING
    numbers = [int(line) for line in log_lines(log_path)]
    assert len(numbers) > before
    assert numbers == list(range(len(numbers))), "a line was lost while the daemon was down"


def test_create_remove_cycles_leave_nothing(daemon: Daemon) -> None:
    def snapshot() -> tuple[int, int, int, int, int]:
        with open("/proc/self/mountinfo") as f:
            mounts = sum(1 for line in f if str(daemon.run_dir) in line or str(daemon.base) in line)
        fds = len(os.listdir(f"/proc/{daemon.proc.pid}/fd")) if daemon.proc else 0
        netns = (
            len(list((daemon.run_dir / "netns").glob("*")))
            if (daemon.run_dir / "netns").exists()
            else 0
        )
        # Pods' cgroups live under /rktlet by default (no cgroup parent given); other
        # daemons on the machine share that parent, so only this test's ids count.
        memory_cgroups = Path("/sys/fs/cgroup/memory/rktlet")
        cgroups = sum(1 for oid in created if (memory_cgroups / oid).exists())
        monitors = subprocess.run(
            ["pgrep", "-f", f"iottymux monitor --run-dir {daemon.run_dir}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return mounts, fds, netns, cgroups, len(monitors)

    created: list[str] = []
    daemon.runtime.RemovePodSandbox(
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=daemon.run_pod("warmup")[0])
    )
    before = snapshot()
    cycles = int(os.environ.get("RKTLET_CYCLES", "200"))
    for i in range(cycles):
        pod_id, pod_config = daemon.run_pod(f"cycle{i}")
        config = daemon.container_config("c", "busybox", ["true"])
        created += [pod_id, daemon.run_container(pod_id, pod_config, config)]
        daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    after = snapshot()
    assert after == before
    assert not any((daemon.run_dir / "pods").iterdir())
    assert not any((daemon.root / "containers").iterdir())


def test_failed_run_pod_sandbox_rolls_everything_back(daemon: Daemon) -> None:
    conflist = {
        "cniVersion": "1.0.0",
        "name": "broken",
        "plugins": [{"type": "no-such-plugin"}],
    }
    (daemon.cni_conf_dir / "10-broken.conflist").write_text(json.dumps(conflist))
    try:
        with pytest.raises(grpc.RpcError) as err:
            daemon.run_pod("doomed")
        assert "no-such-plugin" in err.value.details()
        assert daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
        assert list((daemon.run_dir / "pods").iterdir()) == []
        netns_dir = daemon.run_dir / "netns"
        assert not netns_dir.exists() or list(netns_dir.iterdir()) == []
        with open("/proc/self/mountinfo") as f:
            assert str(daemon.run_dir / "netns") not in f.read()
        monitors = subprocess.run(
            ["pgrep", "-f", f"iottymux monitor --run-dir {daemon.run_dir}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert monitors.stdout == "", "a monitor of the failed pod is still running"
    finally:
        (daemon.cni_conf_dir / "10-broken.conflist").unlink()
    pod_id, _ = daemon.run_pod("fine")
    assert pod_id


def test_iottymux_logs_resolves_a_container_through_the_daemon(daemon: Daemon) -> None:
    import sys

    status, _ = run_and_log(daemon, "named", ["sh", "-c", "echo found by name"])
    for target in ("named", status.id[:10]):
        done = subprocess.run(
            [sys.executable, "-m", "iottymux", "logs", "--rktlet-socket", daemon.socket, target],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "found by name\n"


def test_iottymux_logs_follow_ends_when_the_container_exits(daemon: Daemon) -> None:
    import sys

    pod_id, pod_config = daemon.run_pod("followed")
    container = daemon.run_container(
        pod_id,
        pod_config,
        daemon.container_config(
            "followed", "busybox", ["sh", "-c", "echo first; read x; echo last"], stdin=True
        ),
    )
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iottymux",
            "logs",
            "-f",
            "--rktlet-socket",
            daemon.socket,
            container[:12],
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "first\n"
        from iottymux.attachclient import AttachClient, endpoint_path

        with AttachClient(endpoint_path(str(daemon.run_dir / "pods" / pod_id), container)) as c:
            c.send_stdin(b"go\n")
            c.collect()
        assert follower.stdout.readline() == "last\n"
        # The container has exited: the follow ends by itself, as the kubelet's does.
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()
