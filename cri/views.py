"""What the kubelet polls for, kept built between changes of state.

The kubelet relists every second (ListPodSandbox, ListContainers), asks each pod's
status every few seconds (ListPodSandbox and ListContainers filtered by the pod's
uid label, PodSandboxStatus, ContainerStatus for each container) and polls stats.
Between two changes of state every answer is the same, yet each one cost a SQLite
read of every row, a JSON decode of each row's ``info``, a protobuf decode of each
config and a filter that decoded every config again to match labels: at 100 pods of
3 containers that was most of the daemon's CPU (see bench/node.py).

:class:`Views` keeps the records of one *generation* of the store, the CRI messages
built from them, and an index of their labels.  The generation moves with every
committed write (this daemon's, or another connection's, which ``PRAGMA
data_version`` shows), and then everything is read again; a message is rebuilt only
if its record changed.  Whole answers are kept for the generation too: the unfiltered
lists, the lists filtered by a given filter, and each pod's PodSandboxStatus (with
its containers' statuses, and the log-drop words kept outside the store checked at
every call).  Records handed out here are the views' own: callers read
them, never change them (a change goes through the store, fresh from it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cri.api import api_pb2
from cri.statuses import (
    CONTAINER_STATES,
    container_status_proto,
    sandbox_state,
    sandbox_status_proto,
)
from cri.store import ContainerRecord, SandboxRecord, Store

R = TypeVar("R", SandboxRecord, ContainerRecord)
M = TypeVar("M")

#: Filtered list answers kept per generation: a node's pods twice over (the kubelet
#: filters each pod's sandbox and containers by its uid label), and then some.
MAX_FILTERED = 2048

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def like_prefix(value: str, prefix: str) -> bool:
    """``value LIKE prefix || '%'`` as SQLite has it: ASCII letters match either case."""
    return value.translate(_ASCII_FOLD).startswith(prefix.translate(_ASCII_FOLD))


@dataclass(frozen=True, slots=True)
class Item(Generic[R, M]):
    """A record, the list message built from it, and its labels (from its config)."""

    record: R
    message: M
    labels: Mapping[str, str]


class Listing(Generic[R, M]):
    """Items in list order, found by label without looking at the others."""

    def __init__(self, items: Sequence[Item[R, M]]) -> None:
        self.items: list[Item[R, M]] = list(items)
        self._index: dict[tuple[str, str], list[int]] = {}
        for position, item in enumerate(self.items):
            for pair in item.labels.items():
                self._index.setdefault(pair, []).append(position)

    def select(self, selector: Mapping[str, str]) -> list[Item[R, M]]:
        """Items whose labels hold every key of ``selector`` with its value, in order."""
        if not selector:
            return self.items
        fewest: list[int] | None = None
        for pair in selector.items():
            positions = self._index.get(pair)
            if not positions:
                return []
            if fewest is None or len(positions) < len(fewest):
                fewest = positions
        assert fewest is not None
        chosen = (self.items[p] for p in fewest)
        return [i for i in chosen if all(i.labels.get(k) == v for k, v in selector.items())]


class Views:
    """The store's records and CRI messages of its current generation (loop thread only)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._generation: tuple[int, int] | None = None
        self._sandboxes: dict[str, SandboxRecord] = {}
        self._containers: dict[str, ContainerRecord] = {}
        self._by_sandbox: dict[str, list[ContainerRecord]] = {}
        self._sandbox_listing: Listing[SandboxRecord, api_pb2.PodSandbox] | None = None
        self._container_listing: Listing[ContainerRecord, api_pb2.Container] | None = None
        self._unfiltered: dict[str, object] = {}
        self._filtered: dict[tuple[str, bytes], object] = {}
        # Kept across generations, each entry checked against its record's current value.
        self._pod_configs: dict[str, tuple[bytes, api_pb2.PodSandboxConfig]] = {}
        self._ctr_configs: dict[str, tuple[bytes, api_pb2.ContainerConfig]] = {}
        self._pod_items: dict[str, Item[SandboxRecord, api_pb2.PodSandbox]] = {}
        self._ctr_items: dict[str, Item[ContainerRecord, api_pb2.Container]] = {}
        self._pod_statuses: dict[str, tuple[SandboxRecord, api_pb2.PodSandboxStatus]] = {}
        self._ctr_statuses: dict[str, tuple[ContainerRecord, str, api_pb2.ContainerStatus]] = {}
        # Of this generation only: a pod's answer holds its containers' statuses too.
        self._pod_responses: dict[
            str, tuple[tuple[str, ...], api_pb2.PodSandboxStatusResponse]
        ] = {}

    # -- the generation ----------------------------------------------------------------

    def _current(self) -> None:
        generation = self.store.generation()
        if generation == self._generation:
            return
        sandboxes = self.store.list_sandboxes()
        containers = self.store.list_containers()
        self._sandboxes = {r.id: r for r in sandboxes}
        self._containers = {r.id: r for r in containers}
        self._by_sandbox = {}
        for record in containers:
            self._by_sandbox.setdefault(record.sandbox_id, []).append(record)
        self._sandbox_listing = self._container_listing = None
        self._unfiltered.clear()
        self._filtered.clear()
        self._pod_responses.clear()
        for cache in (
            self._pod_configs,
            self._pod_items,
            self._pod_statuses,
        ):
            for gone in cache.keys() - self._sandboxes.keys():
                del cache[gone]
        for ctr_cache in (self._ctr_configs, self._ctr_items, self._ctr_statuses):
            for gone in ctr_cache.keys() - self._containers.keys():
                del ctr_cache[gone]
        self._generation = generation

    def unfiltered(self, name: str, build: Callable[[], M]) -> M:
        """The answer ``name`` of an unfiltered list call, built once per generation."""
        self._current()
        found = self._unfiltered.get(name)
        if found is None:
            found = self._unfiltered[name] = build()
        return found  # type: ignore[return-value]

    def filtered(self, name: str, key: bytes, build: Callable[[], M]) -> M:
        """The answer ``name`` of a list call with the filter serialised as ``key``.

        Built once per generation and filter: the kubelet asks each pod's sandbox and
        containers by its uid label every few seconds, the same filters over and over.
        """
        self._current()
        found = self._filtered.get((name, key))
        if found is None:
            if len(self._filtered) >= MAX_FILTERED:
                self._filtered.clear()  # a client that never asks the same twice
            found = self._filtered[(name, key)] = build()
        return found  # type: ignore[return-value]

    # -- records -----------------------------------------------------------------------

    def sandboxes(self) -> list[SandboxRecord]:
        """Every pod, oldest first (``Store.list_sandboxes``)."""
        self._current()
        return list(self._sandboxes.values())

    def containers(self, sandbox_id: str | None = None) -> list[ContainerRecord]:
        """Every container, or a pod's, oldest first (``Store.list_containers``)."""
        self._current()
        if sandbox_id is None:
            return list(self._containers.values())
        return list(self._by_sandbox.get(sandbox_id, ()))

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        self._current()
        return self._sandboxes.get(sandbox_id)

    def find_sandboxes(self, prefix: str) -> list[SandboxRecord]:
        self._current()
        return [r for r in self._sandboxes.values() if like_prefix(r.id, prefix)]

    def get_container(self, container_id: str) -> ContainerRecord | None:
        self._current()
        return self._containers.get(container_id)

    def find_containers(self, prefix: str) -> list[ContainerRecord]:
        self._current()
        return [r for r in self._containers.values() if like_prefix(r.id, prefix)]

    # -- decoded configs -------------------------------------------------------------

    def sandbox_config(self, record: SandboxRecord) -> api_pb2.PodSandboxConfig:
        """The pod's config, decoded once (read it, do not change it)."""
        found = self._pod_configs.get(record.id)
        if found is None or found[0] != record.config:
            found = (record.config, api_pb2.PodSandboxConfig.FromString(record.config))
            self._pod_configs[record.id] = found
        return found[1]

    def container_config(self, record: ContainerRecord) -> api_pb2.ContainerConfig:
        """The container's config, decoded once (read it, do not change it)."""
        found = self._ctr_configs.get(record.id)
        if found is None or found[0] != record.config:
            found = (record.config, api_pb2.ContainerConfig.FromString(record.config))
            self._ctr_configs[record.id] = found
        return found[1]

    # -- list messages ---------------------------------------------------------------

    def sandbox_listing(self) -> Listing[SandboxRecord, api_pb2.PodSandbox]:
        """ListPodSandbox's items: every pod but those being created."""
        self._current()
        if self._sandbox_listing is None:
            items = []
            for record in self._sandboxes.values():
                if record.state == "creating":
                    continue
                item = self._pod_items.get(record.id)
                if item is None or item.record != record:
                    item = self._pod_items[record.id] = self._pod_item(record)
                items.append(item)
            self._sandbox_listing = Listing(items)
        return self._sandbox_listing

    def _pod_item(self, record: SandboxRecord) -> Item[SandboxRecord, api_pb2.PodSandbox]:
        config = self.sandbox_config(record)
        message = api_pb2.PodSandbox(
            id=record.id,
            metadata=config.metadata,
            state=sandbox_state(record),
            created_at=record.created_at,
            labels=config.labels,
            annotations=config.annotations,
            runtime_handler=record.runtime_handler,
        )
        return Item(record, message, dict(config.labels))

    def container_listing(self) -> Listing[ContainerRecord, api_pb2.Container]:
        """ListContainers' items: every container but those being created."""
        self._current()
        if self._container_listing is None:
            items = []
            for record in self._containers.values():
                if record.state == "creating":
                    continue
                item = self._ctr_items.get(record.id)
                if item is None or item.record != record:
                    item = self._ctr_items[record.id] = self._ctr_item(record)
                items.append(item)
            self._container_listing = Listing(items)
        return self._container_listing

    def _ctr_item(self, record: ContainerRecord) -> Item[ContainerRecord, api_pb2.Container]:
        config = self.container_config(record)
        message = api_pb2.Container(
            id=record.id,
            pod_sandbox_id=record.sandbox_id,
            metadata=config.metadata,
            image=api_pb2.ImageSpec(image=record.image),
            image_ref=record.image_ref,
            image_id=record.image_id,
            state=CONTAINER_STATES.get(record.state, api_pb2.ContainerState.CONTAINER_UNKNOWN),
            created_at=record.created_at,
            labels=config.labels,
            annotations=config.annotations,
        )
        return Item(record, message, dict(config.labels))

    # -- statuses ----------------------------------------------------------------------

    def sandbox_status(self, record: SandboxRecord) -> api_pb2.PodSandboxStatus:
        """``sandbox_status_proto(record)``, built again only when the record changed."""
        found = self._pod_statuses.get(record.id)
        if found is None or found[0] != record:
            found = (record, sandbox_status_proto(record))
            self._pod_statuses[record.id] = found
        return found[1]

    def container_status(
        self, record: ContainerRecord, log_message: str = ""
    ) -> api_pb2.ContainerStatus:
        """``container_status_proto(record, log_message)``, built again only on a change."""
        found = self._ctr_statuses.get(record.id)
        if found is None or found[1] != log_message or found[0] != record:
            found = (record, log_message, container_status_proto(record, log_message))
            self._ctr_statuses[record.id] = found
        return found[2]

    def sandbox_status_response(
        self, record: SandboxRecord, log_message: Callable[[str], str]
    ) -> api_pb2.PodSandboxStatusResponse:
        """PodSandboxStatus's answer for ``record`` (of this generation) but its timestamp.

        The pod's status and its containers' statuses, built once per generation and
        again when a container's ``log_message`` (kept outside the store) changes.
        Read it, do not change it: copy it into the answer.
        """
        self._current()
        containers = self._by_sandbox.get(record.id, ())
        messages = tuple(log_message(c.id) for c in containers)
        found = self._pod_responses.get(record.id)
        if found is None or found[0] != messages:
            response = api_pb2.PodSandboxStatusResponse(status=self.sandbox_status(record))
            response.containers_statuses.extend(
                self.container_status(c, m) for c, m in zip(containers, messages, strict=True)
            )
            found = self._pod_responses[record.id] = (messages, response)
        return found[1]
