"""Specs from cri.oci run under real runc, and the container sees what the CRI asked for."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cri import cgroups
from cri.api import api_pb2
from cri.oci.capabilities import DEFAULT_CAPABILITIES, capabilities_from_mask
from cri.oci.host import HostInfo
from cri.oci.image_config import ImageConfig
from cri.oci.spec import (
    SandboxContext,
    build_sandbox_spec,
    pod_namespaces,
    prepare_sandbox_rootfs,
)
from tests.oci.oci_helpers import (
    SECRET,
    Runner,
    container_config,
    sandbox_config,
    spec_for,
    unique_id,
)

pytestmark = pytest.mark.root

RUNTIME_DEFAULT = api_pb2.SecurityProfile.RuntimeDefault
UNCONFINED = api_pb2.SecurityProfile.Unconfined


def sh(script: str, **security: Any) -> api_pb2.ContainerConfig:
    return container_config(command=["sh", "-c", script], **security)


def run_ok(runner: Runner, rootfs: Path, config: api_pb2.ContainerConfig, **kw: Any) -> str:
    cid = unique_id()
    spec = spec_for(runner, rootfs, config, cid=cid, **kw)
    code, out, err = runner.run(spec, cid)
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in {text!r}")


# ------------------------------------------------------------------------- security


def test_default_capabilities_with_add_and_drop(runner: Runner, rootfs: Path) -> None:
    out = run_ok(
        runner,
        rootfs,
        sh("cat /proc/self/status", add_caps=["NET_ADMIN"], drop_caps=["NET_RAW", "chown"]),
    )
    effective = capabilities_from_mask(int(status_field(out, "CapEff"), 16))
    expected = (set(DEFAULT_CAPABILITIES) | {"CAP_NET_ADMIN"}) - {"CAP_NET_RAW", "CAP_CHOWN"}
    assert effective == expected
    assert status_field(out, "CapBnd") == status_field(out, "CapEff")
    assert status_field(out, "CapInh") == "0000000000000000"


def test_drop_all_then_add_one(runner: Runner, rootfs: Path) -> None:
    out = run_ok(runner, rootfs, sh("cat /proc/self/status", drop_caps=["ALL"], add_caps=["KILL"]))
    assert capabilities_from_mask(int(status_field(out, "CapEff"), 16)) == {"CAP_KILL"}


@pytest.mark.parametrize(
    ("profile", "userns_rc", "seccomp_mode"),
    [
        pytest.param(RUNTIME_DEFAULT, "1", "2", id="runtime-default-blocks-unshare"),
        pytest.param(UNCONFINED, "0", "0", id="unconfined-allows-user-namespace"),
    ],
)
def test_seccomp_unshare(
    runner: Runner, rootfs: Path, profile: int, userns_rc: str, seccomp_mode: str
) -> None:
    script = (
        "unshare -U true 2>/tmp/u.err; echo userns=$?; cat /tmp/u.err; "
        "unshare -n true 2>/tmp/n.err; echo netns=$?; cat /tmp/n.err; "
        "grep ^Seccomp: /proc/self/status"
    )
    out = run_ok(runner, rootfs, sh(script, seccomp=profile))
    assert f"userns={userns_rc}" in out
    # Without CAP_SYS_ADMIN a network namespace is refused either way; under
    # RuntimeDefault the filter answers first.
    assert "netns=1" in out
    if profile == RUNTIME_DEFAULT:
        assert out.count("Operation not permitted") == 2
    assert status_field(out, "Seccomp") == seccomp_mode


def test_runtime_default_still_runs_ordinary_programs(runner: Runner, rootfs: Path) -> None:
    # fork/exec, pipes, background jobs, signals, timers: the allow list is complete enough
    # for a shell pipeline, and glibc's clone3 → clone fallback on ENOSYS works.
    script = (
        "echo a b c | tr ' ' '\\n' | sort -r | head -n 1; "
        "sleep 30 & kill $!; wait; sleep 0.01; date +%Y >/dev/null && echo ok"
    )
    out = run_ok(runner, rootfs, sh(script, seccomp=RUNTIME_DEFAULT, no_new_privs=True))
    assert out.split() == ["c", "ok"]


def test_readonly_rootfs_refuses_writes(runner: Runner, rootfs: Path) -> None:
    script = "touch /new 2>&1; echo rc=$?; touch /tmp/x 2>&1; echo tmp=$?"
    out = run_ok(runner, rootfs, sh(script, readonly_rootfs=True))
    assert "Read-only file system" in out
    assert "rc=1" in out and "tmp=1" in out
    out = run_ok(runner, rootfs, sh("touch /new && echo written"))
    assert out.strip() == "written"
    assert (rootfs / "new").exists()


@pytest.mark.parametrize(
    ("security", "image_user", "expected"),
    [
        pytest.param(
            {"run_as_user": 1000},
            "",
            "uid=1000(app) gid=1000(app) groups=1000(app),1001(extra)",
            id="run_as_user",
        ),
        pytest.param(
            {"run_as_username": "app"},
            "",
            "uid=1000(app) gid=1000(app) groups=1000(app),1001(extra)",
            id="run_as_username",
        ),
        pytest.param(
            {"run_as_user": 1000, "run_as_group": 1002},
            "",
            "uid=1000(app) gid=1002(other) groups=1001(extra),1002(other)",
            id="run_as_user-and-group",
        ),
        pytest.param(
            {}, "1000:2000", "uid=1000(app) gid=2000 groups=1001(extra),2000", id="uid:gid"
        ),
        pytest.param(
            {},
            "app:other",
            "uid=1000(app) gid=1002(other) groups=1001(extra),1002(other)",
            id="name:group",
        ),
        pytest.param({}, "4242", "uid=4242 gid=0(root) groups=0(root)", id="uid-not-in-passwd"),
        pytest.param(
            {"run_as_user": 1000, "supplemental_groups": [3000, 1002]},
            "",
            "uid=1000(app) gid=1000(app) groups=1000(app),1001(extra),1002(other),3000",
            id="supplemental-groups",
        ),
        pytest.param(
            {"run_as_user": 1000, "supplemental_groups": [3000], "supplemental_groups_policy": 1},
            "",
            "uid=1000(app) gid=1000(app) groups=1000(app),3000",
            id="strict-policy",
        ),
        pytest.param(
            {"run_as_user": 0},
            "app",
            "uid=0(root) gid=0(root) groups=0(root),1002(other)",
            id="run_as_user-beats-image-user",
        ),
    ],
)
def test_user_and_groups(
    runner: Runner, rootfs: Path, security: dict[str, Any], image_user: str, expected: str
) -> None:
    out = run_ok(runner, rootfs, sh("id", **security), image=ImageConfig(user=image_user))
    assert out.strip() == expected


def test_non_root_user_home_and_capabilities(runner: Runner, rootfs: Path) -> None:
    out = run_ok(runner, rootfs, sh("echo $HOME; grep CapEff /proc/self/status", run_as_user=1000))
    home, capeff = out.splitlines()
    assert home == "/home/app"
    # A non-root process loses its effective capabilities at execve (no ambient set).
    assert capeff.split()[1] == "0000000000000000"


def test_ambient_capability_survives_exec_for_non_root(runner: Runner, rootfs: Path) -> None:
    cfg = sh("grep -E 'CapEff|CapAmb' /proc/self/status", run_as_user=1000, drop_caps=["ALL"])
    cfg.linux.security_context.capabilities.add_ambient_capabilities.append("NET_BIND_SERVICE")
    out = run_ok(runner, rootfs, cfg)
    assert capabilities_from_mask(int(status_field(out, "CapEff"), 16)) == {"CAP_NET_BIND_SERVICE"}
    assert status_field(out, "CapAmb") == status_field(out, "CapEff")


def test_env_and_args_merge_with_image(runner: Runner, rootfs: Path) -> None:
    image = ImageConfig(
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo image-cmd",),
        env=("FOO=image", "BAR=image", "PATH=/bin"),
        working_dir="/tmp",
    )
    cfg = container_config('echo "$FOO $BAR $BAZ $PATH"; pwd', envs={"FOO": "config", "BAZ": "new"})
    out = run_ok(runner, rootfs, cfg, image=image)
    assert out.splitlines() == ["config image new /bin", "/tmp"]
    # No command and no args: the image's Entrypoint + Cmd.
    assert run_ok(runner, rootfs, container_config(), image=image).strip() == "image-cmd"
    # A command drops the image's Cmd even without args.
    cfg = container_config(command=["/bin/echo", "from-command"])
    assert run_ok(runner, rootfs, cfg, image=image).strip() == "from-command"


def test_masked_and_readonly_paths(runner: Runner, rootfs: Path) -> None:
    # Only paths this kernel has can be checked (no /proc/kcore here, for one).
    files = [p for p in ("/proc/keys", "/proc/timer_list", "/proc/kcore") if os.path.isfile(p)]
    assert files, "no masked /proc file exists on this host"
    script = (
        f"for f in {' '.join(files)}; do wc -c < $f; done; ls -A /sys/firmware | wc -l; "
        "echo 1 > /proc/sys/kernel/domainname 2>/dev/null; echo sys=$?; cat /etc/secret"
    )
    *sizes, firmware, sysrc, secret = run_ok(runner, rootfs, sh(script)).splitlines()
    assert [s.strip() for s in sizes] == ["0"] * len(files)
    assert (firmware.strip(), sysrc, secret) == ("0", "sys=1", SECRET.strip())
    # The CRI lists replace the defaults: a file of the image can be masked, and a
    # default-masked file is visible again.
    cfg = sh(f"wc -c < /etc/secret; head -c 1 {files[0]} | wc -c")
    cfg.linux.security_context.masked_paths.append("/etc/secret")
    cfg.linux.security_context.readonly_paths.append("/proc/sys")
    secret_size, unmasked = run_ok(runner, rootfs, cfg).splitlines()
    assert (secret_size.strip(), unmasked.strip()) == ("0", "1")


def test_privileged_container(runner: Runner, rootfs: Path, host: HostInfo) -> None:
    cfg = sh(
        "grep -E 'CapEff|Seccomp:' /proc/self/status; wc -c < /proc/keys; ls /dev", privileged=True
    )
    out = run_ok(runner, rootfs, cfg, sandbox=sandbox_config(privileged=True))
    assert capabilities_from_mask(int(status_field(out, "CapEff"), 16)) == set(host.capabilities)
    assert status_field(out, "Seccomp") == "0"
    host_devices = set(os.listdir("/dev"))
    assert "loop-control" not in host_devices or "loop-control" in out.split()


def test_device_with_cgroup_permissions(runner: Runner, rootfs: Path) -> None:
    # A loop device (not among runc's always-allowed nodes) granted read-only: opening it
    # for reading passes the device cgroup, for writing does not; a node made with
    # mknod for another loop device is refused entirely.
    if not os.path.exists("/dev/loop7"):
        pytest.skip("no /dev/loop7 on this host")
    script = (
        "head -c 1 /dev/xvda >/dev/null 2>/tmp/r; cat /tmp/r; echo read; "
        "echo x 2>&1 > /dev/xvda; mknod /tmp/l6 b 7 6 && head -c 1 /tmp/l6 2>&1; true"
    )
    cfg = sh(script)
    cfg.devices.add(host_path="/dev/loop7", container_path="/dev/xvda", permissions="r")
    lines = run_ok(runner, rootfs, cfg).splitlines()
    assert lines[0] == "read"
    assert sum("Operation not permitted" in line for line in lines) == 2


def test_volume_mounts(runner: Runner, rootfs: Path, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("hello\n")
    cfg = sh("echo out > /data/rw/file; cat /data/ro/data; echo x > /data/ro/new; echo ro=$?")
    cfg.mounts.add(host_path=str(rw), container_path="/data/rw")
    cfg.mounts.add(host_path=str(ro), container_path="/data/ro", readonly=True)
    out = run_ok(runner, rootfs, cfg)
    assert out.splitlines()[0] == "hello"
    assert out.splitlines()[-1] == "ro=1"
    assert (rw / "file").read_text() == "out\n"


def test_etc_files_and_rlimits(runner: Runner, rootfs: Path, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost pod\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.10\n")
    out = run_ok(
        runner,
        rootfs,
        sh("cat /etc/hosts /etc/resolv.conf; ulimit -n; ulimit -Hn"),
        hosts_path=str(hosts),
        resolv_conf_path=str(resolv),
    )
    lines = out.splitlines()
    assert lines[:2] == ["127.0.0.1 localhost pod", "nameserver 10.0.0.10"]
    assert lines[2] == "1024"
    assert int(lines[3]) >= 1024


def test_oom_score_adj_is_clamped_not_fatal(runner: Runner, rootfs: Path, host: HostInfo) -> None:
    cfg = sh("cat /proc/self/oom_score_adj")
    cfg.linux.resources.oom_score_adj = -999
    warnings: list[str] = []
    out = run_ok(runner, rootfs, cfg, warnings=warnings)
    assert int(out) == max(-999, host.min_oom_score_adj)
    if host.min_oom_score_adj > -999:
        assert any("oom_score_adj" in w for w in warnings)


# ------------------------------------------------------------------------ cgroups


def test_memory_limit_in_container_cgroup(runner: Runner, rootfs: Path) -> None:
    cfg = sh("echo ready; read x")
    cfg.linux.resources.memory_limit_in_bytes = 64 << 20
    cfg.linux.resources.cpu_shares = 512
    cid = unique_id()
    started = runner.start(spec_for(runner, rootfs, cfg, cid=cid), cid)
    assert started.readline() == b"ready\n"
    layout = cgroups.detect_layout()
    cg = cgroups.cgroup_dir(started.cgroup)
    if layout.mode is cgroups.CgroupMode.V2:
        memory_dir = layout.controller_path("memory", cg)
        assert memory_dir is not None
        assert Path(memory_dir, "memory.max").read_text().strip() == str(64 << 20)
    else:
        memory_dir = layout.controller_path("memory", cg)
        cpu_dir = layout.controller_path("cpu", cg)
        assert memory_dir is not None and cpu_dir is not None
        assert Path(memory_dir, "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        assert Path(cpu_dir, "cpu.shares").read_text().strip() == "512"
    assert started.pid in cgroups.cgroup_pids(cg, layout)


def kubelet_hugepage_limits(config: api_pb2.ContainerConfig) -> None:
    """What the kubelet sends with every container: each of the node's page sizes, at 0."""
    for size in ("2MB", "1GB"):
        config.linux.resources.hugepage_limits.append(
            api_pb2.HugepageLimit(page_size=size, limit=0)
        )


def test_kubelet_hugepage_limits_run_on_any_host(
    runner: Runner, rootfs: Path, host: HostInfo
) -> None:
    cfg = sh("echo ran")
    kubelet_hugepage_limits(cfg)
    cfg.linux.resources.memory_limit_in_bytes = 64 << 20
    warnings: list[str] = []
    assert run_ok(runner, rootfs, cfg, warnings=warnings) == "ran\n"
    has_hugetlb = host.cgroup_controllers is None or "hugetlb" in host.cgroup_controllers
    sizes = host.hugepage_sizes or frozenset()
    if has_hugetlb and {"2MB", "1GB"} <= sizes:
        assert warnings == []
    else:
        # Dropped, and said once: one warning for the container, not one per size.
        assert len(warnings) == 1, warnings
        assert "hugepage_limits" in warnings[0]


def test_hugepage_limit_is_applied_where_the_host_has_hugetlb(
    runner: Runner, rootfs: Path, host: HostInfo
) -> None:
    if host.cgroup_controllers is not None and "hugetlb" not in host.cgroup_controllers:
        pytest.skip("this host has no hugetlb cgroup controller to apply the limit in")
    if "2MB" not in (host.hugepage_sizes or frozenset()):
        pytest.skip("this kernel offers no 2MB huge pages")
    cfg = sh("echo ready; read x")
    cfg.linux.resources.hugepage_limits.append(
        api_pb2.HugepageLimit(page_size="2MB", limit=4 << 21)
    )
    cid = unique_id()
    started = runner.start(spec_for(runner, rootfs, cfg, cid=cid), cid)
    assert started.readline() == b"ready\n"
    layout = cgroups.detect_layout()
    directory = layout.controller_path("hugetlb", cgroups.cgroup_dir(started.cgroup))
    assert directory is not None
    name = (
        "hugetlb.2MB.max" if layout.mode is cgroups.CgroupMode.V2 else "hugetlb.2MB.limit_in_bytes"
    )
    assert Path(directory, name).read_text().strip() == str(4 << 21)


def test_stats_of_a_running_container(runner: Runner, rootfs: Path) -> None:
    # The shell burns CPU only between our line on stdin and its "done": the two samples
    # around that phase must show usage, without sleeping for a guessed duration.
    script = (
        "echo ready; read x; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done; read y"
    )
    cid = unique_id()
    started = runner.start(spec_for(runner, rootfs, sh(script), cid=cid), cid)
    assert started.readline() == b"ready\n"
    cg = cgroups.cgroup_dir(started.cgroup)
    layout = cgroups.detect_layout()
    first = cgroups.read_stats(cg, layout)
    started.write(b"go\n")
    assert started.readline() == b"done\n"
    second = cgroups.read_stats(cg, layout, previous_cpu=first.cpu)
    assert first.cpu is not None and second.cpu is not None
    assert second.cpu.usage_core_ns > first.cpu.usage_core_ns > 0
    assert second.cpu.usage_nano_cores is not None and second.cpu.usage_nano_cores > 0
    assert second.memory is not None
    assert second.memory.usage_bytes > 0
    assert 0 < second.memory.working_set_bytes <= second.memory.usage_bytes
    assert second.memory.rss_bytes > 0
    assert second.memory.page_faults > 0
    assert second.pids is not None and second.pids.current >= 1
    # The pod-level reader aggregates the children (v1 total_* keys).
    parent = cgroups.read_stats(runner.parent, layout)
    assert parent.memory is not None and parent.memory.usage_bytes >= second.memory.rss_bytes
    assert cgroups.oom_kill_count(cg, layout) == 0


def test_oom_kill_is_detected(runner: Runner, rootfs: Path) -> None:
    # dd's 64 MiB buffer is anonymous memory the process touches: in a 16 MiB cgroup
    # without swap the OOM killer must pick dd, and the shell reports its death.
    cfg = sh("dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo status=$?; read x")
    cfg.linux.resources.memory_limit_in_bytes = 16 << 20
    cid = unique_id()
    started = runner.start(spec_for(runner, rootfs, cfg, cid=cid), cid)
    line = started.readline()
    cg = cgroups.cgroup_dir(started.cgroup)
    assert line == b"status=137\n"
    assert cgroups.oom_killed(cg)
    count = cgroups.oom_kill_count(cg)
    assert count is not None and count >= 1


# ------------------------------------------------------------------------ sandbox


@pytest.fixture
def netns() -> Any:
    name = f"rktlet-test-{os.getpid()}-{unique_id('n')}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def ns_inode(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_sandbox_holds_namespaces_a_container_joins(
    runner: Runner, rootfs: Path, tmp_path: Path, netns: str
) -> None:
    pod = sandbox_config(
        hostname="web-0",
        network=api_pb2.POD,
        pid=api_pb2.POD,
        ipc=api_pb2.POD,
        sysctls={
            "kernel.shm_rmid_forced": "1",
            "net.ipv4.ip_unprivileged_port_start": "81",
        },
    )
    pod.linux.security_context.seccomp.profile_type = RUNTIME_DEFAULT
    host_shm = Path("/proc/sys/kernel/shm_rmid_forced").read_text()
    host_port = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    sandbox_id = unique_id("s")
    sandbox_root = prepare_sandbox_rootfs(tmp_path / "pause")
    spec = build_sandbox_spec(
        pod,
        SandboxContext(
            rootfs=sandbox_root,
            sandbox_id=sandbox_id,
            cgroups_path=runner.cgroups_path(sandbox_id),
            network_ns=netns,
        ),
    )
    infra = runner.start(spec, sandbox_id)
    assert Path(f"/proc/{infra.pid}/comm").read_text().strip() == "catatonit"
    assert Path(f"/proc/{infra.pid}/status").read_text().count("Seccomp:\t2") == 1
    assert os.stat(f"/proc/{infra.pid}/ns/net").st_ino == os.stat(netns).st_ino
    for kind in ("ipc", "uts", "pid"):
        assert ns_inode(infra.pid, kind) != ns_inode("self", kind)

    namespaces = pod_namespaces(pod, infra.pid, netns)
    cfg = sh(
        "hostname; cat /proc/sys/kernel/shm_rmid_forced "
        "/proc/sys/net/ipv4/ip_unprivileged_port_start; "
        "for n in ipc uts net pid; do readlink /proc/self/ns/$n; done; "
        "cat /proc/1/comm"
    )
    opts = cfg.linux.security_context.namespace_options
    opts.network, opts.pid, opts.ipc = api_pb2.POD, api_pb2.POD, api_pb2.POD
    out = run_ok(runner, rootfs, cfg, sandbox=pod, namespaces=namespaces)
    lines = out.splitlines()
    assert lines[0] == "web-0"
    assert lines[1:3] == ["1", "81"]
    assert lines[3:7] == [ns_inode(infra.pid, k) for k in ("ipc", "uts", "net", "pid")]
    assert lines[7] == "catatonit"
    # The host's own values are untouched.
    assert Path("/proc/sys/kernel/shm_rmid_forced").read_text() == host_shm
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host_port


def test_sandbox_on_host_network_keeps_host_uts(runner: Runner, tmp_path: Path) -> None:
    pod = sandbox_config(network=api_pb2.NODE, ipc=api_pb2.POD)
    sandbox_id = unique_id("s")
    spec = build_sandbox_spec(
        pod,
        SandboxContext(
            rootfs=prepare_sandbox_rootfs(tmp_path / "pause"),
            sandbox_id=sandbox_id,
            cgroups_path=runner.cgroups_path(sandbox_id),
        ),
    )
    infra = runner.start(spec, sandbox_id)
    assert ns_inode(infra.pid, "net") == ns_inode("self", "net")
    assert ns_inode(infra.pid, "uts") == ns_inode("self", "uts")
    assert ns_inode(infra.pid, "ipc") != ns_inode("self", "ipc")
    status = Path(f"/proc/{infra.pid}/status").read_text()
    assert "Uid:\t65535" in status
    assert capabilities_from_mask(int(status_field(status, "CapEff"), 16)) == set()
