"""Pods and containers in SQLite: the daemon's durable state.

Every transition is committed before the RPC that made it answers, so a daemon
killed at any point restarts knowing what exists.  Objects that were being
created when the daemon died are found in their ``creating`` state on restart
and rolled back.

Sandbox states::

    creating ──▶ ready ──stop──▶ notready ──remove──▶ (row deleted)

Container states (CRI's, plus ``creating``)::

    creating ──▶ created ──start──▶ running ──exit/stop──▶ exited ──remove──▶ (deleted)
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri.database import on_read_only_disk, open_database
from cri.errors import ResourceExhausted, Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    namespace TEXT NOT NULL,
    uid TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    config BLOB NOT NULL,
    runtime_handler TEXT NOT NULL DEFAULT '',
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS sandbox_names
    ON sandboxes (namespace, name, uid, attempt);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL,
    image_id TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    config BLOB NOT NULL,
    log_path TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS container_names
    ON containers (sandbox_id, name, attempt);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class SandboxRecord:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: str
    created_at: int
    config: bytes
    runtime_handler: str = ""
    #: Runtime facts: run_dir, netns, ip, additional_ips, monitor_pid, infra pid...
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    state: str
    created_at: int
    image: str
    image_id: str
    image_ref: str
    config: bytes
    log_path: str
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    #: Runtime facts: bundle, rootfs, pid, app name, stop signal...
    info: dict[str, Any] = field(default_factory=dict)


class Store:
    """A SQLite database in WAL mode; safe to call from the event loop's thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._lock = threading.Lock()
        self._db, self.read_only = open_database(path, ("synchronous=FULL",), SCHEMA)
        self._db.row_factory = sqlite3.Row
        #: Transactions this connection committed (see :meth:`generation`).
        self._commits = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                self._commits += 1
            except sqlite3.OperationalError as exc:
                raise self._write_error(exc) from exc

    def generation(self) -> tuple[int, int]:
        """Changes when anything is committed: by this store, or by another connection.

        What is built from the records (``cri.views``) is good while this stays the
        same.  SQLite's ``data_version`` moves on commits of *other* connections only,
        so this store counts its own.
        """
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
            return self._commits, int(row[0])

    def _write_error(self, exc: sqlite3.OperationalError) -> Exception:
        """A failed write as the node condition it is (full, read-only, failing disk)."""
        with suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        text = str(exc)
        if "full" in text:
            return ResourceExhausted(f"no space left on device for {self.path}")
        if on_read_only_disk(self.path.parent) or "readonly" in text:
            return Unavailable(f"read-only file system: {self.path} cannot be written")
        if "I/O" in text:
            return Unavailable(f"{self.path} cannot be written: {text}")
        return exc

    # -- sandboxes ---------------------------------------------------------------

    def add_sandbox(self, rec: SandboxRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO sandboxes VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.name,
                    rec.namespace,
                    rec.uid,
                    rec.attempt,
                    rec.state,
                    rec.created_at,
                    rec.config,
                    rec.runtime_handler,
                    json.dumps(rec.info),
                ),
            )

    def update_sandbox(self, rec: SandboxRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sandboxes SET state=?, info=? WHERE id=?",
                (rec.state, json.dumps(rec.info), rec.id),
            )

    def update_sandbox_config(self, rec: SandboxRecord) -> None:
        with self._tx() as db:
            db.execute("UPDATE sandboxes SET config=? WHERE id=?", (rec.config, rec.id))

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM containers WHERE sandbox_id=?", (sandbox_id,))
            db.execute("DELETE FROM sandboxes WHERE id=?", (sandbox_id,))

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._one("SELECT * FROM sandboxes WHERE id=?", (sandbox_id,))
        return _sandbox(row) if row else None

    def find_sandboxes(self, prefix: str) -> list[SandboxRecord]:
        rows = self._all(
            "SELECT * FROM sandboxes WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(prefix),)
        )
        return [_sandbox(r) for r in rows]

    def sandbox_by_name(
        self, namespace: str, name: str, uid: str, attempt: int
    ) -> SandboxRecord | None:
        row = self._one(
            "SELECT * FROM sandboxes WHERE namespace=? AND name=? AND uid=? AND attempt=?",
            (namespace, name, uid, attempt),
        )
        return _sandbox(row) if row else None

    def list_sandboxes(self) -> list[SandboxRecord]:
        return [_sandbox(r) for r in self._all("SELECT * FROM sandboxes ORDER BY created_at")]

    # -- containers --------------------------------------------------------------

    def add_container(self, rec: ContainerRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO containers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.sandbox_id,
                    rec.name,
                    rec.attempt,
                    rec.state,
                    rec.created_at,
                    rec.started_at,
                    rec.finished_at,
                    rec.exit_code,
                    rec.reason,
                    rec.message,
                    rec.image,
                    rec.image_id,
                    rec.image_ref,
                    rec.config,
                    rec.log_path,
                    json.dumps(rec.info),
                ),
            )

    def update_container(self, rec: ContainerRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE containers SET state=?, started_at=?, finished_at=?, exit_code=?, "
                "reason=?, message=?, info=? WHERE id=?",
                (
                    rec.state,
                    rec.started_at,
                    rec.finished_at,
                    rec.exit_code,
                    rec.reason,
                    rec.message,
                    json.dumps(rec.info),
                    rec.id,
                ),
            )

    def update_container_config(self, rec: ContainerRecord) -> None:
        with self._tx() as db:
            db.execute("UPDATE containers SET config=? WHERE id=?", (rec.config, rec.id))

    def delete_container(self, container_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM containers WHERE id=?", (container_id,))

    def get_container(self, container_id: str) -> ContainerRecord | None:
        row = self._one("SELECT * FROM containers WHERE id=?", (container_id,))
        return _container(row) if row else None

    def find_containers(self, prefix: str) -> list[ContainerRecord]:
        rows = self._all(
            "SELECT * FROM containers WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(prefix),)
        )
        return [_container(r) for r in rows]

    def container_by_name(self, sandbox_id: str, name: str, attempt: int) -> ContainerRecord | None:
        row = self._one(
            "SELECT * FROM containers WHERE sandbox_id=? AND name=? AND attempt=?",
            (sandbox_id, name, attempt),
        )
        return _container(row) if row else None

    def list_containers(self, sandbox_id: str | None = None) -> list[ContainerRecord]:
        if sandbox_id is None:
            rows = self._all("SELECT * FROM containers ORDER BY created_at")
        else:
            rows = self._all(
                "SELECT * FROM containers WHERE sandbox_id=? ORDER BY created_at", (sandbox_id,)
            )
        return [_container(r) for r in rows]

    # -- settings ----------------------------------------------------------------

    def get_setting(self, key: str, default: str = "") -> str:
        row = self._one("SELECT value FROM settings WHERE key=?", (key,))
        return str(row["value"]) if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))

    # -- plumbing ----------------------------------------------------------------

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _sandbox(row: sqlite3.Row) -> SandboxRecord:
    return SandboxRecord(
        id=row["id"],
        name=row["name"],
        namespace=row["namespace"],
        uid=row["uid"],
        attempt=row["attempt"],
        state=row["state"],
        created_at=row["created_at"],
        config=row["config"],
        runtime_handler=row["runtime_handler"],
        info=json.loads(row["info"]),
    )


def _container(row: sqlite3.Row) -> ContainerRecord:
    return ContainerRecord(
        id=row["id"],
        sandbox_id=row["sandbox_id"],
        name=row["name"],
        attempt=row["attempt"],
        state=row["state"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        exit_code=row["exit_code"],
        reason=row["reason"],
        message=row["message"],
        image=row["image"],
        image_id=row["image_id"],
        image_ref=row["image_ref"],
        config=row["config"],
        log_path=row["log_path"],
        info=json.loads(row["info"]),
    )


def now_ns() -> int:
    return time.time_ns()
