"""Unpack one layer tarball into a directory that overlayfs can use as a lower layer.

Theory of operation: the (gzip, zstd or plain) blob is decompressed as a stream, hashed
on the way (the hash of the uncompressed tar is the layer's diff id, checked against the
image config) and read entry by entry with :mod:`tarfile` in stream mode.  Every entry
is created through directory file descriptors opened with ``O_NOFOLLOW``, one path
component at a time, so that no name in the tar (``..``, an absolute path, a path
through a symlink, a hard link to something outside) can reach outside the layer root.
Such entries are refused, not skipped: a layer that tries it is hostile or broken.

OCI whiteouts become overlayfs whiteouts: ``.wh.NAME`` is a 0/0 character device
``NAME``; ``.wh..wh..opq`` marks its directory opaque with ``trusted.overlay.opaque=y``.
Ownership (numeric uid/gid), modes (including setuid bits), mtimes, hard links and
``security.capability``/``user.*`` xattrs are kept.

Synchronous on purpose: the daemon runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import zstandard

from cri.errors import FailedPrecondition

__all__ = ["LayerError", "UnpackResult", "open_decompressed", "unpack_layer"]

_WHITEOUT_PREFIX = ".wh."
_OPAQUE = ".wh..wh..opq"
_META_PREFIX = ".wh..wh."
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
# Xattrs a layer may carry.  trusted.* is excluded: trusted.overlay.* in a layer
# would steer overlayfs itself (redirects, metacopy) from inside an image.
_ALLOWED_XATTR_PREFIXES = ("security.capability", "user.")


class LayerError(FailedPrecondition):
    """The layer is corrupt or unsafe; nothing of it is kept."""


@dataclass(frozen=True, slots=True)
class UnpackResult:
    diff_id: str
    size: int  # bytes of regular file content
    inodes: int  # entries created


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _HashingReader:
    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self.hasher = hashlib.sha256()
        #: Bytes read so far: the stream's length once drained.
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def open_decompressed(raw: IO[bytes]) -> _Readable:
    """Wrap ``raw`` in the decompressor its magic bytes call for.

    Media types are not trusted for this: registries and archives mislabel layers
    (a ``tar.gzip`` type on a plain tar is common in ``docker save`` output).
    """
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _components(name: str, what: str) -> list[str]:
    if name.startswith("/"):
        raise LayerError(f"layer entry {what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry {what} {name!r} contains '..'")
    return parts


class _Tree:
    """The layer root, reached only through fds opened component by component."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._cache: dict[tuple[str, ...], int] = {(): self.root_fd}

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def _forget(self, prefix: tuple[str, ...]) -> None:
        # Replacing a directory invalidates every cached fd beneath it.
        for key in [k for k in self._cache if k[: len(prefix)] == prefix and k]:
            os.close(self._cache.pop(key))

    def dir_fd(self, parts: list[str], create: bool, entry: str) -> int:
        key: tuple[str, ...] = ()
        fd = self.root_fd
        for comp in parts:
            key = (*key, comp)
            cached = self._cache.get(key)
            if cached is not None:
                fd = cached
                continue
            try:
                child = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise LayerError(
                        f"layer entry {entry!r}: {'/'.join(key)} does not exist"
                    ) from None
                os.mkdir(comp, 0o755, dir_fd=fd)
                child = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    st = os.lstat(comp, dir_fd=fd)
                    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    raise LayerError(
                        f"layer entry {entry!r}: parent {'/'.join(key)!r} is {kind}"
                    ) from None
                raise
            self._cache[key] = child
            fd = child
        return fd

    def clear(self, parent_fd: int, parent: list[str], name: str, keep_dir: bool) -> bool:
        """Remove whatever sits at ``name``; keep a directory if ``keep_dir``.

        Returns True when a directory was kept.
        """
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._forget((*parent, name))
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
        return False


def _set_xattrs(target: int | str, member: tarfile.TarInfo, dir_fd: int | None) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        attr = key[len("SCHILY.xattr.") :]
        if not attr.startswith(_ALLOWED_XATTR_PREFIXES):
            continue
        raw = value.encode("utf-8", "surrogateescape")
        try:
            if isinstance(target, int):
                os.setxattr(target, attr, raw)
            else:
                path = f"/proc/self/fd/{dir_fd}/{target}"
                os.setxattr(path, attr, raw, follow_symlinks=False)
        except OSError as exc:
            # user.* on a filesystem without user xattrs is not worth failing a pull.
            if exc.errno not in (errno.ENOTSUP, errno.EPERM) or attr.startswith("security."):
                raise


def _mtime_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    ns = int(member.mtime * 1_000_000_000)
    return ns, ns


def unpack_layer(
    blob: Path,
    dest: Path,
    expected_diff_id: str | None = None,
    on_entry: Callable[[int], None] | None = None,
) -> UnpackResult:
    """Unpack ``blob`` into the existing, empty directory ``dest``.

    Raises LayerError for unsafe or corrupt content, or a diff id that does not match
    ``expected_diff_id``; the caller discards ``dest`` then.
    """
    with open(blob, "rb") as raw:
        reader = _HashingReader(open_decompressed(raw))
        tree = _Tree(dest)
        size = 0
        inodes = 0
        dirs: list[tuple[list[str], tarfile.TarInfo]] = []
        try:
            try:
                # Closed by the `with archive` below; it has to be created in this try.
                archive = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
            except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
                raise LayerError(f"layer is not a tar archive: {exc}") from None
            with archive:
                last: tarfile.TarInfo | None = None
                while True:
                    try:
                        member = archive.next()
                    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
                        if _ends_cleanly(reader, archive, last):
                            break
                        raise LayerError(f"corrupt layer: {exc}") from None
                    if member is None:
                        reader.drain()
                        # tarfile takes a header cut short for the end; Go does not.
                        if archive.offset < reader.size < archive.offset + tarfile.BLOCKSIZE:
                            raise LayerError(
                                f"corrupt layer: the header at byte {archive.offset} is cut short"
                            )
                        break
                    written = _extract(archive, member, tree, dirs)
                    last = member
                    size += written
                    inodes += 1
                    if on_entry is not None:
                        on_entry(written)
            reader.drain()
            # Deepest first, so that setting a parent's mtime comes after its children.
            for parts, member in sorted(dirs, key=lambda d: len(d[0]), reverse=True):
                fd = tree.dir_fd(parts, create=False, entry=member.name)
                os.chown(fd, member.uid, member.gid)
                os.chmod(fd, stat.S_IMODE(member.mode))
                _set_xattrs(fd, member, None)
                os.utime(fd, ns=_mtime_ns(member))
        except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
            # An entry's data cut short is a tarfile.ReadError raised while copying it.
            raise LayerError(f"unpacking layer failed: {exc}") from exc
        finally:
            tree.close()
    diff_id = "sha256:" + reader.hasher.hexdigest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise LayerError(f"layer diff id mismatch: expected {expected_diff_id}, got {diff_id}")
    return UnpackResult(diff_id, size, inodes)


def _ends_cleanly(
    reader: _HashingReader, archive: tarfile.TarFile, last: tarfile.TarInfo | None
) -> bool:
    """Whether the stream ended right after ``last``'s data, in its padding.

    Writers such as ``umoci insert`` leave the last entry unpadded and write no
    end-of-archive blocks; Go's archive/tar (and so containerd) reads that as the end.
    tarfile instead fails to skip the padding; the layer is good if every byte of the
    entry's data is there.  Data cut short, or a header cut short, stays an error.
    """
    if last is None:
        return False
    try:
        reader.drain()
    except (OSError, EOFError, zstandard.ZstdError):
        return False
    # tarfile reads data blocks for regular files and for types it does not know.
    has_data = last.isreg() or last.type not in tarfile.SUPPORTED_TYPES
    data_end = last.offset_data + (last.size if has_data else 0)
    return data_end <= reader.size < archive.offset


def _extract(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    tree: _Tree,
    dirs: list[tuple[list[str], tarfile.TarInfo]],
) -> int:
    parts = _components(member.name, "name")
    if not parts:
        if member.isdir():
            dirs.append(([], member))
            return 0
        raise LayerError(f"layer entry {member.name!r} names the layer root but is not a directory")
    parent, name = parts[:-1], parts[-1]
    pfd = tree.dir_fd(parent, create=True, entry=member.name)

    if name == _OPAQUE:
        os.setxattr(pfd, "trusted.overlay.opaque", b"y")
        return 0
    if name.startswith(_META_PREFIX):
        # Other .wh..wh.* entries are aufs bookkeeping (hard link dirs), not content.
        return 0
    if name.startswith(_WHITEOUT_PREFIX):
        hidden = name[len(_WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise LayerError(f"layer entry {member.name!r} is a malformed whiteout")
        tree.clear(pfd, parent, hidden, keep_dir=False)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        os.chown(hidden, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        return 0

    if member.isdir():
        if not tree.clear(pfd, parent, name, keep_dir=True):
            os.mkdir(name, 0o700, dir_fd=pfd)
        dirs.append((parts, member))
        return 0

    tree.clear(pfd, parent, name, keep_dir=False)
    if member.isreg():
        src = archive.extractfile(member)
        assert src is not None
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
            dir_fd=pfd,
        )  # fmt: skip
        with open(fd, "wb", closefd=True) as out:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fchown(fd, member.uid, member.gid)
            # After chown, which clears setuid/setgid bits.
            os.fchmod(fd, stat.S_IMODE(member.mode))
            _set_xattrs(fd, member, None)
            os.utime(fd, ns=_mtime_ns(member))
        return member.size
    if member.issym():
        os.symlink(member.linkname, name, dir_fd=pfd)
    elif member.islnk():
        target = _components(member.linkname, "hard link target")
        if not target:
            raise LayerError(f"layer entry {member.name!r} hard-links the layer root")
        tfd = tree.dir_fd(target[:-1], create=False, entry=member.name)
        try:
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise LayerError(
                f"layer entry {member.name!r}: hard link target {member.linkname!r} "
                "is not in this layer"
            ) from None
        return 0  # a hard link shares its target's ownership, mode and times
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        os.mknod(
            name,
            kind | stat.S_IMODE(member.mode),
            os.makedev(member.devmajor, member.devminor),
            dir_fd=pfd,
        )
    else:
        raise LayerError(f"layer entry {member.name!r} has unsupported type {member.type!r}")
    os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
    if not member.issym():
        os.chmod(name, stat.S_IMODE(member.mode), dir_fd=pfd)
    _set_xattrs(name, member, pfd)
    with contextlib.suppress(NotImplementedError):
        os.utime(name, ns=_mtime_ns(member), dir_fd=pfd, follow_symlinks=False)
    return 0
