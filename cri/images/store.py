"""The image store: content-addressed blobs, unpacked layers and image records in SQLite.

Layout under the store root::

    blobs/sha256/<hex>       verified content (manifests, indexes, configs, layer blobs)
    ingest/<random>          downloads in progress; renamed into blobs/ once verified
    layers/<n>/fs            a layer unpacked once per diff id (n = row id, short on
                             purpose: overlayfs takes all lower dirs in one page of options)
    layers/tmp-<random>/     an unpack in progress
    images.db                SQLite (WAL): images, refs, layers, container root filesystems

Nothing becomes visible half-done: a blob appears by rename after its digest is checked,
a layer directory by rename after its diff id is checked, an image record in one
transaction after all its layers exist.  Whatever a failed pull left behind belongs to
no image and is removed by :meth:`ImageStore.gc`, which spares anything leased by a
pull still running.

Image lifecycle::

    (pull/import) ──add_image──▶ present ──remove_ref (last tag or digest)──▶ deleted
                                    │                                            ▲
                                    └───────────── delete_image(id) ─────────────┘

Layers and blobs no image (and, for layers, no container root filesystem) uses are
deleted by gc().
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cri.database import open_database
from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.images.reference import Reference, is_image_id, parse_digest, parse_reference
from cri.images.unpack import unpack_layer

__all__ = [
    "DigestMismatch",
    "ImageRecord",
    "ImageStore",
    "Ingest",
    "LayerRecord",
    "Lease",
    "RefKind",
]

#: Image references whose lookups are kept (any client may ask for any string).
_LOOKUPS_KEPT = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,              -- config digest
    manifest_digest TEXT NOT NULL,    -- the platform manifest
    size INTEGER NOT NULL,
    uid INTEGER,
    username TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT '',
    pinned INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    ref TEXT PRIMARY KEY,             -- name:tag or name@digest
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS refs_image ON refs(image_id);
CREATE TABLE IF NOT EXISTS image_blobs (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (image_id, digest)
);
CREATE INDEX IF NOT EXISTS image_blobs_digest ON image_blobs(digest);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE INDEX IF NOT EXISTS image_layers_diff ON image_layers(diff_id);
CREATE TABLE IF NOT EXISTS layers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    diff_id TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    inodes INTEGER NOT NULL,
    ready INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rootfs (
    container_id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    readonly INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rootfs_layers (
    container_id TEXT NOT NULL REFERENCES rootfs(container_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    layer_id INTEGER NOT NULL REFERENCES layers(id),
    PRIMARY KEY (container_id, position)
);
"""

RefKind = str  # 'tag' | 'digest'


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    manifest_digest: str
    size: int
    uid: int | None
    username: str
    user: str
    pinned: bool
    created: float
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    blobs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LayerRecord:
    id: int
    diff_id: str
    size: int
    inodes: int
    path: Path  # the unpacked tree (…/layers/<id>/fs)


@dataclass(slots=True)
class Ingest:
    """A blob being written: the caller writes bytes to ``path`` and feeds them here."""

    path: Path
    digest: str
    expected_size: int | None
    hasher: hashlib._Hash = field(init=False)
    written: int = 0

    def __post_init__(self) -> None:
        self.hasher = hashlib.new(self.digest.split(":", 1)[0])

    def feed(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest}: more than the {self.expected_size} bytes announced"
            )
        self.hasher.update(chunk)

    def reset(self) -> None:
        """Forget what was written, to download again from the start."""
        self.written = 0
        self.hasher = hashlib.new(self.digest.split(":", 1)[0])
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, 0)

    def check(self) -> None:
        if self.expected_size is not None and self.written != self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest}: got {self.written} bytes, expected {self.expected_size}"
            )
        actual = f"{self.digest.split(':', 1)[0]}:{self.hasher.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatch(f"blob digest mismatch: expected {self.digest}, got {actual}")


class DigestMismatch(FailedPrecondition):
    """Content does not hash to the digest it was announced under (corrupt or forged)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Blobs, layers and image records.  Thread-safe; all methods are synchronous.

    The asyncio side calls the slow ones (gc, unpack, usage walks) through
    ``asyncio.to_thread``; record queries are short SQLite transactions.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.ingest_dir = self.root / "ingest"
        self.layers_dir = self.root / "layers"
        for d in (self.blobs_dir / "sha256", self.blobs_dir / "sha512"):
            d.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db, self.read_only = open_database(
            self.root / "images.db", ("synchronous=NORMAL",), _SCHEMA, timeout=30
        )
        self._leases: Counter[str] = Counter()
        self._layer_locks: dict[str, threading.Lock] = {}
        #: Transactions this connection committed; with SQLite's ``data_version`` (the
        #: others', e.g. ``rktlet image import`` while the daemon runs) it dates the
        #: answers kept below.
        self._commits = 0
        self._lookups: dict[str, tuple[tuple[int, int], tuple[ImageRecord, str] | None]] = {}
        self._listed: tuple[tuple[int, int], list[ImageRecord]] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._commits += 1

    def _generation(self) -> tuple[int, int]:
        """Moves with every commit, this connection's or another's (call with the lock)."""
        return self._commits, int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # -- leases ------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, digests: Iterable[str] = ()) -> Iterator[Lease]:
        """Protect digests (blobs or diff ids) from gc while a pull or import runs."""
        held = Lease(self._lock, self._leases)
        try:
            for d in digests:
                held.add(d)
            yield held
        finally:
            held.release()

    # -- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = parse_digest(digest).partition(":")
        return self.blobs_dir / algorithm / hexpart

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None

    def new_ingest(self, digest: str, size: int | None) -> Ingest:
        parse_digest(digest)
        return Ingest(self.ingest_dir / f"{uuid.uuid4().hex}", digest, size)

    def commit_ingest(self, ingest: Ingest) -> Path:
        """Verify and move a finished download into place (idempotent for equal content)."""
        try:
            ingest.check()
        except DigestMismatch:
            self.discard_ingest(ingest)
            raise
        target = self.blob_path(ingest.digest)
        os.replace(ingest.path, target)
        return target

    def discard_ingest(self, ingest: Ingest) -> None:
        with contextlib.suppress(FileNotFoundError):
            ingest.path.unlink()

    def put_stream(
        self, src: IO[bytes], digest: str | None = None, size: int | None = None
    ) -> tuple[str, int]:
        """Copy a stream into the store; verify ``digest`` when given, else compute it.

        Returns (digest, size).
        """
        tmp = self.ingest_dir / uuid.uuid4().hex
        algorithm = digest.split(":", 1)[0] if digest else "sha256"
        hasher = hashlib.new(algorithm)
        written = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
            actual = f"{algorithm}:{hasher.hexdigest()}"
            if digest is not None and actual != digest:
                raise DigestMismatch(f"blob digest mismatch: expected {digest}, got {actual}")
            if size is not None and written != size:
                raise DigestMismatch(f"blob {actual}: {written} bytes, expected {size}")
            os.replace(tmp, self.blob_path(actual))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return actual, written

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store small content (manifests, configs); verifies ``digest`` when given."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and digest.startswith("sha512:"):
            actual = "sha512:" + hashlib.sha512(data).hexdigest()
        if digest is not None and actual != digest:
            raise DigestMismatch(f"blob digest mismatch: expected {digest}, got {actual}")
        if not self.has_blob(actual):
            ingest = self.new_ingest(actual, len(data))
            with open(ingest.path, "wb") as f:
                f.write(data)
            ingest.feed(data)
            self.commit_ingest(ingest)
        return actual

    # -- layers ------------------------------------------------------------------------

    def layer_lock(self, diff_id: str) -> threading.Lock:
        with self._lock:
            lock = self._layer_locks.get(diff_id)
            if lock is None:
                lock = self._layer_locks[diff_id] = threading.Lock()
            return lock

    def _layer_path(self, layer_id: int) -> Path:
        return self.layers_dir / str(layer_id) / "fs"

    def get_layer(self, diff_id: str) -> LayerRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, size, inodes FROM layers WHERE diff_id=? AND ready=1", (diff_id,)
            ).fetchone()
        if row is None:
            return None
        path = self._layer_path(row[0])
        if not path.is_dir():
            return None
        return LayerRecord(row[0], diff_id, row[1], row[2], path)

    def new_layer_dir(self) -> Path:
        """A private directory to unpack into; becomes the layer on :meth:`commit_layer`."""
        path = self.layers_dir / f"tmp-{uuid.uuid4().hex}"
        path.mkdir(mode=0o700)
        return path

    def commit_layer(self, tmp: Path, diff_id: str, size: int, inodes: int) -> LayerRecord:
        """Publish ``tmp`` (holding ``fs/``) as the layer for ``diff_id``.

        If another unpack of the same diff id won the race, ours is thrown away.
        """
        existing = self.get_layer(diff_id)
        if existing is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return existing
        with self._tx() as db:
            db.execute("DELETE FROM layers WHERE diff_id=? AND ready=0", (diff_id,))
            cur = db.execute(
                "INSERT INTO layers(diff_id, size, inodes, ready, created) VALUES (?,?,?,0,?)",
                (diff_id, size, inodes, time.time()),
            )
            layer_id = cur.lastrowid
            assert layer_id is not None
        final = self.layers_dir / str(layer_id)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        with self._tx() as db:
            db.execute("UPDATE layers SET ready=1 WHERE id=?", (layer_id,))
        return LayerRecord(layer_id, diff_id, size, inodes, final / "fs")

    def ensure_layer(self, blob_digest: str, diff_id: str) -> LayerRecord:
        """Unpack a stored layer blob unless its diff id is unpacked already."""
        with self.layer_lock(diff_id):
            existing = self.get_layer(diff_id)
            if existing is not None:
                return existing
            tmp = self.new_layer_dir()
            try:
                fs = tmp / "fs"
                fs.mkdir()
                result = unpack_layer(self.blob_path(blob_digest), fs, diff_id)
                return self.commit_layer(tmp, diff_id, result.size, result.inodes)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    def layers_for(self, diff_ids: Sequence[str]) -> list[LayerRecord]:
        out = []
        for d in diff_ids:
            layer = self.get_layer(d)
            if layer is None:
                raise NotFound(f"layer {d} is not unpacked in the store")
            out.append(layer)
        return out

    # -- images ------------------------------------------------------------------------

    def add_image(
        self,
        *,
        image_id: str,
        manifest_digest: str,
        size: int,
        user: str,
        uid: int | None,
        username: str,
        diff_ids: Sequence[str],
        blobs: Iterable[str],
        tags: Iterable[str] = (),
        digests: Iterable[str] = (),
    ) -> ImageRecord:
        """Record an image (or add refs to an existing one) in one transaction.

        A tag moves to this image if it named another; the other image keeps its
        remaining refs, as after ``docker pull`` of a moved tag.
        """
        for d in diff_ids:
            if self.get_layer(d) is None:
                raise NotFound(f"layer {d} is not unpacked; refusing a record without it")
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO images(id, manifest_digest, size, uid, username, user,"
                " created) VALUES (?,?,?,?,?,?,?)",
                (image_id, manifest_digest, size, uid, username, user, time.time()),
            )
            db.executemany(
                "INSERT OR IGNORE INTO image_blobs(image_id, digest) VALUES (?,?)",
                [(image_id, b) for b in set(blobs)],
            )
            db.executemany(
                "INSERT OR IGNORE INTO image_layers(image_id, position, diff_id) VALUES (?,?,?)",
                [(image_id, i, d) for i, d in enumerate(diff_ids)],
            )
            for kind, refs in (("tag", tags), ("digest", digests)):
                for ref in refs:
                    db.execute(
                        "INSERT INTO refs(ref, kind, image_id) VALUES (?,?,?) "
                        "ON CONFLICT(ref) DO UPDATE SET image_id=excluded.image_id",
                        (ref, kind, image_id),
                    )
        record = self.get_image(image_id)
        assert record is not None
        return record

    def get_image(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, manifest_digest, size, uid, username, user, pinned, created"
                " FROM images WHERE id=?",
                (image_id,),
            ).fetchone()
            if row is None:
                return None
            refs = self._db.execute(
                "SELECT ref, kind FROM refs WHERE image_id=? ORDER BY ref", (image_id,)
            ).fetchall()
            layers = self._db.execute(
                "SELECT diff_id FROM image_layers WHERE image_id=? ORDER BY position", (image_id,)
            ).fetchall()
            blobs = self._db.execute(
                "SELECT digest FROM image_blobs WHERE image_id=? ORDER BY digest", (image_id,)
            ).fetchall()
        return ImageRecord(
            id=row[0],
            manifest_digest=row[1],
            size=row[2],
            uid=row[3],
            username=row[4],
            user=row[5],
            pinned=bool(row[6]),
            created=row[7],
            repo_tags=tuple(r for r, k in refs if k == "tag"),
            repo_digests=tuple(r for r, k in refs if k == "digest"),
            diff_ids=tuple(r[0] for r in layers),
            blobs=tuple(r[0] for r in blobs),
        )

    def list_images(self) -> list[ImageRecord]:
        # The kubelet's image manager lists the node's images every 30 s and its status
        # every 10 s; between two changes of the store the answer is the same.
        with self._lock:
            generation = self._generation()
            if self._listed is not None and self._listed[0] == generation:
                return list(self._listed[1])
            ids = [r[0] for r in self._db.execute("SELECT id FROM images ORDER BY created, id")]
            images = [rec for i in ids if (rec := self.get_image(i)) is not None]
            self._listed = (generation, images)
        return list(images)

    def set_pinned(self, image_id: str, pinned: bool) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE images SET pinned=? WHERE id=?", (int(pinned), image_id))
            if cur.rowcount == 0:
                raise NotFound(f"image {image_id} not found")

    def _find_id(self, value: str) -> str | None:
        full = value if value.startswith("sha256:") else f"sha256:{value}"
        with self._lock:
            row = self._db.execute("SELECT id FROM images WHERE id=?", (full,)).fetchone()
            if row is None and not value.startswith("sha256:") and len(value) >= 12:
                # A unique short id prefix, as `docker images` prints them.
                rows = self._db.execute(
                    "SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 2",
                    (full, full + "g"),
                ).fetchall()
                row = rows[0] if len(rows) == 1 else None
        return None if row is None else str(row[0])

    def lookup(self, value: str, field_name: str = "image") -> tuple[ImageRecord, str] | None:
        """Resolve an id, id prefix, tag or digest reference.

        Returns the image and how it was matched (``id``, ``tag`` or ``digest``), or
        None.  Raises InvalidArgument for a string that is neither an id nor a
        valid reference.
        """
        # The kubelet asks ImageStatus before every container start: answers are kept
        # until the store changes (records are immutable; errors are not kept).
        with self._lock:
            generation = self._generation()
            found = self._lookups.get(value)
            if found is not None and found[0] == generation:
                return found[1]
            result = self._lookup(value, field_name)
            if len(self._lookups) >= _LOOKUPS_KEPT:
                self._lookups.clear()
            self._lookups[value] = (generation, result)
        return result

    def _lookup(self, value: str, field_name: str) -> tuple[ImageRecord, str] | None:
        if not value:
            raise InvalidArgument(f"{field_name}: image is empty")
        if is_image_id(value) or (len(value) >= 12 and all(c in "0123456789abcdef" for c in value)):
            image_id = self._find_id(value)
            if image_id is not None:
                rec = self.get_image(image_id)
                if rec is not None:
                    return rec, "id"
            if is_image_id(value):
                return None
        ref = parse_reference(value, field_name)
        for key, kind in self._ref_keys(ref):
            with self._lock:
                row = self._db.execute(
                    "SELECT image_id FROM refs WHERE ref=? AND kind=?", (key, kind)
                ).fetchone()
            if row is not None:
                rec = self.get_image(row[0])
                if rec is not None:
                    return rec, kind
        if ref.digest is not None:
            # name@<config digest> is how some clients name an image by id.
            image_id = self._find_id(ref.digest)
            rec = self.get_image(image_id) if image_id else None
            if rec is not None:
                return rec, "id"
        return None

    @staticmethod
    def _ref_keys(ref: Reference) -> list[tuple[str, RefKind]]:
        if ref.digest is not None:
            return [(ref.digested(), "digest")]
        tagged = ref.tagged()
        assert tagged is not None
        return [(tagged, "tag")]

    def remove_ref(self, ref: str, kind: RefKind) -> bool:
        """Drop one ref.  The image goes when it has no tags left, or, for an image
        pulled by digest only, no digests left.  Returns True if the image went."""
        with self._tx() as db:
            row = db.execute("SELECT image_id FROM refs WHERE ref=? AND kind=?", (ref, kind))
            found = row.fetchone()
            if found is None:
                return False
            image_id = found[0]
            db.execute("DELETE FROM refs WHERE ref=?", (ref,))
            counts = dict(
                db.execute(
                    "SELECT kind, COUNT(*) FROM refs WHERE image_id=? GROUP BY kind", (image_id,)
                ).fetchall()
            )
            tags, digests = counts.get("tag", 0), counts.get("digest", 0)
            gone = tags == 0 and (kind == "tag" or digests == 0)
            if gone:
                db.execute("DELETE FROM images WHERE id=?", (image_id,))
        return gone

    def delete_image(self, image_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM images WHERE id=?", (image_id,))
            return cur.rowcount > 0

    # -- container root filesystems (bookkeeping only; mounting is rootfs.py's) ---------

    def add_rootfs(
        self, container_id: str, image_id: str, layer_ids: Sequence[int], readonly: bool
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rootfs(container_id, image_id, readonly, created) VALUES (?,?,?,?)",
                (container_id, image_id, int(readonly), time.time()),
            )
            db.executemany(
                "INSERT INTO rootfs_layers(container_id, position, layer_id) VALUES (?,?,?)",
                [(container_id, i, lid) for i, lid in enumerate(layer_ids)],
            )

    def remove_rootfs(self, container_id: str) -> None:
        """Forget a root filesystem and the image volumes (``<id>/...``) of its container."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM rootfs WHERE container_id=? OR substr(container_id, 1, ?)=?",
                (container_id, len(container_id) + 1, container_id + "/"),
            )

    def rootfs_ids(self) -> list[str]:
        """Containers with a root filesystem (image volume rows, ``<id>/...``, excluded)."""
        with self._lock:
            return [
                r[0] for r in self._db.execute("SELECT container_id FROM rootfs") if "/" not in r[0]
            ]

    def rootfs_exists(self, container_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM rootfs WHERE container_id=?", (container_id,)
            ).fetchone()
        return row is not None

    # -- garbage collection and usage ----------------------------------------------------

    def gc(self) -> tuple[int, int]:
        """Delete blobs and layers nothing references.  Returns (blobs, layers) removed."""
        with self._lock:
            used_blobs = {r[0] for r in self._db.execute("SELECT digest FROM image_blobs")}
            used_diffs = {r[0] for r in self._db.execute("SELECT diff_id FROM image_layers")}
            rows = self._db.execute(
                "SELECT id, diff_id FROM layers WHERE ready=1 AND id NOT IN "
                "(SELECT layer_id FROM rootfs_layers)"
            ).fetchall()
            leased = set(self._leases)
            doomed_layers = [(lid, d) for lid, d in rows if d not in used_diffs and d not in leased]
            with self._tx() as db:
                db.executemany("DELETE FROM layers WHERE id=?", [(i,) for i, _ in doomed_layers])
            known_layers = {str(r[0]) for r in self._db.execute("SELECT id FROM layers")}
        blobs_removed = 0
        for algo_dir in self.blobs_dir.iterdir():
            for blob in algo_dir.iterdir():
                digest = f"{algo_dir.name}:{blob.name}"
                if digest not in used_blobs and digest not in leased:
                    with contextlib.suppress(FileNotFoundError):
                        blob.unlink()
                        blobs_removed += 1
        for lid, _ in doomed_layers:
            shutil.rmtree(self.layers_dir / str(lid), ignore_errors=True)
        # Directories with no committed row: crashed unpacks (tmp-*) or rows deleted
        # above.  A tmp dir of an unpack still running is kept by the age check.
        now = time.time()
        for entry in self.layers_dir.iterdir():
            if entry.name in known_layers:
                continue
            if entry.name.startswith("tmp-"):
                try:
                    if now - entry.stat().st_mtime < 3600:
                        continue
                except FileNotFoundError:
                    continue
            shutil.rmtree(entry, ignore_errors=True)
        return blobs_removed, len(doomed_layers)

    def image_fs_usage(self) -> tuple[int, int]:
        """(bytes, inodes) used by blobs and unpacked layers."""
        size = 0
        inodes = 0
        for algo_dir in self.blobs_dir.iterdir():
            for blob in algo_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    size += blob.stat().st_size
                    inodes += 1
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(size),0), COALESCE(SUM(inodes),0) FROM layers WHERE ready=1"
            ).fetchone()
        return size + int(row[0]), inodes + int(row[1])


class Lease:
    """Digests one pull or import holds; more can be added as they become known."""

    def __init__(self, lock: threading.RLock, counts: Counter[str]) -> None:
        self._lock = lock
        self._counts = counts
        self._held: set[str] = set()

    def add(self, digest: str) -> None:
        with self._lock:
            if digest not in self._held:
                self._held.add(digest)
                self._counts[digest] += 1

    def release(self) -> None:
        with self._lock:
            for d in self._held:
                self._counts[d] -= 1
                if self._counts[d] <= 0:
                    del self._counts[d]
            self._held.clear()
