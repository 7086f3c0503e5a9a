"""User resolution against a container rootfs, and symlink-safe reads inside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cri.errors import InvalidArgument
from cri.oci._securepath import read_file_in_root
from cri.oci.user import (
    GroupEntry,
    PasswdEntry,
    ResolvedUser,
    parse_group,
    parse_passwd,
    resolve_user,
)
from tests.oci.oci_helpers import GROUP, PASSWD

EVIL_PASSWD = "app:x:0:0:pwned:/:/bin/sh\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text(PASSWD)
    (r / "etc/group").write_text(GROUP)
    return r


def test_parse_passwd_skips_malformed_lines() -> None:
    text = (
        "# comment\n\nroot:x:0:0:root:/root:/bin/sh\nbad\nx:x:notanumber:0::\n:x:1:1::\n"
        "short:x:7:8\n"
    )
    assert parse_passwd(text) == [
        PasswdEntry("root", 0, 0, "/root", "/bin/sh"),
        PasswdEntry("short", 7, 8, "", ""),
    ]


def test_parse_group() -> None:
    text = "wheel:x:10:a, b,,c\nempty:x:11:\nnomembers:x:12\nbad:x:zz:a\n"
    assert parse_group(text) == [
        GroupEntry("wheel", 10, ("a", "b", "c")),
        GroupEntry("empty", 11, ()),
        GroupEntry("nomembers", 12, ()),
    ]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, ResolvedUser(0, 0, (0, 1002), "root", "/root"), id="default-root"),
        pytest.param(
            {"run_as_user": 1000},
            ResolvedUser(1000, 1000, (1000, 1001), "app", "/home/app"),
            id="uid",
        ),
        pytest.param(
            {"run_as_username": "app"},
            ResolvedUser(1000, 1000, (1000, 1001), "app", "/home/app"),
            id="username",
        ),
        pytest.param(
            {"image_user": "nobody"},
            ResolvedUser(65534, 65534, (65534, 1002), "nobody", "/nonexistent"),
            id="image-name",
        ),
        pytest.param(
            {"image_user": "1000:other"},
            ResolvedUser(1000, 1002, (1002, 1001), "app", "/home/app"),
            id="image-uid-groupname",
        ),
        pytest.param({"image_user": "5000"}, ResolvedUser(5000, 0, (0,)), id="unknown-uid"),
        pytest.param(
            {"image_user": "5000:6000", "supplemental_groups": [7, 6000]},
            ResolvedUser(5000, 6000, (6000, 7)),
            id="unknown-uid-gid",
        ),
        pytest.param(
            {"run_as_user": 1000, "run_as_group": 0, "supplemental_groups_policy": 1},
            ResolvedUser(1000, 0, (0,), "app", "/home/app"),
            id="strict",
        ),
        pytest.param(
            {"run_as_username": "app", "run_as_user": 0},
            ResolvedUser(0, 0, (0, 1002), "root", "/root"),
            id="uid-beats-username",
        ),
    ],
)
def test_resolve_user(root: Path, kwargs: dict[str, object], expected: ResolvedUser) -> None:
    assert resolve_user(root, **kwargs) == expected  # type: ignore[arg-type]


def test_username_with_group_is_rejected(root: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"run_as_username: 'app:app'"):
        resolve_user(root, run_as_username="app:app")


def test_missing_passwd_is_fine_for_numeric_ids(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, run_as_user=7) == ResolvedUser(7, 0, (0,))
    with pytest.raises(InvalidArgument, match="no user 'app'"):
        resolve_user(tmp_path, image_user="app")


# ----------------------------------------------------- hostile root filesystems


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host passwd outside the rootfs that would make 'app' uid 0 if it were read."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "passwd").write_text(EVIL_PASSWD)
    return path


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("../../outside/passwd", id="relative-escape"),
        pytest.param("/../../../../outside/passwd", id="absolute-escape"),
        pytest.param("/etc/../../../outside/passwd", id="dotdot-via-etc"),
    ],
)
def test_passwd_symlink_cannot_leave_rootfs(root: Path, outside: Path, target: str) -> None:
    os.unlink(root / "etc/passwd")
    os.symlink(target, root / "etc/passwd")
    assert read_file_in_root(root, "/etc/passwd") is None
    with pytest.raises(InvalidArgument, match="no user 'app'"):
        resolve_user(root, run_as_username="app")


def test_etc_symlinked_out_is_resolved_inside(root: Path, outside: Path) -> None:
    # /etc -> /../outside would be the host's directory if followed naively; inside the
    # root it means <root>/outside, which here is the image's own copy.
    os.rename(root / "etc", root / "real-etc")
    os.symlink("/../../outside", root / "etc")
    (root / "outside").mkdir()
    (root / "outside/passwd").write_text(PASSWD)
    user = resolve_user(root, run_as_username="app")
    assert (user.uid, user.gid) == (1000, 1000)


def test_absolute_symlink_inside_rootfs_is_followed(root: Path) -> None:
    os.rename(root / "etc/passwd", root / "etc/passwd.real")
    os.symlink("/etc/passwd.real", root / "etc/passwd")
    assert resolve_user(root, run_as_username="app").uid == 1000


def test_symlink_loop_is_an_error(root: Path) -> None:
    os.unlink(root / "etc/passwd")
    os.symlink("/etc/passwd", root / "etc/passwd")
    with pytest.raises(InvalidArgument, match="cannot read /etc/passwd"):
        resolve_user(root, run_as_username="app")


def test_passwd_fifo_is_refused_without_blocking(root: Path) -> None:
    os.unlink(root / "etc/passwd")
    os.mkfifo(root / "etc/passwd")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        resolve_user(root, run_as_username="app")


def test_passwd_directory_is_refused(root: Path) -> None:
    os.unlink(root / "etc/passwd")
    (root / "etc/passwd").mkdir()
    with pytest.raises(InvalidArgument, match="cannot read /etc/passwd"):
        resolve_user(root, run_as_username="app")


def test_path_through_a_file_is_not_found_or_error(root: Path) -> None:
    with pytest.raises(OSError):
        read_file_in_root(root, "/etc/passwd/x")


def test_huge_passwd_is_refused(root: Path) -> None:
    with open(root / "etc/passwd", "wb") as f:
        f.truncate(5 << 20)
    with pytest.raises(InvalidArgument, match="larger than"):
        resolve_user(root, run_as_username="app")
