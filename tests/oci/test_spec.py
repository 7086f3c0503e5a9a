"""Pure tests of build_container_spec / build_sandbox_spec: CRI config in, OCI dict out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument
from cri.oci.capabilities import ALL_CAPABILITIES, DEFAULT_CAPABILITIES, resolve_capabilities
from cri.oci.host import HostInfo, hugepage_sizes
from cri.oci.image_config import ImageConfig, parse_stop_signal
from cri.oci.mounts import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, cri_mounts
from cri.oci.resources import check_sysctls, linux_resources
from cri.oci.spec import (
    ContainerContext,
    PodNamespaces,
    SandboxContext,
    build_container_spec,
    build_sandbox_spec,
    pod_namespaces,
    process_args,
)
from tests.oci.oci_helpers import GROUP, PASSWD, container_config, sandbox_config

HOST = HostInfo(
    capabilities=frozenset(ALL_CAPABILITIES),
    apparmor_enabled=False,
    machine="x86_64",
    cgroup_v2=False,
    swap_accounting=True,
    nofile_hard=1 << 20,
    min_oom_score_adj=-1000,
)
# The kubelet sends a zero limit for each of the node's page sizes with every container.
KUBELET_HUGEPAGES = [
    api_pb2.HugepageLimit(page_size="2MB", limit=0),
    api_pb2.HugepageLimit(page_size="1GB", limit=0),
]
# This kind of machine: v1 hierarchies for all but hugetlb (and the net ones).
V1_NO_HUGETLB = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "pids"})
POD_NS = PodNamespaces(
    network="/run/netns/pod", ipc="/proc/42/ns/ipc", uts="/proc/42/ns/uts", pid="/proc/42/ns/pid"
)


@pytest.fixture
def etc_root(tmp_path: Path) -> Path:
    """A root filesystem with only /etc/passwd and /etc/group: enough for spec building."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return tmp_path


def build(
    root: Path,
    config: api_pb2.ContainerConfig | None = None,
    *,
    sandbox: api_pb2.PodSandboxConfig | None = None,
    image: ImageConfig | None = None,
    host: HostInfo = HOST,
    warnings: list[str] | None = None,
    propagation_of: Callable[[str], str] | None = None,
    **ctx: Any,
) -> dict[str, Any]:
    context = ContainerContext(
        rootfs=str(root),
        container_id="c1",
        sandbox_id="s1",
        cgroups_path="/kubepods/pod1/c1",
        namespaces=ctx.pop("namespaces", POD_NS),
        **ctx,
    )
    kwargs: dict[str, Any] = {}
    if propagation_of is not None:
        kwargs["propagation_of"] = propagation_of
    spec = build_container_spec(
        config if config is not None else container_config(command=["true"]),
        sandbox if sandbox is not None else sandbox_config(),
        image if image is not None else ImageConfig(),
        context,
        host=host,
        warn=(warnings if warnings is not None else []).append,
        **kwargs,
    )
    json.dumps(spec)  # always serialisable
    return spec


def ns_types(spec: dict[str, Any]) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}


# ------------------------------------------------------------------------ process args


@pytest.mark.parametrize(
    ("command", "args", "entrypoint", "cmd", "expected"),
    [
        pytest.param([], [], ["/ep"], ["c1", "c2"], ["/ep", "c1", "c2"], id="image-only"),
        pytest.param(["/bin/x"], [], ["/ep"], ["c1"], ["/bin/x"], id="command-drops-image-cmd"),
        pytest.param(["/bin/x"], ["a"], ["/ep"], ["c1"], ["/bin/x", "a"], id="command-and-args"),
        pytest.param([], ["a", "b"], ["/ep"], ["c1"], ["/ep", "a", "b"], id="args-replace-cmd"),
        pytest.param([], ["/bin/y"], [], ["c1"], ["/bin/y"], id="args-without-entrypoint"),
        pytest.param([], [], [], ["/bin/sh"], ["/bin/sh"], id="cmd-without-entrypoint"),
    ],
)
def test_process_args(
    command: list[str], args: list[str], entrypoint: list[str], cmd: list[str], expected: list[str]
) -> None:
    cfg = container_config(*args, command=command)
    image = ImageConfig(entrypoint=tuple(entrypoint), cmd=tuple(cmd))
    assert process_args(cfg, image) == expected


def test_no_command_at_all_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match=r"^command: "):
        process_args(container_config(), ImageConfig())


@pytest.mark.parametrize(
    ("image_env", "envs", "expected"),
    [
        pytest.param(
            (),
            {},
            ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod"],
            id="defaults",
        ),
        pytest.param(
            ("PATH=/bin", "A=image", "B=image"),
            {"A": "config", "C": "x=y"},
            ["PATH=/bin", "HOSTNAME=pod", "A=config", "B=image", "C=x=y"],
            id="config-wins-in-place",
        ),
        pytest.param(("HOSTNAME=img",), {"HOSTNAME": "cfg"}, None, id="hostname-overridable"),
    ],
)
def test_env_merge(
    etc_root: Path, image_env: tuple[str, ...], envs: dict[str, str], expected: list[str] | None
) -> None:
    spec = build(
        etc_root, container_config(command=["x"], envs=envs), image=ImageConfig(env=image_env)
    )
    env = spec["process"]["env"]
    assert env[-1] == "HOME=/root"  # root's home from /etc/passwd
    if expected is not None:
        assert env[:-1] == expected
    else:
        assert "HOSTNAME=cfg" in env and "HOSTNAME=img" not in env


@pytest.mark.parametrize("key", ["", "A=B", "A\0"])
def test_bad_env_key(etc_root: Path, key: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^envs\[0\]\.key"):
        build(etc_root, container_config(command=["x"], envs={key: "v"}))


@pytest.mark.parametrize(
    ("config_dir", "image_dir", "expected"),
    [
        pytest.param("", "", "/", id="default-root"),
        pytest.param("", "/srv", "/srv", id="image"),
        pytest.param("", "srv/app", "/srv/app", id="image-relative"),
        pytest.param("/work/", "/srv", "/work", id="config-wins"),
    ],
)
def test_working_dir(etc_root: Path, config_dir: str, image_dir: str, expected: str) -> None:
    cfg = container_config(command=["x"])
    cfg.working_dir = config_dir
    spec = build(etc_root, cfg, image=ImageConfig(working_dir=image_dir))
    assert spec["process"]["cwd"] == expected


def test_relative_config_working_dir_is_invalid(etc_root: Path) -> None:
    cfg = container_config(command=["x"])
    cfg.working_dir = "rel"
    with pytest.raises(InvalidArgument, match=r"^working_dir: "):
        build(etc_root, cfg)


def test_tty_sets_terminal(etc_root: Path) -> None:
    cfg = container_config(command=["sh"])
    assert build(etc_root, cfg)["process"]["terminal"] is False
    cfg.tty = True
    cfg.stdin = True
    assert build(etc_root, cfg)["process"]["terminal"] is True


# ----------------------------------------------------------------------- capabilities


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        pytest.param([], [], set(DEFAULT_CAPABILITIES), id="default-14"),
        pytest.param(
            ["NET_ADMIN", "cap_sys_time"],
            ["CHOWN"],
            set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN"} | {"CAP_NET_ADMIN", "CAP_SYS_TIME"},
            id="add-and-drop-any-spelling",
        ),
        pytest.param(["ALL"], [], set(ALL_CAPABILITIES), id="add-all"),
        pytest.param(
            ["ALL"], ["SYS_ADMIN"], set(ALL_CAPABILITIES) - {"CAP_SYS_ADMIN"}, id="all-but"
        ),
        pytest.param(["KILL"], ["ALL"], {"CAP_KILL"}, id="drop-all-then-add"),
        pytest.param([], ["all"], set(), id="drop-all"),
        pytest.param(
            ["CHOWN"], ["CHOWN"], set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN"}, id="drop-wins"
        ),
    ],
)
def test_capability_resolution(add: list[str], drop: list[str], expected: set[str]) -> None:
    assert set(resolve_capabilities(add, drop, available=ALL_CAPABILITIES)) == expected


def test_capability_unavailable_on_host_is_dropped_with_warning() -> None:
    warnings: list[str] = []
    available = set(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"}
    caps = resolve_capabilities(["SYS_RESOURCE"], [], available=available, warn=warnings.append)
    assert "CAP_SYS_RESOURCE" not in caps
    assert warnings and "CAP_SYS_RESOURCE" in warnings[0]
    caps = resolve_capabilities(["ALL"], [], available=available)
    assert set(caps) == available


def test_unknown_capability_names_the_field(etc_root: Path) -> None:
    cfg = container_config(command=["x"], add_caps=["KILL", "NOT_A_CAP"])
    with pytest.raises(
        InvalidArgument, match=r"^linux\.security_context\.capabilities\.add_capabilities\[1\]"
    ):
        build(etc_root, cfg)


def test_capability_sets_in_spec(etc_root: Path) -> None:
    cfg = container_config(command=["x"], drop_caps=["ALL"], add_caps=["NET_RAW"])
    cfg.linux.security_context.capabilities.add_ambient_capabilities.append("NET_BIND_SERVICE")
    caps = build(etc_root, cfg)["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert set(caps["bounding"]) == {"CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert caps["ambient"] == caps["inheritable"] == ["CAP_NET_BIND_SERVICE"]


# -------------------------------------------------------------------------- privileged


def test_privileged_container(etc_root: Path) -> None:
    cfg = container_config(command=["x"], privileged=True, seccomp=0)
    spec = build(etc_root, cfg, sandbox=sandbox_config(privileged=True))
    linux = spec["linux"]
    assert set(spec["process"]["capabilities"]["bounding"]) == set(ALL_CAPABILITIES)
    assert "seccomp" not in linux
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"].startswith("/dev/") for d in linux["devices"])
    assert "/dev/null" not in {d["path"] for d in linux["devices"]}
    sysfs = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]


def test_privileged_container_needs_privileged_sandbox(etc_root: Path) -> None:
    cfg = container_config(command=["x"], privileged=True)
    with pytest.raises(InvalidArgument, match=r"^linux\.security_context\.privileged"):
        build(etc_root, cfg)


def test_privileged_uses_only_host_capabilities(etc_root: Path) -> None:
    host = HostInfo(capabilities=frozenset(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"})
    cfg = container_config(command=["x"], privileged=True)
    spec = build(etc_root, cfg, sandbox=sandbox_config(privileged=True), host=host)
    assert "CAP_SYS_RESOURCE" not in spec["process"]["capabilities"]["bounding"]


# --------------------------------------------------------------------------- security


@pytest.mark.parametrize(
    ("setup", "expect_seccomp"),
    [
        pytest.param(lambda sc: None, False, id="unset-is-unconfined"),
        pytest.param(lambda sc: setattr(sc.seccomp, "profile_type", 0), True, id="runtime-default"),
        pytest.param(lambda sc: setattr(sc.seccomp, "profile_type", 1), False, id="unconfined"),
        pytest.param(
            lambda sc: setattr(sc, "seccomp_profile_path", "runtime/default"),
            True,
            id="legacy-default",
        ),
        pytest.param(
            lambda sc: setattr(sc, "seccomp_profile_path", "unconfined"),
            False,
            id="legacy-unconfined",
        ),
    ],
)
def test_seccomp_selection(
    etc_root: Path, setup: Callable[[Any], None], expect_seccomp: bool
) -> None:
    cfg = container_config(command=["x"])
    setup(cfg.linux.security_context)
    spec = build(etc_root, cfg)
    assert ("seccomp" in spec["linux"]) is expect_seccomp
    if expect_seccomp:
        assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_seccomp_localhost(etc_root: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
            }
        )
    )
    cfg = container_config(command=["x"])
    cfg.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Localhost
    cfg.linux.security_context.seccomp.localhost_ref = str(profile)
    seccomp = build(etc_root, cfg)["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ALLOW"
    assert seccomp["syscalls"] == [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(None, "cannot read", id="missing-file"),
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param("[]", "not a JSON object", id="not-object"),
        pytest.param('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction", id="bad-action"),
        pytest.param(
            '{"defaultAction": "SCMP_ACT_ALLOW", '
            '"syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}',
            "names",
            id="empty-names",
        ),
        pytest.param(
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": '
            '"SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
            "index",
            id="bad-arg-index",
        ),
    ],
)
def test_seccomp_localhost_errors_name_the_field(
    etc_root: Path, tmp_path: Path, content: str | None, match: str
) -> None:
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    cfg = container_config(command=["x"])
    cfg.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Localhost
    cfg.linux.security_context.seccomp.localhost_ref = str(path)
    with pytest.raises(InvalidArgument) as info:
        build(etc_root, cfg)
    assert str(info.value).startswith("linux.security_context.seccomp.localhost_ref")
    assert match in str(info.value)


def test_seccomp_localhost_relative_path(etc_root: Path) -> None:
    cfg = container_config(command=["x"])
    cfg.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Localhost
    cfg.linux.security_context.seccomp.localhost_ref = "profiles/x.json"
    with pytest.raises(InvalidArgument, match=r"seccomp\.localhost_ref: .*absolute"):
        build(etc_root, cfg)


@pytest.mark.parametrize(
    ("enabled", "kind", "ref", "default", "profile", "warns"),
    [
        pytest.param(False, 0, "", "rktlet-default", None, True, id="disabled-runtime-default"),
        pytest.param(False, 2, "my-prof", None, None, True, id="disabled-localhost"),
        pytest.param(True, 0, "", "rktlet-default", "rktlet-default", False, id="runtime-default"),
        pytest.param(True, 0, "", None, None, True, id="no-default-loaded"),
        pytest.param(True, 2, "localhost/my-prof", None, "my-prof", False, id="localhost"),
        pytest.param(True, 1, "", "rktlet-default", None, False, id="unconfined"),
    ],
)
def test_apparmor(
    etc_root: Path,
    enabled: bool,
    kind: int,
    ref: str,
    default: str | None,
    profile: str | None,
    warns: bool,
) -> None:
    cfg = container_config(command=["x"])
    cfg.linux.security_context.apparmor.profile_type = kind  # type: ignore[assignment]
    cfg.linux.security_context.apparmor.localhost_ref = ref
    warnings: list[str] = []
    host = HostInfo(apparmor_enabled=enabled)
    spec = build(etc_root, cfg, host=host, warnings=warnings, apparmor_default_profile=default)
    assert spec["process"].get("apparmorProfile") == profile
    assert bool(warnings) is warns
    if warns:
        assert warnings[0].startswith("linux.security_context.apparmor")


def test_apparmor_unset_uses_default_silently(etc_root: Path) -> None:
    warnings: list[str] = []
    host = HostInfo(apparmor_enabled=True)
    spec = build(etc_root, host=host, warnings=warnings, apparmor_default_profile="rd")
    assert spec["process"]["apparmorProfile"] == "rd"
    assert build(etc_root, warnings=warnings)["process"].get("apparmorProfile") is None
    assert warnings == []


def test_apparmor_localhost_without_name(etc_root: Path) -> None:
    cfg = container_config(command=["x"])
    cfg.linux.security_context.apparmor.profile_type = api_pb2.SecurityProfile.Localhost
    with pytest.raises(InvalidArgument, match=r"apparmor\.localhost_ref"):
        build(etc_root, cfg, host=HostInfo(apparmor_enabled=True))


def test_no_new_privs_and_readonly_rootfs(etc_root: Path) -> None:
    cfg = container_config(command=["x"], no_new_privs=True, readonly_rootfs=True)
    spec = build(etc_root, cfg, hosts_path="/h", resolv_conf_path="/r")
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"] == {"path": str(etc_root), "readonly": True}
    files = {m["destination"]: m for m in spec["mounts"] if m["destination"].startswith("/etc")}
    assert set(files) == {"/etc/hosts", "/etc/resolv.conf"}
    assert all("ro" in m["options"] for m in files.values())
    # The daemon may force read-only on its own.
    assert build(etc_root, readonly_rootfs=True)["root"]["readonly"] is True


@pytest.mark.parametrize(
    ("masked", "readonly", "expected_masked", "expected_readonly"),
    [
        pytest.param(
            [], [], list(DEFAULT_MASKED_PATHS), list(DEFAULT_READONLY_PATHS), id="defaults"
        ),
        pytest.param(["/proc/x"], ["/proc/y"], ["/proc/x"], ["/proc/y"], id="overridden"),
    ],
)
def test_masked_and_readonly_paths(
    etc_root: Path,
    masked: list[str],
    readonly: list[str],
    expected_masked: list[str],
    expected_readonly: list[str],
) -> None:
    cfg = container_config(command=["x"], masked_paths=masked, readonly_paths=readonly)
    linux = build(etc_root, cfg)["linux"]
    assert (linux["maskedPaths"], linux["readonlyPaths"]) == (expected_masked, expected_readonly)


def test_relative_masked_path_is_invalid(etc_root: Path) -> None:
    cfg = container_config(command=["x"], masked_paths=["proc/x"])
    with pytest.raises(InvalidArgument, match=r"masked_paths\[0\]"):
        build(etc_root, cfg)


# ------------------------------------------------------------------------------ user


def test_user_in_spec(etc_root: Path) -> None:
    cfg = container_config(command=["x"], run_as_user=1000, supplemental_groups=[5000])
    user = build(etc_root, cfg)["process"]["user"]
    assert user == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 1001, 5000]}


@pytest.mark.parametrize(
    ("security", "image_user", "match"),
    [
        pytest.param(
            {"run_as_username": "ghost"}, "", r"run_as_username: no user 'ghost'", id="name"
        ),
        pytest.param({}, "ghost", r"image config User: no user 'ghost'", id="image-name"),
        pytest.param({}, "app:ghosts", r"image config User: no group 'ghosts'", id="image-group"),
        pytest.param({"run_as_user": -1}, "", r"run_as_user: -1", id="negative-uid"),
        pytest.param({"run_as_user": 1, "run_as_group": 2**32}, "", r"run_as_group", id="big-gid"),
        pytest.param({}, ":5", r"image config User", id="empty-user-part"),
    ],
)
def test_user_errors_name_the_field(
    etc_root: Path, security: dict[str, Any], image_user: str, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        build(
            etc_root,
            container_config(command=["x"], **security),
            image=ImageConfig(user=image_user),
        )


# ---------------------------------------------------------------------------- mounts


def test_standard_mounts(etc_root: Path) -> None:
    spec = build(etc_root)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert list(by_dest)[:7] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert by_dest["/proc"]["type"] == "proc"
    assert by_dest["/dev/shm"]["type"] == "tmpfs"
    assert "ro" in by_dest["/sys"]["options"]
    assert "ro" in by_dest["/sys/fs/cgroup"]["options"]


def test_pod_files_and_shm_are_bind_mounted(etc_root: Path) -> None:
    spec = build(
        etc_root,
        hosts_path="/pod/hosts",
        resolv_conf_path="/pod/resolv.conf",
        hostname_path="/pod/hostname",
        shm_path="/pod/shm",
    )
    binds = {m["destination"]: m["source"] for m in spec["mounts"] if m["type"] == "bind"}
    assert binds == {
        "/dev/shm": "/pod/shm",
        "/etc/hostname": "/pod/hostname",
        "/etc/hosts": "/pod/hosts",
        "/etc/resolv.conf": "/pod/resolv.conf",
    }


def test_volume_mounts_order_options_and_override(etc_root: Path, tmp_path: Path) -> None:
    cfg = container_config(command=["x"])
    for dest, ro in (("/data/inner", False), ("/data", True), ("/etc/hosts", True)):
        cfg.mounts.add(
            host_path=str(tmp_path), container_path=dest, readonly=ro, selinux_relabel=True
        )
    spec = build(etc_root, cfg, hosts_path="/pod/hosts")
    volumes = [m for m in spec["mounts"] if m["source"] == str(tmp_path)]
    assert [m["destination"] for m in volumes] == ["/data", "/data/inner", "/etc/hosts"]
    assert volumes[0]["options"] == ["rbind", "rprivate", "ro"]
    assert volumes[1]["options"] == ["rbind", "rprivate", "rw"]
    # A CRI mount at /etc/hosts replaces the daemon's file.
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/etc/hosts"] == [
        str(tmp_path)
    ]
    assert "rootfsPropagation" not in spec["linux"]


@pytest.mark.parametrize(
    ("propagation", "host_kind", "option", "rootfs", "error"),
    [
        pytest.param(1, "slave", "rslave", "rslave", None, id="host-to-container-on-slave"),
        pytest.param(1, "shared", "rslave", "rslave", None, id="host-to-container-on-shared"),
        pytest.param(1, "private", None, None, "HostToContainer", id="host-to-container-private"),
        pytest.param(2, "shared", "rshared", "rshared", None, id="bidirectional"),
        pytest.param(2, "slave", None, None, "Bidirectional", id="bidirectional-on-slave"),
    ],
)
def test_mount_propagation(
    etc_root: Path,
    tmp_path: Path,
    propagation: int,
    host_kind: str,
    option: str | None,
    rootfs: str | None,
    error: str | None,
) -> None:
    cfg = container_config(command=["x"])
    cfg.mounts.add(host_path=str(tmp_path), container_path="/v", propagation=propagation)
    if error is not None:
        with pytest.raises(InvalidArgument, match=rf"^mounts\[0\]\.propagation: {error}"):
            build(etc_root, cfg, propagation_of=lambda _: host_kind)
        return
    spec = build(etc_root, cfg, propagation_of=lambda _: host_kind)
    volume = next(m for m in spec["mounts"] if m["destination"] == "/v")
    assert volume["options"][1] == option
    assert spec["linux"]["rootfsPropagation"] == rootfs


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        pytest.param(
            {"host_path": "/nonexistent-x", "container_path": "/v"},
            InvalidArgument,
            r"host_path: /nonexistent-x does not exist",
            id="missing-host",
        ),
        pytest.param(
            {"host_path": "rel", "container_path": "/v"},
            InvalidArgument,
            "host_path",
            id="relative-host",
        ),
        pytest.param(
            {"host_path": "/", "container_path": "v"},
            InvalidArgument,
            "container_path",
            id="relative-dest",
        ),
        pytest.param(
            {"host_path": "/", "container_path": "/a/../b"},
            InvalidArgument,
            "container_path",
            id="dotdot",
        ),
        pytest.param(
            {"host_path": "/", "container_path": "/v", "recursive_read_only": True},
            InvalidArgument,
            "recursive_read_only: needs readonly",
            id="rro-not-readonly",
        ),
        pytest.param(
            {
                "host_path": "/",
                "container_path": "/v",
                "readonly": True,
                "recursive_read_only": True,
                "propagation": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
            },
            InvalidArgument,
            "recursive_read_only: needs propagation PROPAGATION_PRIVATE",
            id="rro-propagation",
        ),
        pytest.param(
            {"container_path": "/v", "image": api_pb2.ImageSpec(image="x")},
            FailedPrecondition,
            "image: the image volume was not prepared",
            id="image-volume-unprepared",
        ),
        pytest.param(
            {"container_path": "/v", "host_path": "/", "image": api_pb2.ImageSpec(image="x")},
            InvalidArgument,
            "host_path: must be empty",
            id="image-volume-and-host-path",
        ),
        pytest.param(
            {"container_path": "/v", "host_path": "/", "image_sub_path": "x"},
            InvalidArgument,
            "image_sub_path: only valid with an image",
            id="sub-path-without-image",
        ),
        pytest.param(
            {
                "container_path": "/v",
                "host_path": "/",
                "uidMappings": [api_pb2.IDMapping(host_id=1 << 20, container_id=0, length=10)],
            },
            FailedPrecondition,
            "uidMappings: the idmapped mount was not prepared",
            id="idmap-unprepared",
        ),
    ],
)
def test_bad_mounts(fields: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(
        error, match=rf"^mounts\[0\]\.{match}" if not match.startswith("host_path: /n") else match
    ):
        cri_mounts([api_pb2.Mount(**fields)])


# ---------------------------------------------------------------------------- devices


def test_devices(etc_root: Path) -> None:
    cfg = container_config(command=["x"])
    cfg.devices.add(host_path="/dev/null", container_path="/dev/xnull", permissions="rw")
    cfg.devices.add(host_path="/dev/zero", container_path="", permissions="")
    linux = build(etc_root, cfg)["linux"]
    assert linux["devices"] == [
        {
            "path": "/dev/xnull",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        },
        {
            "path": "/dev/zero",
            "type": "c",
            "major": 1,
            "minor": 5,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        },
    ]
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    ]


@pytest.mark.parametrize(
    ("host_path", "permissions", "match"),
    [
        pytest.param("/dev/null", "rx", r"devices\[0\]\.permissions", id="bad-permissions"),
        pytest.param(
            "/etc/hostname", "r", r"devices\[0\]\.host_path: .* not a device", id="not-device"
        ),
        pytest.param("/dev/nonexistent", "r", r"devices\[0\]\.host_path", id="missing"),
        pytest.param("dev/null", "r", r"devices\[0\]\.host_path", id="relative"),
    ],
)
def test_bad_devices(etc_root: Path, host_path: str, permissions: str, match: str) -> None:
    cfg = container_config(command=["x"])
    cfg.devices.add(host_path=host_path, container_path="/dev/x", permissions=permissions)
    with pytest.raises(InvalidArgument, match=match):
        build(etc_root, cfg)


# -------------------------------------------------------------------------- resources


def test_resources_in_spec(etc_root: Path) -> None:
    cfg = container_config(command=["x"])
    r = cfg.linux.resources
    r.cpu_shares, r.cpu_quota, r.cpu_period = 512, 50000, 100000
    r.cpuset_cpus, r.cpuset_mems = "0-1", "0"
    r.memory_limit_in_bytes = 256 << 20
    r.oom_score_adj = 500
    r.hugepage_limits.add(page_size="2MB", limit=1 << 21)
    spec = build(etc_root, cfg)
    res = spec["linux"]["resources"]
    assert res["cpu"] == {
        "shares": 512,
        "quota": 50000,
        "period": 100000,
        "cpus": "0-1",
        "mems": "0",
    }
    assert res["memory"] == {"limit": 256 << 20, "swap": 256 << 20}
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    assert spec["process"]["oomScoreAdj"] == 500
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod1/c1"


@pytest.mark.parametrize(
    ("fields", "host", "expected", "warns"),
    [
        pytest.param({}, HOST, {}, False, id="nothing-set"),
        pytest.param(
            {"memory_limit_in_bytes": 100, "memory_swap_limit_in_bytes": 300},
            HOST,
            {"memory": {"limit": 100, "swap": 300}},
            False,
            id="swap",
        ),
        pytest.param(
            {"memory_limit_in_bytes": 100, "memory_swap_limit_in_bytes": -1},
            HOST,
            {"memory": {"limit": 100, "swap": -1}},
            False,
            id="unlimited-swap",
        ),
        pytest.param(
            {"memory_limit_in_bytes": 100, "memory_swap_limit_in_bytes": 300},
            HostInfo(swap_accounting=False),
            {"memory": {"limit": 100}},
            True,
            id="no-swap-accounting",
        ),
        pytest.param({"cpu_quota": -1}, HOST, {"cpu": {"quota": -1}}, False, id="unlimited-quota"),
        pytest.param(
            {"hugepage_limits": KUBELET_HUGEPAGES, "memory_limit_in_bytes": 100},
            HostInfo(cgroup_controllers=V1_NO_HUGETLB),
            {"memory": {"limit": 100, "swap": 100}},
            True,
            id="hugetlb-missing-v1-or-hybrid",
        ),
        pytest.param(
            {"hugepage_limits": KUBELET_HUGEPAGES},
            HostInfo(cgroup_v2=True, cgroup_controllers=frozenset({"cpu", "memory", "pids"})),
            {},
            True,
            id="hugetlb-missing-v2",
        ),
        pytest.param(
            {"hugepage_limits": KUBELET_HUGEPAGES},
            HostInfo(
                cgroup_controllers=V1_NO_HUGETLB | {"hugetlb"},
                hugepage_sizes=frozenset({"2MB", "1GB"}),
            ),
            {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 0}]},
            False,
            id="hugetlb-present",
        ),
        pytest.param(
            {"hugepage_limits": KUBELET_HUGEPAGES},
            HostInfo(hugepage_sizes=frozenset({"2MB"})),
            {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]},
            True,
            id="page-size-the-kernel-lacks",
        ),
        pytest.param(
            {"cpu_shares": 2, "cpuset_cpus": "0", "memory_limit_in_bytes": 100},
            HostInfo(cgroup_controllers=frozenset({"cpuset"}), swap_accounting=False),
            {"cpu": {"cpus": "0"}},
            True,
            id="cpu-and-memory-missing",
        ),
        pytest.param({"unified": {"memory.high": "1000"}}, HOST, {}, True, id="unified-on-v1"),
        pytest.param(
            {"unified": {"memory.high": "1000"}},
            HostInfo(cgroup_v2=True),
            {"unified": {"memory.high": "1000"}},
            False,
            id="unified-on-v2",
        ),
    ],
)
def test_linux_resources(
    fields: dict[str, Any], host: HostInfo, expected: dict[str, Any], warns: bool
) -> None:
    warnings: list[str] = []
    res = api_pb2.LinuxContainerResources(**fields)
    assert linux_resources(res, host, warn=warnings.append) == expected
    # Whatever was dropped, and for whatever reasons, the container gets one warning.
    assert len(warnings) == (1 if warns else 0)


def test_dropped_limits_are_named_in_the_warning() -> None:
    warnings: list[str] = []
    res = api_pb2.LinuxContainerResources(hugepage_limits=KUBELET_HUGEPAGES, cpu_shares=2)
    host = HostInfo(cgroup_controllers=frozenset({"memory"}))
    assert linux_resources(res, host, warn=warnings.append) == {}
    assert warnings == [
        "linux.resources: not applied, this host cannot take them: "
        "cpu_shares (no cpu controller); hugepage_limits (no hugetlb controller)"
    ]


def test_hugepage_sizes_are_spelt_as_runc_spells_them(tmp_path: Path) -> None:
    for name in ("hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB", "other"):
        (tmp_path / name).mkdir()
    assert hugepage_sizes(str(tmp_path)) == {"2MB", "1GB", "64KB"}


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param({"cpu_shares": -2}, "cpu_shares", id="negative-shares"),
        pytest.param({"cpu_quota": 10}, "cpu_quota", id="tiny-quota"),
        pytest.param({"cpu_period": 5}, "cpu_period", id="tiny-period"),
        pytest.param({"cpuset_cpus": "0-a"}, "cpuset_cpus", id="bad-cpuset"),
        pytest.param({"memory_limit_in_bytes": -5}, "memory_limit_in_bytes", id="negative-memory"),
        pytest.param(
            {"memory_limit_in_bytes": 300, "memory_swap_limit_in_bytes": 100},
            "memory_swap_limit_in_bytes",
            id="swap-below-memory",
        ),
        pytest.param(
            {"hugepage_limits": [api_pb2.HugepageLimit(page_size="2Mi")]},
            r"hugepage_limits\[0\]\.page_size",
            id="bad-page-size",
        ),
        pytest.param({"unified": {"../x": "1"}}, r"unified\[\.\./x\]", id="bad-unified-key"),
        pytest.param({"oom_score_adj": 1001}, "oom_score_adj", id="oom-range"),
    ],
)
def test_bad_resources(etc_root: Path, fields: dict[str, Any], match: str) -> None:
    cfg = container_config(command=["x"])
    cfg.linux.resources.CopyFrom(api_pb2.LinuxContainerResources(**fields))
    with pytest.raises(InvalidArgument, match=rf"^linux\.resources\.{match}"):
        build(etc_root, cfg)


def test_oom_score_adj_clamped_to_host_minimum(etc_root: Path) -> None:
    cfg = container_config(command=["x"])
    cfg.linux.resources.oom_score_adj = -997
    warnings: list[str] = []
    spec = build(etc_root, cfg, host=HostInfo(min_oom_score_adj=0), warnings=warnings)
    assert spec["process"]["oomScoreAdj"] == 0
    assert "CAP_SYS_RESOURCE" in warnings[0]


def test_rlimits_clamped_to_host(etc_root: Path) -> None:
    assert build(etc_root)["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 524288, "soft": 1024}
    ]
    spec = build(etc_root, host=HostInfo(nofile_hard=20000))
    assert spec["process"]["rlimits"][0]["hard"] == 20000


# --------------------------------------------------------------------------- sysctls


@pytest.mark.parametrize(
    ("name", "host_net", "host_ipc", "ok"),
    [
        pytest.param("net.ipv4.ip_forward", False, False, True, id="net"),
        pytest.param("net/ipv4/ip_forward", False, False, True, id="slash-form"),
        pytest.param("net.ipv4.ip_forward", True, False, False, id="net-on-host-network"),
        pytest.param("kernel.shm_rmid_forced", False, False, True, id="ipc"),
        pytest.param("fs.mqueue.msg_max", False, True, False, id="ipc-on-host-ipc"),
        pytest.param("kernel.domainname", False, False, True, id="uts"),
        pytest.param("vm.swappiness", False, False, False, id="not-namespaced"),
        pytest.param("net.ipv4.../../x", False, False, False, id="traversal"),
    ],
)
def test_sysctls(name: str, host_net: bool, host_ipc: bool, ok: bool) -> None:
    sysctls = {name: "1"}
    if ok:
        out = check_sysctls(sysctls, host_network=host_net, host_ipc=host_ipc, host_uts=host_net)
        assert list(out.values()) == ["1"]
        assert "/" not in next(iter(out))
    else:
        with pytest.raises(
            InvalidArgument, match=rf"^linux\.sysctls\[{name.replace('.', '[.]')}\]"
        ):
            check_sysctls(sysctls, host_network=host_net, host_ipc=host_ipc, host_uts=host_net)


def test_container_gets_sandbox_sysctls(etc_root: Path) -> None:
    sandbox = sandbox_config(network=api_pb2.POD, sysctls={"net.core.somaxconn": "1024"})
    assert build(etc_root, sandbox=sandbox)["linux"]["sysctl"] == {"net.core.somaxconn": "1024"}


# ------------------------------------------------------------------------- namespaces


def _with_ns(network: int, pid: int, ipc: int, target: str = "") -> api_pb2.ContainerConfig:
    cfg = container_config(command=["x"])
    opts = cfg.linux.security_context.namespace_options
    opts.network, opts.pid, opts.ipc, opts.target_id = network, pid, ipc, target  # type: ignore[assignment]
    return cfg


@pytest.mark.parametrize(
    ("network", "pid", "ipc", "expected"),
    [
        pytest.param(
            api_pb2.POD,
            api_pb2.POD,
            api_pb2.POD,
            {
                "mount": None,
                "network": "/run/netns/pod",
                "ipc": "/proc/42/ns/ipc",
                "uts": "/proc/42/ns/uts",
                "pid": "/proc/42/ns/pid",
            },
            id="all-pod",
        ),
        pytest.param(
            api_pb2.POD,
            api_pb2.CONTAINER,
            api_pb2.POD,
            {
                "mount": None,
                "network": "/run/netns/pod",
                "ipc": "/proc/42/ns/ipc",
                "uts": "/proc/42/ns/uts",
                "pid": None,
            },
            id="own-pid",
        ),
        pytest.param(
            api_pb2.NODE, api_pb2.NODE, api_pb2.NODE, {"mount": None}, id="host-everything"
        ),
        pytest.param(
            api_pb2.POD,
            api_pb2.TARGET,
            api_pb2.POD,
            {
                "mount": None,
                "network": "/run/netns/pod",
                "ipc": "/proc/42/ns/ipc",
                "uts": "/proc/42/ns/uts",
                "pid": "/proc/77/ns/pid",
            },
            id="target-pid",
        ),
    ],
)
def test_container_namespaces(
    etc_root: Path, network: int, pid: int, ipc: int, expected: dict[str, str | None]
) -> None:
    spec = build(
        etc_root, _with_ns(network, pid, ipc, "other"), target_pid_namespace="/proc/77/ns/pid"
    )
    assert ns_types(spec) == expected
    assert "hostname" not in spec


def test_namespace_errors(etc_root: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"namespace_options\.pid: POD"):
        build(etc_root, _with_ns(api_pb2.POD, api_pb2.POD, api_pb2.POD), namespaces=PodNamespaces())
    with pytest.raises(InvalidArgument, match=r"namespace_options\.target_id"):
        build(etc_root, _with_ns(api_pb2.POD, api_pb2.TARGET, api_pb2.POD))
    cfg = _with_ns(api_pb2.POD, api_pb2.POD, api_pb2.POD)
    cfg.linux.security_context.namespace_options.userns_options.mode = api_pb2.POD
    with pytest.raises(InvalidArgument, match="userns_options: the pod sandbox does not have"):
        build(etc_root, cfg)


def test_cgroup_namespace_on_v2(etc_root: Path) -> None:
    assert "cgroup" in ns_types(build(etc_root, host=HostInfo(cgroup_v2=True)))
    assert "cgroup" not in ns_types(build(etc_root))


def test_pod_namespaces() -> None:
    pod = sandbox_config(network=api_pb2.POD, pid=api_pb2.POD, ipc=api_pb2.POD)
    assert pod_namespaces(pod, 42, "/run/netns/x") == PodNamespaces(
        "/run/netns/x", "/proc/42/ns/ipc", "/proc/42/ns/uts", "/proc/42/ns/pid"
    )
    host = sandbox_config(network=api_pb2.NODE, pid=api_pb2.CONTAINER, ipc=api_pb2.NODE)
    assert pod_namespaces(host, 42, "/run/netns/x") == PodNamespaces()


# ------------------------------------------------------------------------ annotations


def test_annotations(etc_root: Path) -> None:
    cfg = container_config(command=["x"], name="web")
    cfg.annotations["user"] = "not passed through"
    spec = build(
        etc_root,
        cfg,
        annotations={"io.kubernetes.cri.container-type": "spoof", "extra": "1"},
        image_name="docker.io/library/busybox:latest",
    )
    assert spec["annotations"] == {
        "extra": "1",
        "io.kubernetes.cri.sandbox-id": "s1",
        "io.kubernetes.cri.sandbox-name": "pod",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "web",
        "io.kubernetes.cri.image-name": "docker.io/library/busybox:latest",
    }
    assert build(etc_root, cfg)["annotations"]["io.kubernetes.cri.image-name"] == (
        "rktlet/busybox:latest"
    )


def test_missing_container_name(etc_root: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^metadata\.name"):
        build(etc_root, container_config(command=["x"], name=""))


# ---------------------------------------------------------------------------- sandbox


def sandbox_spec(pod: api_pb2.PodSandboxConfig, **kw: Any) -> dict[str, Any]:
    ctx = SandboxContext(
        rootfs="/var/lib/rktlet/pause",
        sandbox_id="0123456789abcdef",
        cgroups_path="/kubepods/pod1/0123456789abcdef",
        network_ns=kw.pop("network_ns", "/run/netns/pod1"),
        **kw,
    )
    spec = build_sandbox_spec(pod, ctx, host=HOST, warn=lambda _: None)
    json.dumps(spec)
    return spec


def test_sandbox_spec_pod_network() -> None:
    pod = sandbox_config(
        hostname="web-0",
        network=api_pb2.POD,
        pid=api_pb2.POD,
        sysctls={"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
    )
    spec = sandbox_spec(pod, shm_path="/run/rktlet/pod1/shm")
    assert spec["process"]["args"] == ["/catatonit", "-P"]
    assert spec["process"]["user"] == {"uid": 65535, "gid": 65535, "additionalGids": [65535]}
    assert spec["process"]["capabilities"]["bounding"] == []
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["oomScoreAdj"] == -998
    assert spec["root"] == {"path": "/var/lib/rktlet/pause", "readonly": True}
    assert spec["hostname"] == "web-0"
    assert ns_types(spec) == {
        "mount": None,
        "network": "/run/netns/pod1",
        "uts": None,
        "ipc": None,
        "pid": None,
    }
    assert spec["linux"]["sysctl"] == {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"}
    assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-log-directory"] == pod.log_directory
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert shm["source"] == "/run/rktlet/pod1/shm"
    assert "seccomp" not in spec["linux"]


def test_sandbox_spec_host_namespaces() -> None:
    pod = sandbox_config(network=api_pb2.NODE, pid=api_pb2.NODE, ipc=api_pb2.NODE)
    spec = sandbox_spec(pod, network_ns=None)
    assert ns_types(spec) == {"mount": None}
    assert "hostname" not in spec


def test_sandbox_spec_errors() -> None:
    with pytest.raises(InvalidArgument, match=r"namespace_options\.network"):
        sandbox_spec(sandbox_config(network=api_pb2.POD), network_ns=None)
    with pytest.raises(InvalidArgument, match=r"^linux\.sysctls\[net\.ipv4\.ip_forward\]"):
        sandbox_spec(sandbox_config(network=api_pb2.NODE, sysctls={"net.ipv4.ip_forward": "1"}))
    with pytest.raises(InvalidArgument, match=r"^hostname"):
        sandbox_spec(sandbox_config(network=api_pb2.POD, hostname="bad_name!"))


def test_empty_sandbox_hostname_keeps_the_nodes() -> None:
    # No "hostname": the pod's UTS namespace starts with the node's name, and a pod
    # name that is no host name (crictl's are over 64 characters) is not an error.
    pod = sandbox_config(network=api_pb2.POD, hostname="")
    pod.metadata.name = "create-PodSandbox-for-container-" + "0c8e4b1a-4a43-4e61-9f1b-7b1b2f2e0a9d"
    assert "hostname" not in sandbox_spec(pod)


def test_sandbox_run_as_user_and_seccomp() -> None:
    pod = sandbox_config(network=api_pb2.POD)
    pod.linux.security_context.run_as_user.value = 1000
    pod.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    spec = sandbox_spec(pod)
    assert spec["process"]["user"]["uid"] == 1000
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


# ----------------------------------------------------------------------- image config


def test_image_config_from_json() -> None:
    doc = {
        "architecture": "amd64",
        "config": {
            "Entrypoint": ["/ep"],
            "Cmd": None,
            "Env": ["A=1"],
            "WorkingDir": "/w",
            "User": "app:app",
            "StopSignal": "SIGQUIT",
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    assert ImageConfig.from_json(doc) == ImageConfig(
        ("/ep",), (), ("A=1",), "/w", "app:app", "SIGQUIT"
    )
    assert ImageConfig.from_json({}) == ImageConfig()


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        pytest.param({"config": {"Cmd": "sh"}}, "config.Cmd", id="cmd-string"),
        pytest.param({"config": {"Env": [1]}}, "config.Env", id="env-int"),
        pytest.param({"config": {"User": 5}}, "config.User", id="user-int"),
        pytest.param({"config": []}, "config", id="config-list"),
    ],
)
def test_bad_image_config(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^image config {match}"):
        ImageConfig.from_json(doc)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("", None),
        ("SIGTERM", 15),
        ("term", 15),
        ("9", 9),
        ("SIGRTMIN+3", 37),
        ("RTMAX-1", 63),
    ],
)
def test_stop_signal(text: str, number: int | None) -> None:
    assert parse_stop_signal(text) == number


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "99", "SIGRTMIN+99"])
def test_bad_stop_signal(text: str) -> None:
    with pytest.raises(InvalidArgument, match="StopSignal"):
        parse_stop_signal(text)
