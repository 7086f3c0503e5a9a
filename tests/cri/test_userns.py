"""Pods in user namespaces (``hostUsers: false``) with real runc, end to end through CRI.

The pod gets the kubelet's mapping (container 0..65535 -> host H..H+65535); the image's
layers are idmapped under the overlay, not chowned; volumes are plain or idmapped binds.
Each test compares what the container sees with what the host sees of the same files.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2
from streaming.client import spdy_exec
from tests.cri.conftest import Daemon
from tests.cri.test_streaming import in_netns

SIZE = 65536


def _traversable(path: Path) -> None:
    """runc's init resolves the rootfs as the pod's root, nobody on the host: open the way."""
    for p in [path, *path.parents]:
        if str(p) in ("/", "/tmp"):
            break
        p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o111)


@pytest.fixture
def userns_daemon(daemon: Daemon) -> Daemon:
    _traversable(daemon.root)
    return daemon


def _host_base() -> int:
    # A slice of the id space far above any real user, different for each test.
    return SIZE * (4096 + secrets.randbelow(4096))


def _userns_options(base: int) -> api_pb2.NamespaceOption:
    opts = api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER, ipc=api_pb2.POD)
    opts.userns_options.mode = api_pb2.POD
    opts.userns_options.uids.add(host_id=base, container_id=0, length=SIZE)
    opts.userns_options.gids.add(host_id=base, container_id=0, length=SIZE)
    return opts


def _pod(daemon: Daemon, name: str, base: int | None) -> tuple[str, api_pb2.PodSandboxConfig]:
    linux = api_pb2.LinuxPodSandboxConfig()
    if base is not None:
        linux.security_context.namespace_options.CopyFrom(_userns_options(base))
    return daemon.run_pod(name, linux=linux)


def _container(
    daemon: Daemon,
    pod: tuple[str, api_pb2.PodSandboxConfig],
    name: str,
    image: str = "owners",
    *,
    mounts: list[api_pb2.Mount] | None = None,
    caps: list[str] | None = None,
    **fields: object,
) -> str:
    pod_id, pod_config = pod
    config = daemon.container_config(name, image, ["sleep", "3600"], **fields)
    config.linux.security_context.namespace_options.CopyFrom(
        pod_config.linux.security_context.namespace_options
    )
    config.linux.security_context.capabilities.add_capabilities.extend(caps or [])
    config.mounts.extend(mounts or [])
    return daemon.run_container(pod_id, pod_config, config)


def _exec(daemon: Daemon, container: str, script: str) -> tuple[int, str]:
    reply = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=container, cmd=["sh", "-c", script], timeout=30)
    )
    return reply.exit_code, (reply.stdout + reply.stderr).decode()


def _pid(daemon: Daemon, container: str) -> int:
    reply = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container, verbose=True)
    )
    return int(json.loads(reply.info["info"])["pid"])


def _host_ids(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "hostvol"
    d.mkdir()
    (d / "by-root").write_text("host root's\n")
    d.chmod(0o755)
    yield d


def test_status_announces_user_namespaces(userns_daemon: Daemon) -> None:
    status = userns_daemon.runtime.Status(api_pb2.StatusRequest())
    default = next(h for h in status.runtime_handlers if h.name == "")
    assert default.features.user_namespaces
    assert default.features.recursive_read_only_mounts


def test_mapping_ownership_and_identity(userns_daemon: Daemon) -> None:
    daemon = userns_daemon
    base = _host_base()
    pod = _pod(daemon, "userns-ids", base)
    container = _container(daemon, pod, "ids")
    code, out = _exec(daemon, container, "cat /proc/self/uid_map /proc/self/gid_map; id -u")
    assert code == 0, out
    assert out.split() == ["0", str(base), str(SIZE), "0", str(base), str(SIZE), "0"]
    # The image's owners, unchanged inside...
    code, out = _exec(
        daemon, container, "stat -c '%n %u:%g' /owned/root /owned/app /owned/other /owned/appdir"
    )
    assert out.splitlines() == [
        "/owned/root 0:0",
        "/owned/app 1000:1000",
        "/owned/other 1234:5678",
        "/owned/appdir 1000:1000",
    ], out
    # ...the 0700 directory of uid 1000 is that user's, as in the image.
    code, out = _exec(daemon, container, "su -s /bin/sh app -c 'cat /owned/appdir/secret'")
    assert (code, out) == (0, "secret\n")
    # ...and shifted by the mapping on the host.
    pid = _pid(daemon, container)
    root = f"/proc/{pid}/root"
    assert _host_ids(f"{root}/owned/root") == (base, base)
    assert _host_ids(f"{root}/owned/app") == (base + 1000, base + 1000)
    assert _host_ids(f"{root}/owned/other") == (base + 1234, base + 5678)
    with open(f"/proc/{pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(base)] * 4
    # A file the container writes lands in its upper dir as the pod's root.
    code, out = _exec(daemon, container, "echo new > /owned/new && stat -c %u /owned/new")
    assert (code, out) == (0, "0\n")
    assert _host_ids(f"{root}/owned/new") == (base, base)


def test_root_inside_is_not_root_outside(userns_daemon: Daemon, host_dir: Path) -> None:
    """What host root (a container without a user namespace) can do, the pod's root cannot."""
    daemon = userns_daemon
    mounts = [
        api_pb2.Mount(container_path="/hostvol", host_path=str(host_dir)),
        api_pb2.Mount(container_path="/ro", host_path=str(host_dir), readonly=True),
    ]
    script = (
        "touch /hostvol/x 2>/dev/null; echo write=$?; "
        "mknod /tmp/null c 1 3 2>/dev/null; echo mknod=$?; "
        "mount -o remount,rw /ro 2>/dev/null; echo remount=$?"
    )
    results = {}
    for name, base in (("plain", None), ("userns", _host_base())):
        pod = _pod(daemon, f"root-{name}", base)
        container = _container(daemon, pod, name, mounts=mounts, caps=["CAP_SYS_ADMIN"])
        _code, out = _exec(daemon, container, script)
        results[name] = out.split()
    assert results["plain"] == ["write=0", "mknod=0", "remount=0"]
    assert results["userns"] == ["write=1", "mknod=1", "remount=1"]
    assert not (host_dir / "x").exists() or _host_ids(str(host_dir / "x")) == (0, 0)


def test_volumes_plain_and_idmapped(userns_daemon: Daemon, host_dir: Path, tmp_path: Path) -> None:
    daemon = userns_daemon
    base = _host_base()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    idmapped = api_pb2.Mount(container_path="/mapped", host_path=str(host_dir))
    idmapped.uidMappings.add(host_id=base, container_id=0, length=SIZE)
    idmapped.gidMappings.add(host_id=base, container_id=0, length=SIZE)
    mounts = [api_pb2.Mount(container_path="/shared", host_path=str(shared)), idmapped]
    container = _container(daemon, _pod(daemon, "vols", base), "vols", mounts=mounts)
    # Plain bind: a file the pod's root writes is owned by the mapped uid on the host.
    code, out = _exec(daemon, container, "echo hi > /shared/made && stat -c %u:%g /shared/made")
    assert (code, out) == (0, "0:0\n")
    assert _host_ids(str(shared / "made")) == (base, base)
    # Idmapped bind (what the kubelet asks for): host root's files are the pod root's.
    code, out = _exec(
        daemon, container, "stat -c %u:%g /mapped/by-root && echo more >> /mapped/by-root"
    )
    assert (code, out) == (0, "0:0\n")
    assert (host_dir / "by-root").read_text() == "host root's\nmore\n"
    assert _host_ids(str(host_dir / "by-root")) == (0, 0)


def test_exec_and_attach_in_a_userns_pod(userns_daemon: Daemon) -> None:
    daemon = userns_daemon
    pod_id, pod_config = _pod(daemon, "userns-attach", _host_base())
    config = daemon.container_config("sh", "busybox", ["sh"], stdin=True, stdin_once=True)
    config.linux.security_context.namespace_options.CopyFrom(
        pod_config.linux.security_context.namespace_options
    )
    container = daemon.run_container(pod_id, pod_config, config)
    url = str(
        daemon.runtime.Exec(
            api_pb2.ExecRequest(container_id=container, cmd=["id", "-u"], stdout=True)
        ).url
    )
    result = in_netns(daemon, lambda: spdy_exec(url))
    assert result.stdout == b"0\n"
    url = str(
        daemon.runtime.Attach(
            api_pb2.AttachRequest(container_id=container, stdin=True, stdout=True, stderr=True)
        ).url
    )
    script = b"cat /proc/self/uid_map\nexit 7\n"
    result = in_netns(daemon, lambda: spdy_exec(url, stdin=script))
    assert result.stdout.split()[:2] == [
        b"0",
        str(
            pod_config.linux.security_context.namespace_options.userns_options.uids[0].host_id
        ).encode(),
    ]
    assert daemon.wait_exited(container).exit_code == 7


def test_teardown_leaves_no_mount(userns_daemon: Daemon) -> None:
    daemon = userns_daemon
    pod = _pod(daemon, "userns-gone", _host_base())
    _container(daemon, pod, "c")
    prefixes = (str(daemon.root), str(daemon.run_dir))

    def ours() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(prefixes)]

    assert any("/lower/" in m for m in ours())  # idmapped layers while it exists
    assert any("/userns/" in m for m in ours())
    daemon.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod[0]))
    assert ours() == []


def test_handler_without_userns_is_refused_cleanly(tmp_path: Path, daemon: Daemon) -> None:
    """crun 1.8 cannot say what it supports: its pods get a clear error and nothing else."""
    daemon.stop()
    daemon.extra_args += ["--runtime-handler", "crun=crun"]
    daemon.start()
    status = daemon.runtime.Status(api_pb2.StatusRequest(verbose=True))
    crun = next(h for h in status.runtime_handlers if h.name == "crun")
    assert not crun.features.user_namespaces
    missing = json.loads(status.info["featuresMissing"])
    assert "crun does not report its features" in missing["crun"]["userNamespaces"]
    assert missing[""] == {"recursiveReadOnlyMounts": "", "userNamespaces": ""}
    config = daemon.pod_config("no-userns")
    config.linux.security_context.namespace_options.CopyFrom(_userns_options(_host_base()))
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config, runtime_handler="crun")
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "runtime handler 'crun' cannot run user namespaces" in str(info.value.details())
    assert not daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert not (daemon.run_dir / "userns").exists() or not any(
        (daemon.run_dir / "userns").iterdir()
    )


def test_unmapped_user_is_invalid_argument(userns_daemon: Daemon) -> None:
    daemon = userns_daemon
    pod_id, pod_config = _pod(daemon, "unmapped", _host_base())
    config = daemon.container_config("c", "busybox", ["true"])
    config.linux.security_context.namespace_options.CopyFrom(
        pod_config.linux.security_context.namespace_options
    )
    config.linux.security_context.run_as_user.value = SIZE + 5
    with pytest.raises(grpc.RpcError) as info:
        daemon.run_container(pod_id, pod_config, config)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"uid {SIZE + 5} is not mapped" in str(info.value.details())
    assert not any((daemon.root / "rootfs").iterdir())


def test_state_dir_closed_to_others_is_a_clear_error(daemon: Daemon) -> None:
    """pytest's directories are 0700: the daemon says so instead of failing inside runc."""
    config = daemon.pod_config("closed")
    config.linux.security_context.namespace_options.CopyFrom(_userns_options(_host_base()))
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must be searchable by others (o+x)" in str(info.value.details())
    assert not daemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
