"""Resolve the user, group and supplementary groups of a container's first process.

The inputs are the CRI security context (``run_as_user``, ``run_as_group``,
``run_as_username``, ``supplemental_groups`` and their policy) and the image's ``User``
(``uid``, ``name``, ``uid:gid``, ``name:group`` …).  Names are looked up in the container
root filesystem's ``/etc/passwd`` and ``/etc/group``, read with
:func:`cri.oci._securepath.read_file_in_root` so that a hostile image cannot make us read
host files through symlinks.

Precedence, as Kubernetes defines it: ``run_as_user`` beats ``run_as_username`` beats the
image's user; ``run_as_group`` replaces whichever primary group those give.  A numeric
uid need not exist in ``/etc/passwd`` (its primary group is then 0); a name must.  With
the ``Merge`` supplemental-groups policy the groups that list the user by name in
``/etc/group`` are added; ``Strict`` adds only the CRI list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from cri.errors import InvalidArgument
from cri.oci._securepath import read_file_in_root

__all__ = [
    "MAX_ID",
    "GroupEntry",
    "PasswdEntry",
    "ResolvedUser",
    "parse_group",
    "parse_passwd",
    "resolve_user",
]

# (uid_t)-1 means "no change" to setresuid, so it is never a usable id.
MAX_ID = 2**32 - 2

POLICY_MERGE = 0
POLICY_STRICT = 1


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """The identity runc gives the process: ``process.user`` plus what the daemon reports.

    ``additional_gids`` starts with ``gid`` (the CRI ``ContainerUser`` reports the primary
    group among the supplementary ones) and has no duplicates.  ``username`` and ``home``
    come from ``/etc/passwd`` when the uid has an entry there.
    """

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    username: str | None = None
    home: str | None = None


def _parse_id(text: str) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd(5) file; malformed lines are skipped, as libc does."""
    entries = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 4:
            continue
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if not fields[0] or uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 else ""
        shell = fields[6] if len(fields) > 6 else ""
        entries.append(PasswdEntry(fields[0], uid, gid, home, shell))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group(5) file; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 3:
            continue
        gid = _parse_id(fields[2])
        if not fields[0] or gid is None:
            continue
        members = (
            tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        )
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


class _RootDb:
    """Lazily read passwd/group of one rootfs (a container may need neither)."""

    def __init__(self, rootfs: str | os.PathLike[str]) -> None:
        self._rootfs = rootfs
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None

    def _read(self, path: str) -> str:
        try:
            data = read_file_in_root(self._rootfs, path)
        except OSError as exc:
            raise InvalidArgument(
                f"image: cannot read {path} in the container root filesystem: {exc.strerror or exc}"
            ) from None
        return "" if data is None else data.decode("utf-8", "replace")

    def passwd(self) -> list[PasswdEntry]:
        if self._passwd is None:
            self._passwd = parse_passwd(self._read("/etc/passwd"))
        return self._passwd

    def group(self) -> list[GroupEntry]:
        if self._group is None:
            self._group = parse_group(self._read("/etc/group"))
        return self._group

    def user_by_uid(self, uid: int) -> PasswdEntry | None:
        return next((e for e in self.passwd() if e.uid == uid), None)

    def user_by_name(self, name: str) -> PasswdEntry | None:
        return next((e for e in self.passwd() if e.name == name), None)

    def group_by_name(self, name: str) -> GroupEntry | None:
        return next((e for e in self.group() if e.name == name), None)


def _check_id(value: int, field: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{field}: {value} is not a valid id (0..{MAX_ID})")
    return value


def _user_from_string(
    db: _RootDb, user: str, field: str
) -> tuple[int, int | None, PasswdEntry | None]:
    """(uid, gid or None, passwd entry) from ``user`` or ``user:group`` (``User`` syntax)."""
    name_part, sep, group_part = user.partition(":")
    if not name_part or (sep and not group_part):
        raise InvalidArgument(f"{field}: {user!r} is not user, uid, user:group or uid:gid")
    uid = _parse_id(name_part)
    gid: int | None = None
    entry: PasswdEntry | None
    if uid is not None:
        entry = db.user_by_uid(uid)
    else:
        entry = db.user_by_name(name_part)
        if entry is None:
            raise InvalidArgument(f"{field}: no user {name_part!r} in the image's /etc/passwd")
        uid = entry.uid
    if entry is not None:
        gid = entry.gid
    if group_part:
        gid = _parse_id(group_part)
        if gid is None:
            group = db.group_by_name(group_part)
            if group is None:
                raise InvalidArgument(f"{field}: no group {group_part!r} in the image's /etc/group")
            gid = group.gid
    return uid, gid, entry


def resolve_user(
    rootfs: str | os.PathLike[str],
    *,
    run_as_user: int | None = None,
    run_as_group: int | None = None,
    run_as_username: str = "",
    image_user: str = "",
    supplemental_groups: Sequence[int] = (),
    supplemental_groups_policy: int = POLICY_MERGE,
    field_prefix: str = "linux.security_context",
) -> ResolvedUser:
    """Resolve the process identity; errors name the CRI field (``field_prefix.run_as_…``)."""
    db = _RootDb(rootfs)
    gid: int | None
    entry: PasswdEntry | None
    if run_as_user is not None:
        uid = _check_id(run_as_user, f"{field_prefix}.run_as_user")
        entry = db.user_by_uid(uid)
        gid = entry.gid if entry is not None else None
    elif run_as_username:
        field = f"{field_prefix}.run_as_username"
        if ":" in run_as_username:
            raise InvalidArgument(f"{field}: {run_as_username!r} must be a user name only")
        uid, gid, entry = _user_from_string(db, run_as_username, field)
    elif image_user:
        uid, gid, entry = _user_from_string(db, image_user, "image config User")
    else:
        uid, entry = 0, db.user_by_uid(0)
        gid = entry.gid if entry is not None else 0
    name = entry.name if entry is not None else None
    if run_as_group is not None:
        gid = _check_id(run_as_group, f"{field_prefix}.run_as_group")
    if gid is None:
        gid = 0

    gids: list[int] = [gid]
    if supplemental_groups_policy == POLICY_MERGE and name is not None:
        for group in db.group():
            if name in group.members and group.gid not in gids:
                gids.append(group.gid)
    elif supplemental_groups_policy not in (POLICY_MERGE, POLICY_STRICT):
        raise InvalidArgument(
            f"{field_prefix}.supplemental_groups_policy: unknown policy "
            f"{supplemental_groups_policy}"
        )
    for i, extra in enumerate(supplemental_groups):
        _check_id(extra, f"{field_prefix}.supplemental_groups[{i}]")
        if extra not in gids:
            gids.append(extra)

    home = entry.home if entry is not None and entry.home else None
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(gids), username=name, home=home)
