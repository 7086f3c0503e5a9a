"""The views the kubelet's polling is answered from: never staler than the store.

A real SQLite store in a temp dir; every answer of :class:`cri.views.Views` is
checked against what the store itself says after each kind of change: this
daemon's writes, and a write by another connection (another process on the same
state, as SQLite's ``data_version`` reports it).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri.api import api_pb2
from cri.runtime import labels_match
from cri.statuses import container_status_proto, sandbox_status_proto
from cri.store import ContainerRecord, SandboxRecord, Store
from cri.views import Views, like_prefix


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def add_pod(store: Store, n: int, state: str = "ready", app: str = "web") -> SandboxRecord:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=f"pod{n}", namespace="ns", uid=f"uid{n}"),
        labels={"io.kubernetes.pod.uid": f"uid{n}", "app": app},
    )
    record = SandboxRecord(
        id=f"{n:02d}" + "ab" * 31,
        name=f"pod{n}",
        namespace="ns",
        uid=f"uid{n}",
        attempt=0,
        state=state,
        created_at=1000 + n,
        config=config.SerializeToString(),
        info={"ip": f"10.0.0.{n}"},
    )
    store.add_sandbox(record)
    return record


def add_container(
    store: Store, pod: SandboxRecord, n: int, state: str = "running"
) -> ContainerRecord:
    labels = {"io.kubernetes.pod.uid": pod.uid, "io.kubernetes.container.name": f"c{n}"}
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=f"c{n}"), labels=labels, annotations={"a": "b"}
    )
    record = ContainerRecord(
        id=pod.id[:2] + f"{n:02d}" + "cd" * 30,
        sandbox_id=pod.id,
        name=f"c{n}",
        attempt=0,
        state=state,
        created_at=pod.created_at * 10 + n,
        image="busybox",
        image_id="sha256:" + "1" * 64,
        image_ref="sha256:" + "1" * 64,
        config=config.SerializeToString(),
        log_path=f"c{n}/0.log",
        info={"user": [0, 0, []]},
    )
    store.add_container(record)
    return record


def node(store: Store) -> tuple[list[SandboxRecord], list[ContainerRecord]]:
    pods = [add_pod(store, n, app="web" if n % 2 else "db") for n in range(6)]
    pods.append(add_pod(store, 6, state="creating"))
    containers = [add_container(store, p, k) for p in pods[:6] for k in range(3)]
    containers.append(add_container(store, pods[0], 9, state="creating"))
    return pods, containers


def listed_by_store(store: Store, selector: dict[str, str]) -> tuple[list[str], list[str]]:
    """What a filtered ListPodSandbox and ListContainers held before there were views."""
    pods = [
        r.id
        for r in store.list_sandboxes()
        if r.state != "creating"
        and labels_match(api_pb2.PodSandboxConfig.FromString(r.config).labels, selector)
    ]
    ctrs = [
        r.id
        for r in store.list_containers()
        if r.state != "creating"
        and labels_match(api_pb2.ContainerConfig.FromString(r.config).labels, selector)
    ]
    return pods, ctrs


def listed_by_views(views: Views, selector: dict[str, str]) -> tuple[list[str], list[str]]:
    pods = [i.record.id for i in views.sandbox_listing().select(selector)]
    ctrs = [i.record.id for i in views.container_listing().select(selector)]
    return pods, ctrs


def test_label_selection_answers_what_the_store_did(store: Store) -> None:
    node(store)
    views = Views(store)
    selectors: list[dict[str, str]] = [
        {},
        {"app": "web"},
        {"io.kubernetes.pod.uid": "uid3"},
        {"io.kubernetes.pod.uid": "uid3", "app": "web"},
        {"io.kubernetes.pod.uid": "uid3", "app": "db"},  # both keys exist, never together
        {"io.kubernetes.pod.uid": "uid3", "io.kubernetes.container.name": "c1"},
        {"app": ""},  # an empty value matches only a label that is there and empty
        {"nope": "x"},
    ]
    for selector in selectors:
        assert listed_by_views(views, selector) == listed_by_store(store, selector), selector
    pods, ctrs = listed_by_views(views, {"io.kubernetes.pod.uid": "uid3"})
    assert len(pods) == 1 and len(ctrs) == 3


def test_every_write_is_seen_at_once(store: Store) -> None:
    pods, containers = node(store)
    views = Views(store)
    first = views.container_listing()
    assert views.container_listing() is first, "no change, nothing rebuilt"
    cached = views.get_container(containers[0].id)
    assert cached is not None
    status = views.container_status(cached)

    record = store.get_container(containers[0].id)
    assert record is not None
    record.state, record.exit_code, record.reason, record.finished_at = "exited", 3, "Error", 7
    store.update_container(record)
    seen = views.get_container(record.id)
    assert seen is not None and seen == record
    after = views.container_status(seen)
    assert after == container_status_proto(record) != status
    assert after.state == api_pb2.CONTAINER_EXITED and after.exit_code == 3
    states = {i.record.id: i.message.state for i in views.container_listing().items}
    assert states[record.id] == api_pb2.CONTAINER_EXITED

    sandbox = store.get_sandbox(pods[1].id)
    assert sandbox is not None
    sandbox.state = "notready"
    store.update_sandbox(sandbox)
    seen_pod = views.get_sandbox(sandbox.id)
    assert seen_pod is not None
    assert views.sandbox_status(seen_pod) == sandbox_status_proto(sandbox)

    store.delete_sandbox(pods[2].id)  # its containers go with it
    assert views.get_sandbox(pods[2].id) is None
    assert [c.id for c in views.containers(pods[2].id)] == []
    assert views.containers() == store.list_containers()
    assert views.sandboxes() == store.list_sandboxes()
    new = add_pod(store, 9, app="web")
    assert listed_by_views(views, {"app": "web"}) == listed_by_store(store, {"app": "web"})
    assert new.id in listed_by_views(views, {})[0]


def test_a_write_by_another_connection_is_seen(store: Store, tmp_path: Path) -> None:
    _pods, containers = node(store)
    views = Views(store)
    assert views.get_container(containers[1].id) is not None
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        other.execute("UPDATE containers SET state='exited' WHERE id=?", (containers[1].id,))
        other.execute("DELETE FROM containers WHERE id=?", (containers[2].id,))
    finally:
        other.close()
    seen = views.get_container(containers[1].id)
    assert seen is not None and seen.state == "exited"
    assert views.get_container(containers[2].id) is None
    assert views.containers() == store.list_containers()


def test_statuses_are_built_again_when_the_log_message_changes(store: Store) -> None:
    _pods, containers = node(store)
    views = Views(store)
    record = views.get_container(containers[0].id)
    assert record is not None
    assert views.container_status(record).message == ""
    drop = "log: 3 lines (300 bytes) dropped"
    assert views.container_status(record, drop).message == drop
    assert views.container_status(record).message == ""


def test_id_prefixes_match_as_sqlites_like_did(store: Store) -> None:
    pods, containers = node(store)
    views = Views(store)
    for prefix in ("0", "01", "01AB", "01ab", "zz", "0%", "0_", pods[3].id):
        assert [r.id for r in views.find_sandboxes(prefix)] == [
            r.id for r in store.find_sandboxes(prefix)
        ], prefix
    for prefix in ("01", "0100CD", containers[4].id[:8]):
        assert [r.id for r in views.find_containers(prefix)] == [
            r.id for r in store.find_containers(prefix)
        ], prefix
    assert like_prefix("abc", "AB") and not like_prefix("abc", "b")


def test_every_subset_of_labels_selects_as_labels_match_does() -> None:
    from cri.views import Item, Listing

    labels = [{"a": "1", "b": "2"}, {"a": "1"}, {"b": "2", "c": ""}, {}]
    listing = Listing([Item(n, n, lab) for n, lab in enumerate(labels)])  # type: ignore[type-var]
    pairs = [("a", "1"), ("b", "2"), ("c", ""), ("a", "2")]
    for size in range(len(pairs) + 1):
        for chosen in itertools.combinations(pairs, size):
            selector = dict(chosen)
            expected = [n for n, lab in enumerate(labels) if labels_match(lab, selector)]
            assert [i.record for i in listing.select(selector)] == expected, selector
