"""Which pods and containers a node-wide ``iottymux logs`` reads.

The kubelet lays logs out as ``<root>/<namespace>_<pod>_<uid>/<container>/<N>.log``;
a :class:`Selection` says which of those directories are wanted: namespaces,
``NAMESPACE/POD_REGEX[/CONTAINER_REGEX]`` patterns, container include and exclude
patterns, and a pod label selector.  Names are matched whole (``web`` is the pod
``web``; ``web-.*`` is every pod of a deployment ``web``).  Labels are not in the
file system: they come from a running rktlet through CRI ``ListPodSandbox``
(:class:`DaemonPods`), so the selection asks for them only when it has a selector.

Nothing here watches anything; :mod:`iottymux.logdiscover` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DaemonPods",
    "DaemonUnavailable",
    "LabelSelector",
    "PodDir",
    "PodPattern",
    "Selection",
    "SelectionError",
    "pod_dirs",
]


class DaemonUnavailable(Exception):
    """A source is known only to the rktlet daemon, and it cannot answer."""


class SelectionError(ValueError):
    """A pattern or selector that cannot be used."""


# ---------------------------------------------------------------------------
# Label selectors (the equality- and set-based forms of kubectl -l)

_KEY: Final = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE: Final = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY: Final = re.compile(rf"\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*")
_SET: Final = re.compile(rf"\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*")
_EXISTS: Final = re.compile(rf"\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*")


@dataclass(frozen=True, slots=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values  # "!=" and "notin" also match a missing key


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """``k=v,k!=v,k in (a,b),k notin (a),k,!k``: every requirement must hold."""

    requirements: tuple[_Requirement, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        requirements = [_parse_requirement(part) for part in _split_top_level(text)]
        if not requirements:
            raise SelectionError("empty label selector")
        return cls(tuple(requirements), text)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()] if text.strip() else []


def _parse_requirement(text: str) -> _Requirement:
    match = _SET.fullmatch(text)
    if match is not None:
        values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
        if not values:
            raise SelectionError(f"label selector {text.strip()!r}: no values in ( )")
        return _Requirement(match["key"], match["op"], values)
    match = _EQUALITY.fullmatch(text)
    if match is not None:
        op = "!=" if match["op"] == "!=" else "="
        return _Requirement(match["key"], op, frozenset({match["value"] or ""}))
    match = _EXISTS.fullmatch(text)
    if match is not None:
        return _Requirement(match["key"], "!exists" if match["neg"] else "exists")
    raise SelectionError(f"bad label selector requirement {text.strip()!r}")


# ---------------------------------------------------------------------------
# Patterns and the selection


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SelectionError(f"bad {what} regular expression {pattern!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class PodPattern:
    """``NAMESPACE/POD_REGEX[/CONTAINER_REGEX]`` (the namespace is a plain name).

    A ``namespace`` of None matches every namespace (a bare ``POD_REGEX`` with
    ``--all-namespaces``).
    """

    namespace: str | None
    pod: re.Pattern[str]
    container: re.Pattern[str] | None
    text: str

    @classmethod
    def parse(cls, text: str) -> PodPattern:
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise SelectionError(f"{text!r} is not NAMESPACE/POD_REGEX[/CONTAINER_REGEX]")
        container = _compile(parts[2], "container") if len(parts) == 3 else None
        return cls(parts[0], _compile(parts[1], "pod"), container, text)

    @classmethod
    def bare(cls, pod: str, namespace: str | None) -> PodPattern:
        """A ``POD_REGEX`` given with ``-n`` (or ``--all-namespaces``)."""
        text = f"{namespace or '*'}/{pod}"
        return cls(namespace, _compile(pod, "pod"), None, text)


@dataclass(frozen=True, slots=True)
class PodDir:
    """A pod's log directory: ``<namespace>_<pod>_<uid>``."""

    path: str
    namespace: str
    pod: str
    uid: str

    @classmethod
    def parse(cls, path: str) -> PodDir | None:
        parts = os.path.basename(path).split("_")
        if len(parts) != 3 or not all(parts):
            return None
        return cls(path, parts[0], parts[1], parts[2])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


LabelLookup = Callable[[PodDir], Mapping[str, str] | None]


@dataclass(slots=True)
class Selection:
    """What to read under a log root.

    ``namespaces`` None means every namespace.  With no ``patterns`` every pod of
    those namespaces is wanted.  ``labels`` must be given a lookup (a running
    daemon) through :meth:`pod_wanted`.
    """

    namespaces: frozenset[str] | None = None
    patterns: tuple[PodPattern, ...] = ()
    container: re.Pattern[str] | None = None
    exclude_container: re.Pattern[str] | None = None
    labels: LabelSelector | None = None
    #: Pods whose labels the daemon did not know yet (created just now).
    unknown: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        *,
        namespaces: Sequence[str] = (),
        all_namespaces: bool = False,
        patterns: Sequence[str] = (),
        bare_pods: Sequence[str] = (),
        container: str | None = None,
        exclude_container: str | None = None,
        selector: str | None = None,
    ) -> Selection:
        spaces: Sequence[str | None] = [None] if all_namespaces or not namespaces else namespaces
        parsed = [PodPattern.parse(p) for p in patterns]
        parsed += [PodPattern.bare(pod, ns) for pod in bare_pods for ns in spaces]
        return cls(
            namespaces=None if all_namespaces or not namespaces else frozenset(namespaces),
            patterns=tuple(parsed),
            container=_compile(container, "container") if container else None,
            exclude_container=(
                _compile(exclude_container, "container") if exclude_container else None
            ),
            labels=LabelSelector.parse(selector) if selector is not None else None,
        )

    @property
    def several_namespaces(self) -> bool:
        """Whether lines may come from more than one namespace (labels then name it)."""
        if self.patterns:
            names = {p.namespace for p in self.patterns}
            return None in names or len(names) > 1
        return self.namespaces is None or len(self.namespaces) > 1

    def _patterns_for(self, pod: PodDir) -> list[PodPattern]:
        return [
            p
            for p in self.patterns
            if p.namespace in (None, pod.namespace) and p.pod.fullmatch(pod.pod) is not None
        ]

    def pod_name_wanted(self, pod: PodDir) -> bool:
        """Namespace and name only (labels aside)."""
        if self.patterns:
            return bool(self._patterns_for(pod))
        return self.namespaces is None or pod.namespace in self.namespaces

    def pod_wanted(self, pod: PodDir, lookup: LabelLookup | None) -> bool | None:
        """True, False, or None when its labels are not known yet."""
        if not self.pod_name_wanted(pod):
            return False
        if self.labels is None:
            return True
        labels = lookup(pod) if lookup is not None else None
        if labels is None:
            self.unknown.add(pod.path)
            return None
        self.unknown.discard(pod.path)
        return self.labels.matches(labels)

    def container_wanted(self, pod: PodDir, name: str) -> bool:
        if self.container is not None and self.container.fullmatch(name) is None:
            return False
        if self.exclude_container is not None and self.exclude_container.fullmatch(name):
            return False
        patterns = self._patterns_for(pod) if self.patterns else []
        if patterns:
            return any(p.container is None or p.container.fullmatch(name) for p in patterns)
        return True

    def describe(self) -> str:
        parts = [p.text for p in self.patterns]
        if self.namespaces is not None:
            parts.append("namespace " + ",".join(sorted(self.namespaces)))
        if self.container is not None:
            parts.append(f"container {self.container.pattern}")
        if self.labels is not None:
            parts.append(f"labels {self.labels.text}")
        return "; ".join(parts) or "every pod"


def pod_dirs(root: str) -> list[PodDir]:
    """Every pod directory under ``root`` (none if it does not exist)."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        pod = PodDir.parse(entry.path)
        if pod is not None and entry.is_dir(follow_symlinks=False):
            found.append(pod)
    return found


def newest_per_pod(pods: Iterable[PodDir]) -> list[PodDir]:
    """One directory per namespace/name: the newest uid (a pod deleted and created again)."""
    best: dict[str, tuple[int, PodDir]] = {}
    for pod in pods:
        try:
            mtime = os.stat(pod.path).st_mtime_ns
        except FileNotFoundError:
            continue
        if pod.key not in best or mtime > best[pod.key][0]:
            best[pod.key] = (mtime, pod)
    return sorted((pod for _, pod in best.values()), key=lambda pod: pod.path)


def container_dirs(pod: PodDir) -> list[tuple[str, str]]:
    """``(name, path)`` of a pod directory's container directories."""
    try:
        entries = list(os.scandir(pod.path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        (entry.name, entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)
    )


# ---------------------------------------------------------------------------
# Pod labels from the daemon


class DaemonPods:
    """Pod labels by uid, from a running rktlet's CRI ``ListPodSandbox``.

    The list is fetched again when asked about a pod it does not know (the kubelet
    makes a pod's log directory just before it asks the runtime for the pod, so a
    directory can appear before its pod does).  The CRI client (grpc) is imported
    only here: a selection without labels needs no daemon and no third-party package.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._labels: dict[str, dict[str, str]] = {}
        self._stub: Any = None
        self._channel: Any = None
        self.refresh()

    def _connect(self) -> Any:
        if self._stub is not None:
            return self._stub
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(2.0)
                conn.connect(self.socket_path)
        except OSError:
            raise DaemonUnavailable(
                f"pod labels (-l) come from the rktlet daemon, and none answers at "
                f"{self.socket_path} (use --rktlet-socket)"
            ) from None
        try:
            import grpc

            from cri.api import api_pb2_grpc
        except ImportError as exc:
            raise DaemonUnavailable(f"cannot ask the daemon for pod labels: {exc}") from None
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        self._stub = api_pb2_grpc.RuntimeServiceStub(self._channel)
        return self._stub

    def refresh(self) -> None:
        stub = self._connect()
        import grpc

        from cri.api import api_pb2

        try:
            reply = stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10)
        except grpc.RpcError as exc:
            raise DaemonUnavailable(
                f"the rktlet daemon at {self.socket_path}: {exc.details()}"
            ) from None
        self._labels = {item.metadata.uid: dict(item.labels) for item in reply.items}

    def labels(self, pod: PodDir) -> Mapping[str, str] | None:
        found = self._labels.get(pod.uid)
        if found is None:
            try:
                self.refresh()
            except DaemonUnavailable:
                return None
            found = self._labels.get(pod.uid)
        return found

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None
