"""Selections of pods and containers, label selectors, and discovery on real directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from iottymux.logdiscover import NodeDiscovery
from iottymux.logselect import (
    LabelSelector,
    PodDir,
    PodPattern,
    Selection,
    SelectionError,
    newest_per_pod,
    pod_dirs,
)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "web", "x": "y"}, True),
        ("app=web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app!=web", {"app": "web"}, False),
        ("app in (web, api)", {"app": "api"}, True),
        ("app notin (web,api)", {"app": "api"}, False),
        ("app notin (web,api)", {}, True),
        ("app,tier=front", {"app": "x", "tier": "front"}, True),
        ("app,tier=front", {"tier": "front"}, False),
        ("!canary", {"app": "x"}, True),
        ("!canary", {"canary": ""}, False),
        (
            "app.kubernetes.io/name=web,env in (prod)",
            {"app.kubernetes.io/name": "web", "env": "prod"},
            True,
        ),
        ("empty=", {"empty": ""}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


@pytest.mark.parametrize("bad", ["", "a b", "app in ()", "=x", "app=web=x", "a in (b"])
def test_bad_label_selectors_are_refused(bad: str) -> None:
    with pytest.raises(SelectionError):
        LabelSelector.parse(bad)


def test_patterns_match_whole_names() -> None:
    pattern = PodPattern.parse("default/web-.*/app|side")
    web = PodDir("/x/default_web-7f9c_u1", "default", "web-7f9c", "u1")
    webby = PodDir("/x/default_webby_u2", "default", "webby", "u2")
    other_ns = PodDir("/x/prod_web-1_u3", "prod", "web-1", "u3")
    selection = Selection(patterns=(pattern,))
    assert selection.pod_wanted(web, None) is True
    assert selection.pod_wanted(webby, None) is False
    assert selection.pod_wanted(other_ns, None) is False
    assert [c for c in ("app", "side", "apps", "db") if selection.container_wanted(web, c)] == [
        "app",
        "side",
    ]
    # "web" names the pod web, not webby: whole-name matches keep old targets exact.
    exact = Selection(patterns=(PodPattern.parse("default/web"),))
    assert not exact.pod_name_wanted(webby)
    for bad in ("default", "default/", "a/b/c/d", "default/(unclosed"):
        with pytest.raises(SelectionError):
            PodPattern.parse(bad)


def test_namespaces_containers_and_labels() -> None:
    selection = Selection.build(
        namespaces=["default", "prod"],
        bare_pods=["api-.*"],
        container="app|sidecar",
        exclude_container="sidecar",
        selector="tier=back",
    )
    api = PodDir("/r/prod_api-1_u", "prod", "api-1", "u")
    labels = {"u": {"tier": "back"}}
    assert selection.pod_wanted(api, lambda pod: labels.get(pod.uid)) is True
    assert selection.pod_wanted(api, lambda pod: {"tier": "front"}) is False
    # Labels not known yet: undecided, remembered to be asked again.
    assert selection.pod_wanted(api, lambda pod: None) is None
    assert api.path in selection.unknown
    assert not selection.pod_wanted(PodDir("/r/kube_api-1_u", "kube", "api-1", "u"), None)
    assert selection.container_wanted(api, "app")
    assert not selection.container_wanted(api, "sidecar")
    assert not selection.container_wanted(api, "db")
    assert Selection.build(all_namespaces=True).several_namespaces
    assert not Selection.build(namespaces=["a"]).several_namespaces


def make_pod(root: Path, name: str, *containers: str) -> Path:
    pod = root / name
    for container in containers:
        (pod / container).mkdir(parents=True)
        (pod / container / "0.log").write_bytes(b"")
    pod.mkdir(parents=True, exist_ok=True)
    return pod


def test_scan_takes_the_newest_pod_of_each_name(tmp_path: Path) -> None:
    old = make_pod(tmp_path, "default_web_old", "app")
    new = make_pod(tmp_path, "default_web_new", "app")
    os.utime(old, ns=(1, 1))
    make_pod(tmp_path, "default_db_u1", "postgres")
    (tmp_path / "notapod").mkdir()
    (tmp_path / "stray.log").write_bytes(b"")
    assert {p.pod for p in pod_dirs(str(tmp_path))} == {"web", "db"}
    newest = newest_per_pod(pod_dirs(str(tmp_path)))
    assert sorted(p.path for p in newest) == sorted([str(new), str(tmp_path / "default_db_u1")])
    discovery = NodeDiscovery(str(tmp_path), Selection.build(patterns=["default/web"]))
    sources = discovery.scan()
    assert [(s.info.pod, s.info.uid, s.info.container) for s in sources] == [("web", "new", "app")]
