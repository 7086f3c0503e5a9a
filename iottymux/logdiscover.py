"""Finding the containers a selection names under a log root, now and as they come.

:meth:`NodeDiscovery.scan` lists what exists.  :meth:`NodeDiscovery.attach` does the
same for a :class:`~iottymux.logfollow.FollowGroup` and keeps watching, with the
group's inotify instance: the log root for pod directories, and each wanted pod
directory for container directories.  Every watch is set *before* its directory is
listed, so nothing created in between is missed, and a directory seen both in a
listing and in an event is followed once.  Nothing is polled.

A pod selected by labels may appear before the daemon knows it (the kubelet makes
the log directory, then asks for the pod); such a pod is watched as *pending* and
judged again when a container directory appears in it, which the kubelet only does
once the pod exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from iottymux.logfollow import FollowGroup
from iottymux.loginotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    InotifyEvent,
)
from iottymux.logsegments import LogSource, SourceInfo
from iottymux.logselect import (
    LabelLookup,
    PodDir,
    Selection,
    container_dirs,
    newest_per_pod,
    pod_dirs,
)

__all__ = ["NodeDiscovery"]

_WATCH_MASK = (
    IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)

Notice = Callable[[str], None]


class NodeDiscovery:
    def __init__(
        self,
        root: str,
        selection: Selection,
        lookup: LabelLookup | None = None,
    ) -> None:
        self.root = os.path.realpath(root)
        self.selection = selection
        self.lookup = lookup
        self.group: FollowGroup | None = None
        self._pod_wds: dict[str, int] = {}
        #: Pods some of whose containers are followed.
        self._followed_pods: set[str] = set()
        self._root_wd = -1

    # -- one look -----------------------------------------------------------------

    def _wanted_containers(self, pod: PodDir) -> list[LogSource]:
        sources = []
        for name, path in container_dirs(pod):
            if self.selection.container_wanted(pod, name):
                info = SourceInfo(f"{pod.pod}/{name}", pod.namespace, pod.pod, pod.uid, name)
                sources.append(LogSource.for_container_dir(path, info))
        return sources

    def scan(self) -> list[LogSource]:
        """The wanted containers that exist now (the newest pod of each name)."""
        sources: list[LogSource] = []
        for pod in newest_per_pod(pod_dirs(self.root)):
            if self.selection.pod_wanted(pod, self.lookup):
                sources += self._wanted_containers(pod)
        return sources

    # -- following ------------------------------------------------------------------

    def attach(self, group: FollowGroup) -> list[LogSource]:
        """Start watching for ``group``; returns the wanted containers that exist now.

        The caller adds those (with tail/since applied); everything found later is
        added by this object as new, read from its first line.
        """
        self.group = group
        group.open_ended = True
        group.on_gone = self._on_gone
        self._root_wd = group.watches.add(self.root, _WATCH_MASK, self._root_event)
        sources: list[LogSource] = []
        for pod in newest_per_pod(pod_dirs(self.root)):
            wanted = self.selection.pod_wanted(pod, self.lookup)
            if wanted is False:
                continue
            self._watch_pod(pod)
            if wanted:
                found = self._wanted_containers(pod)
                if found:
                    self._followed_pods.add(pod.path)
                sources += found
        return sources

    def _watch_pod(self, pod: PodDir) -> None:
        assert self.group is not None
        if pod.path in self._pod_wds:
            return
        try:
            wd = self.group.watches.add(pod.path, _WATCH_MASK, self._pod_event)
        except FileNotFoundError:
            return
        self._pod_wds[pod.path] = wd

    def _unwatch_pod(self, path: str) -> None:
        wd = self._pod_wds.pop(path, None)
        if wd is not None and self.group is not None:
            self.group.watches.remove(wd, self._pod_event)

    def _add_containers(self, pod: PodDir) -> None:
        group = self.group
        assert group is not None
        for source in self._wanted_containers(pod):
            if group.add_source(source, new=True):
                self._followed_pods.add(pod.path)
                group.queue_notice(f"following new container {_label(source)}", before_reading=True)

    def _pod_appeared(self, path: str) -> None:
        pod = PodDir.parse(path)
        if pod is None or not os.path.isdir(path):
            return
        wanted = self.selection.pod_wanted(pod, self.lookup)
        if wanted is False:
            return
        # Watch before listing: a container created in between is in one or the other.
        self._watch_pod(pod)
        if wanted:
            self._add_containers(pod)

    def _pod_removed(self, path: str) -> None:
        self._unwatch_pod(path)
        self.selection.unknown.discard(path)
        if path in self._followed_pods and self.group is not None:
            self._followed_pods.discard(path)
            pod = PodDir.parse(path)
            if pod is not None:
                self.group.queue_notice(f"pod {pod.key} removed")

    def _rescan(self) -> None:
        for pod in pod_dirs(self.root):
            if pod.path not in self._pod_wds:
                self._pod_appeared(pod.path)
        for path in list(self._pod_wds):
            if not os.path.isdir(path):
                self._pod_removed(path)
            else:
                self._pod_changed(path)

    def _root_event(self, event: InotifyEvent) -> None:
        if event.mask & IN_Q_OVERFLOW:
            self._rescan()
            return
        if event.wd != self._root_wd or not event.name or not event.mask & IN_ISDIR:
            return
        path = os.path.join(self.root, event.name)
        if event.mask & (IN_CREATE | IN_MOVED_TO):
            self._pod_appeared(path)
        elif event.mask & (IN_DELETE | IN_MOVED_FROM):
            self._pod_removed(path)

    def _pod_event(self, event: InotifyEvent) -> None:
        if event.mask & IN_Q_OVERFLOW:
            return  # the root's handler rescans everything
        path = next((p for p, wd in self._pod_wds.items() if wd == event.wd), None)
        if path is None:
            return
        if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED) and not event.name:
            self._pod_removed(path)
            return
        if event.mask & (IN_CREATE | IN_MOVED_TO) and event.mask & IN_ISDIR:
            self._pod_changed(path)

    def _pod_changed(self, path: str) -> None:
        """A container directory appeared (or may have): follow the wanted ones."""
        pod = PodDir.parse(path)
        if pod is None:
            return
        wanted = self.selection.pod_wanted(pod, self.lookup)
        if wanted is False:
            self._unwatch_pod(path)
        elif wanted:
            self._add_containers(pod)

    def _on_gone(self, source: LogSource) -> str | None:
        """The notice for a followed container whose directory went away."""
        pod_dir = os.path.dirname(source.directory)
        if pod_dir in self._followed_pods and not os.path.isdir(pod_dir):
            # Its pod went: one notice for the pod, from the root's event.
            return None
        return f"container {_label(source)} removed"


def _label(source: LogSource) -> str:
    info = source.info
    return f"{info.namespace}/{info.pod}/{info.container}"
