"""User namespaces in specs: the kubelet's mappings checked, and runc told to join the pod's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument
from cri.oci.image_config import ImageConfig
from cri.oci.spec import (
    ContainerContext,
    PodNamespaces,
    SandboxContext,
    build_container_spec,
    build_sandbox_spec,
)
from cri.oci.userns import IdMap, UsernsConfig, from_cri, mount_maps
from tests.oci.oci_helpers import container_config, sandbox_config
from tests.oci.test_spec import HOST, etc_root

__all__ = ["etc_root"]  # the fixture, shared with test_spec

BASE = 1 << 20
USERNS = UsernsConfig(uids=(IdMap(0, BASE, 65536),), gids=(IdMap(0, BASE, 65536),))
PIN = "/run/rktlet/userns/pod1"


def _options(mode: int, uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]]) -> Any:
    opts = api_pb2.NamespaceOption()
    opts.userns_options.mode = mode  # type: ignore[assignment]
    for c, h, n in uids:
        opts.userns_options.uids.add(container_id=c, host_id=h, length=n)
    for c, h, n in gids:
        opts.userns_options.gids.add(container_id=c, host_id=h, length=n)
    return opts


def test_from_cri_pod_mode() -> None:
    cfg = from_cri(_options(api_pb2.POD, [(0, BASE, 65536)], [(0, BASE, 65536)]), "ns")
    assert cfg == USERNS
    assert (cfg.root_uid, cfg.root_gid) == (BASE, BASE)
    assert cfg.host_uid(1000) == BASE + 1000 and cfg.host_uid(65536) is None
    assert cfg.oci()["uidMappings"] == [{"containerID": 0, "hostID": BASE, "size": 65536}]
    assert UsernsConfig.from_json(cfg.to_json()) == cfg
    assert UsernsConfig.map_file(cfg.uids) == f"0 {BASE} 65536\n"


def test_from_cri_node_or_unset_is_none() -> None:
    assert from_cri(api_pb2.NamespaceOption(), "ns") is None
    assert from_cri(_options(api_pb2.NODE, [], []), "ns") is None


@pytest.mark.parametrize(
    ("mode", "uids", "gids", "match"),
    [
        pytest.param(api_pb2.NODE, [(0, BASE, 1)], [], "only valid with mode POD", id="node-maps"),
        pytest.param(api_pb2.CONTAINER, [(0, BASE, 1)], [(0, BASE, 1)], "CONTAINER", id="mode"),
        pytest.param(api_pb2.POD, [], [(0, BASE, 1)], r"uids: a user namespace", id="no-uids"),
        pytest.param(api_pb2.POD, [(0, BASE, 1)], [], r"gids: a user namespace", id="no-gids"),
        pytest.param(api_pb2.POD, [(0, BASE, 0)], [(0, BASE, 1)], r"uids\[0\].length", id="0"),
        pytest.param(api_pb2.POD, [(1, BASE, 5)], [(0, BASE, 1)], "id 0", id="root-unmapped"),
        pytest.param(api_pb2.POD, [(0, 0, 5)], [(0, BASE, 1)], "host id 0", id="host-root"),
        pytest.param(
            api_pb2.POD,
            [(0, BASE, 10), (5, BASE + 100, 10)],
            [(0, BASE, 1)],
            "container id ranges overlap",
            id="overlap",
        ),
        pytest.param(
            api_pb2.POD, [(0, 2**32 - 10, 20)], [(0, BASE, 1)], "overflows", id="overflow"
        ),
    ],
)
def test_from_cri_rejects(
    mode: int, uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        from_cri(_options(mode, uids, gids), "ns")


def test_mount_maps() -> None:
    mount = api_pb2.Mount(container_path="/v", host_path="/x")
    assert mount_maps(mount, "mounts[0]") is None
    mount.uidMappings.add(container_id=0, host_id=BASE, length=65536)
    mount.gidMappings.add(container_id=0, host_id=BASE, length=65536)
    assert mount_maps(mount, "mounts[0]") == USERNS


# ------------------------------------------------------------------------------ specs


def _pod() -> api_pb2.PodSandboxConfig:
    pod = sandbox_config(network=api_pb2.POD, pid=api_pb2.CONTAINER, ipc=api_pb2.POD)
    pod.linux.security_context.namespace_options.CopyFrom(
        _options(api_pb2.POD, [(0, BASE, 65536)], [(0, BASE, 65536)])
    )
    return pod


def _container(root: Path, config: api_pb2.ContainerConfig, **ctx: Any) -> dict[str, Any]:
    context = ContainerContext(
        rootfs=str(root),
        container_id="c1",
        sandbox_id="s1",
        cgroups_path="/kubepods/pod1/c1",
        namespaces=PodNamespaces(network="/run/netns/pod", ipc="/proc/4/ns/ipc", user=PIN),
        **ctx,
    )
    return build_container_spec(config, _pod(), _image(), context, host=HOST)


def _image() -> ImageConfig:
    return ImageConfig()


def test_container_joins_pod_userns(etc_root: Path) -> None:
    spec = _container(etc_root, container_config(command=["id"]), userns=USERNS)
    assert {"type": "user", "path": PIN} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": BASE, "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": BASE, "size": 65536}]


def test_container_user_must_be_mapped(etc_root: Path) -> None:
    cfg = container_config(command=["id"])
    cfg.linux.security_context.run_as_user.value = 70000
    with pytest.raises(InvalidArgument, match="run_as_user: uid 70000 is not mapped"):
        _container(etc_root, cfg, userns=USERNS)
    cfg = container_config(command=["id"])
    cfg.linux.security_context.supplemental_groups.append(99999)
    with pytest.raises(InvalidArgument, match="gid 99999 is not mapped"):
        _container(etc_root, cfg, userns=USERNS)


def test_privileged_container_refused_in_userns_pod(etc_root: Path) -> None:
    cfg = container_config(command=["id"])
    cfg.linux.security_context.privileged = True
    pod = _pod()
    pod.linux.security_context.privileged = True
    ctx = ContainerContext(
        rootfs=str(etc_root),
        container_id="c1",
        sandbox_id="s1",
        cgroups_path="/x/c1",
        namespaces=PodNamespaces(user=PIN),
        userns=USERNS,
    )
    with pytest.raises(InvalidArgument, match="privileged: not allowed"):
        build_container_spec(cfg, pod, _image(), ctx, host=HOST)


def _sandbox(pod: api_pb2.PodSandboxConfig, **kw: Any) -> dict[str, Any]:
    ctx = SandboxContext(
        rootfs="/var/lib/rktlet/pause",
        sandbox_id="0123456789abcdef",
        cgroups_path="/kubepods/pod1/x",
        network_ns="/run/netns/pod1",
        **kw,
    )
    return build_sandbox_spec(pod, ctx, host=HOST, warn=lambda _: None)


def test_sandbox_creates_namespaces_inside_the_pod_userns() -> None:
    spec = _sandbox(_pod(), userns=USERNS, userns_path=PIN)
    assert {"type": "user", "path": PIN} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"][0]["hostID"] == BASE
    assert spec["process"]["user"]["uid"] == 65535  # mapped: the usual pause user


def test_sandbox_user_falls_back_to_pod_root_when_65535_is_unmapped() -> None:
    small = UsernsConfig(uids=(IdMap(0, BASE, 1000),), gids=(IdMap(0, BASE, 1000),))
    spec = _sandbox(_pod(), userns=small, userns_path=PIN)
    assert (spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]) == (0, 0)


def test_sandbox_userns_requested_but_not_prepared() -> None:
    with pytest.raises(FailedPrecondition, match="userns_options: the user namespace was not"):
        _sandbox(_pod())
