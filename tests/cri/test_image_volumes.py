"""Image volumes (``Mount.image``) with real runc: two images, sub paths, removal guard."""

from __future__ import annotations

import grpc
import pytest

from cri.api import api_pb2
from tests.cri.conftest import Daemon

VOLUME_A = "docker.io/rktlet/volume-a:latest"
VOLUME_B = "docker.io/rktlet/volume-b:latest"


def _image_id(daemon: Daemon, ref: str) -> str:
    status = daemon.images.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    )
    return str(status.image.id)


def _volume(path: str, image: str, sub_path: str = "") -> api_pb2.Mount:
    return api_pb2.Mount(
        container_path=path, image=api_pb2.ImageSpec(image=image), image_sub_path=sub_path
    )


def _exec(daemon: Daemon, container: str, script: str) -> tuple[int, str]:
    reply = daemon.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=container, cmd=["sh", "-c", script], timeout=30)
    )
    return reply.exit_code, (reply.stdout + reply.stderr).decode()


def _create(daemon: Daemon, name: str, mounts: list[api_pb2.Mount]) -> tuple[str, str]:
    pod_id, pod_config = daemon.run_pod(name)
    config = daemon.container_config(name, "busybox", ["sleep", "3600"])
    config.mounts.extend(mounts)
    return pod_id, daemon.run_container(pod_id, pod_config, config)


def test_two_images_with_sub_paths(daemon: Daemon) -> None:
    id_b = _image_id(daemon, VOLUME_B)
    mounts = [
        _volume("/a", VOLUME_A),
        _volume("/b", id_b),  # by id, as the kubelet passes PullImage's image_ref
        _volume("/inner", VOLUME_A, "sub"),
        _volume("/deep", VOLUME_B, "nested/dir"),
        _volume("/one-file", VOLUME_A, "sub/inner.txt"),
    ]
    _, container = _create(daemon, "imgvol", mounts)
    code, out = _exec(
        daemon,
        container,
        "cat /a/a.txt /b/b.txt /b/nested/dir/file /inner/inner.txt /deep/file /one-file",
    )
    assert code == 0, out
    assert out.splitlines() == [
        "from volume-a",
        "from volume-b",
        "deep",
        "inner of volume-a",
        "deep",
        "inner of volume-a",
    ]
    # Read-only, whatever the root user tries.
    code, out = _exec(daemon, container, "touch /a/new /deep/new")
    assert code == 1
    assert out.count("Read-only file system") == 2, out
    # ContainerStatus names each volume's image (by id) and what was asked for.
    status = daemon.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container)
    ).status
    images = {m.container_path: m.image for m in status.mounts}
    assert images["/a"].image == _image_id(daemon, VOLUME_A)
    assert images["/a"].user_specified_image == VOLUME_A
    assert images["/b"].image == id_b
    assert [m.image_sub_path for m in status.mounts][2:4] == ["sub", "nested/dir"]


def test_remove_image_refused_while_mounted(daemon: Daemon) -> None:
    _, container = _create(daemon, "imgvol-rm", [_volume("/a", VOLUME_A)])
    with pytest.raises(grpc.RpcError) as info:
        daemon.images.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=VOLUME_A))
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert container in str(info.value.details())
    # Stopped is still in use; removed is not.
    daemon.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container))
    with pytest.raises(grpc.RpcError):
        daemon.images.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=_image_id(daemon, VOLUME_A)))
        )
    daemon.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container))
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=VOLUME_A)))
    status = daemon.images.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=VOLUME_A))
    )
    assert not status.HasField("image")


@pytest.mark.parametrize(
    ("mount", "code", "message"),
    [
        pytest.param(
            _volume("/x", VOLUME_A, "missing"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mounts[0].image_sub_path: 'missing' is not in the image",
            id="missing-sub-path",
        ),
        pytest.param(
            # The symlink points at ../../../etc: inside the image that is /etc, absent.
            _volume("/x", VOLUME_A, "escape"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mounts[0].image_sub_path: 'escape' is not in the image",
            id="symlink-stays-inside",
        ),
        pytest.param(
            _volume("/x", VOLUME_A, "../a.txt"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no '..'",
            id="dotdot",
        ),
        pytest.param(
            _volume("/x", "docker.io/rktlet/absent:latest"),
            grpc.StatusCode.NOT_FOUND,
            "mounts[0].image.image",
            id="unknown-image",
        ),
    ],
)
def test_bad_image_volumes_leave_nothing(
    daemon: Daemon, mount: api_pb2.Mount, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _create(daemon, "imgvol-bad", [_volume("/ok", VOLUME_B), mount])
    assert info.value.code() == code
    assert message.replace("mounts[0]", "mounts[1]") in str(info.value.details())
    assert not daemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert not any((daemon.root / "rootfs").iterdir())
    with open("/proc/self/mountinfo") as f:
        assert str(daemon.root / "rootfs") not in f.read()
    # The image of the other volume is free again.
    daemon.images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=VOLUME_B)))
