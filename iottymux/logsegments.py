"""Which files make up one container's log: discovering the file set.

A container's log is a *set of segments* in one directory: the live file the runtime
appends to (``0.log``; ``1.log`` after a restart, …) and the files the kubelet rotated
away from it (``0.log.20240102-150405``, later gzipped to ``….gz``).  Segments sort by
``(restart, rotated-before-live, suffix)``; :func:`list_segments` finds them and
:class:`LogSource` picks the ones a read wants.  Only names and ``stat`` are read
here, never contents.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Final

#: ``(restart, 1 if live else 0, -n for logrotate's .n, kubelet suffix)``
SegmentKey = tuple[int, int, int, str]
_RESTART_LOG: Final = re.compile(r"(\d+)\.log(?:\.(.+))?")
_STATIC_NAME: Final = re.compile(r".*(?:\.gz|\.log\.[^/]+)")


@dataclass(frozen=True, slots=True)
class Segment:
    """One file of a log set: the live file, a rotated file, or a gzipped one."""

    path: str
    key: SegmentKey
    compressed: bool
    ino: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def live(self) -> bool:
        return self.key[1] == 1

    @property
    def restart(self) -> int:
        return self.key[0]


def classify_segment(name: str, base: str | None) -> tuple[SegmentKey, bool] | None:
    """Sort key and compression of a file name in a log directory, or None if foreign.

    With ``base`` (a live file's name) only ``base`` and ``base.<suffix>[.gz]`` belong;
    without, the kubelet's ``<restart>.log[.<suffix>][.gz]``.  ``.tmp`` files are the
    kubelet's half-written compressions and never belong.
    """
    if name.endswith(".tmp"):
        return None
    compressed = name.endswith(".gz")
    stem = name[:-3] if compressed else name
    suffix: str | None
    if base is None:
        match = _RESTART_LOG.fullmatch(stem)
        if match is None:
            return None
        restart, suffix = int(match.group(1)), match.group(2)
    else:
        restart = 0
        if stem == base:
            suffix = None
        elif stem.startswith(base + "."):
            suffix = stem[len(base) + 1 :]
        else:
            return None
    if suffix is None:
        if compressed:
            return (restart, 0, 0, ""), True
        return (restart, 1, 0, ""), False
    if suffix.isdigit():
        # logrotate numbers its copies upwards with age.
        return (restart, 0, -int(suffix), ""), compressed
    return (restart, 0, 0, suffix), compressed


def list_segments(directory: str, base: str | None) -> list[Segment]:
    """The log set in ``directory``, oldest first; a plain file wins over its ``.gz`` twin."""
    found: dict[SegmentKey, Segment] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        kind = classify_segment(entry.name, base)
        if kind is None:
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        key, compressed = kind
        # The kubelet deletes the plain file only after its .gz is complete, so while
        # both exist they hold the same records; the plain one can be searched.
        if key in found and not found[key].compressed:
            continue
        found[key] = Segment(entry.path, key, compressed, 0 if compressed else st.st_ino)
    return [found[key] for key in sorted(found)]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Who wrote a log, as far as its path tells (kubelet layout), and its display label."""

    label: str
    namespace: str | None = None
    pod: str | None = None
    uid: str | None = None
    container: str | None = None

    @classmethod
    def for_container_dir(cls, directory: str) -> SourceInfo:
        directory = os.path.normpath(directory)
        container = os.path.basename(directory)
        pod_dir = os.path.basename(os.path.dirname(directory))
        parts = pod_dir.split("_")
        if len(parts) == 3 and all(parts):
            namespace, pod, uid = parts
            return cls(f"{pod}/{container}", namespace, pod, uid, container)
        return cls(container, container=container)


@dataclass(frozen=True, slots=True)
class LogSource:
    """One container's log.

    ``base`` names the live file of a single-file set; ``None`` means a kubelet
    container directory of ``<restart>.log`` files.  A ``static`` source is one file
    read as it is (a rotated or gzipped file named directly).
    """

    info: SourceInfo
    directory: str
    base: str | None
    static: bool = False

    @classmethod
    def for_file(cls, path: str, info: SourceInfo | None = None) -> LogSource:
        real = os.path.realpath(path)
        directory, name = os.path.split(real)
        if info is None:
            if _RESTART_LOG.fullmatch(name):
                info = SourceInfo.for_container_dir(directory)
            else:
                info = SourceInfo(name)
        return cls(info, directory, name, static=bool(_STATIC_NAME.fullmatch(name)))

    @classmethod
    def for_container_dir(cls, path: str, info: SourceInfo | None = None) -> LogSource:
        real = os.path.realpath(path)
        return cls(info or SourceInfo.for_container_dir(real), real, None)

    def listing(self) -> list[Segment]:
        """Every segment of the set now, oldest first."""
        if self.static:
            assert self.base is not None
            path = os.path.join(self.directory, self.base)
            try:
                ino = os.stat(path).st_ino
            except FileNotFoundError:
                return []
            compressed = self.base.endswith(".gz")
            return [Segment(path, (0, 1, 0, ""), compressed, 0 if compressed else ino)]
        return list_segments(self.directory, self.base)

    def segments(self, all_rotated: bool = False) -> list[Segment]:
        """The segments a read covers: the newest restart's live file, or everything."""
        segments = self.listing()
        if all_rotated or not segments:
            return segments
        newest = segments[-1]
        return [newest]
