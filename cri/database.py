"""SQLite databases of the daemon and of the image store: opened one way, private.

Both the daemon's pod and container store (:mod:`cri.store`) and the image store
(:mod:`cri.images.store`, which ``rktlet image`` also opens, with no daemon) keep
their state in SQLite in WAL mode, owner-only, and keep serving reads from a disk
that turned read-only.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path


def open_database(
    path: Path, pragmas: Sequence[str], schema: str, timeout: float = 5.0
) -> tuple[sqlite3.Connection, bool]:
    """A WAL-mode SQLite database, mode 0600; and whether it is open read-only.

    On a read-only disk an existing database is still opened, for reading: the
    daemon serves what it has recorded, and every write fails with UNAVAILABLE
    until a daemon starts on a writable disk.
    """

    def connect(uri: str) -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=timeout
        )

    try:
        _private(path)
        db = connect(f"file:{path}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        for pragma in pragmas:
            db.execute(f"PRAGMA {pragma}")
        db.executescript(schema)
        return db, False
    except (sqlite3.OperationalError, OSError):
        if not path.exists() or not on_read_only_disk(path.parent):
            raise
    # immutable: reading a WAL database otherwise needs a writable -shm file.
    return connect(f"file:{path}?immutable=1"), True


def _private(path: Path) -> None:
    """The database holds container environments (secrets): owner-only, 0600.

    SQLite gives its -wal and -shm files the mode of the main file, so creating
    that one 0600 (and mending an older one) covers all three.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def on_read_only_disk(directory: Path) -> bool:
    """Whether writes under ``directory`` fail with EROFS (a mount flag, or a disk
    the kernel took read-only after an error, which statvfs does not show)."""
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        return exc.errno == errno.EROFS
    os.unlink(probe)
    return False
