"""Log files are opened beneath the pod log directory, never through a symlink."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from iottymux import beneath
from iottymux.logwriter import open_log


@pytest.fixture(params=["openat2", "nofollow"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both the openat2 path and the O_NOFOLLOW walk of older kernels."""
    saved = beneath._openat2
    beneath._openat2 = None if request.param == "openat2" else False
    try:
        yield request.param
    finally:
        beneath._openat2 = saved


def _append(root: Path, relative: str) -> None:
    fd, _made = open_log(str(root / relative), str(root))
    try:
        os.write(fd, b"line\n")
    finally:
        os.close(fd)


def test_nested_paths_are_created(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "pod"
    _append(root, "ctr/0.log")
    _append(root, "ctr/0.log")
    assert (root / "ctr" / "0.log").read_bytes() == b"line\nline\n"
    assert (root / "ctr" / "0.log").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("where", ["file", "dir", "dangling"])
def test_symlinks_below_the_root_are_refused(tmp_path: Path, mode: str, where: str) -> None:
    root = tmp_path / "pod"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "ctr").mkdir(parents=True)
    if where == "file":
        (outside / "target").write_bytes(b"")
        (root / "ctr" / "0.log").symlink_to(outside / "target")
    elif where == "dir":
        (root / "ctr").rmdir()
        (root / "ctr").symlink_to(outside)
    else:
        (root / "ctr" / "0.log").symlink_to(outside / "created-through-link")
    with pytest.raises(OSError) as err:
        _append(root, "ctr/0.log")
    assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert [p.read_bytes() for p in outside.iterdir()] in ([], [b""])


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "dir/", "a//b", "./a"])
def test_paths_that_could_leave_the_root_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        beneath.split_beneath(bad)


def test_a_path_outside_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError) as err:
        open_log(str(tmp_path / "elsewhere.log"), str(tmp_path / "pod"))
    assert err.value.errno == errno.EINVAL
