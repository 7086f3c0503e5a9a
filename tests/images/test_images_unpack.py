"""Layer unpacking: real tar files in, a real directory tree out."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cri.images.unpack import LayerError, unpack_layer
from fixtures.build_images import EPOCH, LayerBuilder, compress


def _write(tmp_path: Path, data: bytes, name: str = "layer") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _unpack(tmp_path: Path, tar: bytes, compression: str = "none") -> tuple[Path, str]:
    dest = tmp_path / "fs"
    dest.mkdir()
    result = unpack_layer(_write(tmp_path, compress(tar, compression)), dest)
    return dest, result.diff_id


def _raw_tar(*members: tuple[str, bytes, bytes | None, str]) -> bytes:
    """(name, type, data, linkname) entries, written without any path cleaning."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, linkname in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            info.mode = 0o644
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_files_keep_ownership_modes_times_and_hard_links(tmp_path: Path) -> None:
    tar = (
        LayerBuilder()
        .dir("bin", 0o755)
        .dir("secret", 0o700, uid=1234, gid=5678)
        .file("bin/tool", b"#!/bin/sh\n", 0o4755)
        .hardlink("bin/alias", "bin/tool")
        .symlink("bin/abs", "/etc/passwd")
        .file("secret/key", b"k", 0o600, uid=1234, gid=5678)
        .tar()
    )
    fs, diff_id = _unpack(tmp_path, tar)
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    tool = os.lstat(fs / "bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755, "setuid bit kept"
    assert tool.st_mtime == EPOCH
    assert os.lstat(fs / "bin/alias").st_ino == tool.st_ino and tool.st_nlink == 2
    # Symlinks are stored as they are; they resolve inside the container, not here.
    assert os.readlink(fs / "bin/abs") == "/etc/passwd"
    secret = os.lstat(fs / "secret")
    assert (secret.st_uid, secret.st_gid, stat.S_IMODE(secret.st_mode)) == (1234, 5678, 0o700)
    assert secret.st_mtime == EPOCH, "directory mtime set after its children were written"
    key = os.lstat(fs / "secret/key")
    assert (key.st_uid, key.st_gid) == (1234, 5678)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions_give_the_same_tree_and_diff_id(tmp_path: Path, compression: str) -> None:
    tar = LayerBuilder().dir("d").file("d/f", b"x" * 100_000).tar()
    fs, diff_id = _unpack(tmp_path, tar, compression)
    assert (fs / "d/f").read_bytes() == b"x" * 100_000
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    tar = (
        LayerBuilder()
        .dir("etc")
        .file("etc/.wh.motd", b"")
        .dir("var")
        .file("var/.wh..wh..opq", b"")
        .file("var/new", b"n")
        .file("top/.wh..wh.plnk", b"")
        .tar()
    )
    fs, _ = _unpack(tmp_path, tar)
    motd = os.lstat(fs / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == os.makedev(0, 0)
    assert not (fs / "etc/.wh.motd").exists()
    assert os.getxattr(fs / "var", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(fs / "var")) == ["new"], "the opaque marker is not a file"
    assert os.listdir(fs / "top") == [], "aufs bookkeeping entries are dropped"


def test_later_entry_replaces_earlier_one(tmp_path: Path) -> None:
    tar = (
        LayerBuilder()
        .file("x", b"file")
        .dir("x")
        .file("x/inner", b"i")
        .symlink("y", "x")
        .file("y", b"now a file")
        .tar()
    )
    fs, _ = _unpack(tmp_path, tar)
    assert (fs / "x").is_dir() and (fs / "x/inner").read_bytes() == b"i"
    assert not (fs / "y").is_symlink() and (fs / "y").read_bytes() == b"now a file"


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ([("../escape", tarfile.REGTYPE, b"x", "")], "contains '..'"),
        ([("a/../../escape", tarfile.REGTYPE, b"x", "")], "contains '..'"),
        ([("/etc/escape", tarfile.REGTYPE, b"x", "")], "absolute path"),
        (
            [("link", tarfile.SYMTYPE, None, "/"), ("link/etc/escape", tarfile.REGTYPE, b"x", "")],
            "is a symlink",
        ),
        (
            [("link", tarfile.SYMTYPE, None, ".."), ("link/escape", tarfile.REGTYPE, b"x", "")],
            "is a symlink",
        ),
        ([("hl", tarfile.LNKTYPE, None, "../../etc/passwd")], "contains '..'"),
        ([("hl", tarfile.LNKTYPE, None, "/etc/passwd")], "absolute path"),
        ([("hl", tarfile.LNKTYPE, None, "missing")], "not in this layer"),
        (
            [("link", tarfile.SYMTYPE, None, "/etc"), ("hl", tarfile.LNKTYPE, None, "link/passwd")],
            "is a symlink",
        ),
        ([("d/.wh...", tarfile.REGTYPE, b"", "")], "malformed whiteout"),
    ],
)
def test_entries_escaping_the_layer_are_rejected(
    tmp_path: Path, members: list[tuple[str, bytes, bytes | None, str]], fragment: str
) -> None:
    outside = tmp_path / "escape"
    with pytest.raises(LayerError, match=fragment):
        _unpack(tmp_path, _raw_tar(*members))
    assert not outside.exists()
    assert Path("/escape").exists() is False
    assert Path("/etc/escape").exists() is False


def test_diff_id_mismatch_is_rejected(tmp_path: Path) -> None:
    tar = LayerBuilder().file("f", b"data").tar()
    dest = tmp_path / "fs"
    dest.mkdir()
    with pytest.raises(LayerError, match="diff id mismatch"):
        unpack_layer(_write(tmp_path, compress(tar, "gzip")), dest, "sha256:" + "0" * 64)


def test_corrupt_compressed_layer_is_rejected(tmp_path: Path) -> None:
    data = bytearray(compress(LayerBuilder().file("f", os.urandom(50_000)).tar(), "gzip"))
    data[len(data) // 2] ^= 0xFF
    dest = tmp_path / "fs"
    dest.mkdir()
    with pytest.raises(LayerError):
        unpack_layer(_write(tmp_path, bytes(data)), dest)


def test_security_capability_xattr_is_kept_and_trusted_is_not(tmp_path: Path) -> None:
    out = io.BytesIO()
    cap = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("ping")
        info.size = 1
        info.pax_headers = {
            "SCHILY.xattr.security.capability": cap,
            "SCHILY.xattr.trusted.overlay.redirect": "/elsewhere",
        }
        tf.addfile(info, io.BytesIO(b"p"))
    fs, _ = _unpack(tmp_path, out.getvalue())
    assert os.getxattr(fs / "ping", "security.capability") == cap.encode("utf-8", "surrogateescape")
    assert "trusted.overlay.redirect" not in os.listxattr(fs / "ping")


def _stream_tar(entries: list[tuple[str, bytes]], *, tail: bytes) -> bytes:
    """A tar stream written entry by entry, the last one followed by ``tail`` only.

    Each header is a ustar block; data is padded to 512 bytes between entries, and
    after the last entry comes exactly ``tail`` (b"" is what ``umoci insert`` writes:
    no padding and no end-of-archive blocks).
    """
    out = bytearray()
    for i, (name, data) in enumerate(entries):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
        out += info.tobuf(format=tarfile.USTAR_FORMAT)
        out += data
        if i < len(entries) - 1:
            out += bytes(-len(data) % tarfile.BLOCKSIZE)
    return bytes(out + tail)


ENTRIES = [("etc/first", b"one\n"), ("etc/last", b"the last entry's 31 data bytes\n")]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"", id="no-padding-no-eoa"),
        pytest.param(bytes(100), id="part-of-the-padding"),
        pytest.param(bytes(512 - 31), id="padding-no-eoa"),
        pytest.param(bytes(512 - 31 + 512), id="padding-one-zero-block"),
    ],
)
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_stream_ending_after_the_last_entrys_data_is_accepted(
    tmp_path: Path, tail: bytes, compression: str
) -> None:
    tar = _stream_tar(ENTRIES, tail=tail)
    fs, diff_id = _unpack(tmp_path, tar, compression)
    assert (fs / "etc/first").read_bytes() == b"one\n"
    assert (fs / "etc/last").read_bytes() == ENTRIES[1][1]
    # The diff id is the digest of the bytes as given, not of a repaired archive.
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        pytest.param(1, "unexpected end of data", id="data-one-byte-short"),
        pytest.param(31, "unexpected end of data", id="no-data-at-all"),
    ],
)
def test_entry_data_cut_short_is_still_corrupt(tmp_path: Path, cut: int, message: str) -> None:
    tar = _stream_tar(ENTRIES, tail=b"")[:-cut]
    with pytest.raises(LayerError, match=message):
        _unpack(tmp_path, tar)


def test_header_cut_short_is_still_corrupt(tmp_path: Path) -> None:
    whole = _stream_tar([*ENTRIES, ("etc/third", b"3")], tail=b"")
    # Stop 100 bytes into the third entry's header.
    cut = whole[: whole.index(b"etc/third") + 100]
    with pytest.raises(LayerError, match="cut short"):
        _unpack(tmp_path, cut)
