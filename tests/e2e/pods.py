"""Static pods: manifests in a node's ``staticPodPath``, and their state as the kubelet sees it.

A manifest is written under a dot-name and renamed into place, so the kubelet (which
ignores dot-files) never reads half of one.  The kubelet names a static pod
``<name>-<node name>``; :class:`StaticPod` keeps both names.  Its state comes from the
kubelet's own ``/pods`` (in standalone mode ``items`` is ``null`` when no pod runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

from tests.e2e.cluster import Node, wait_until

NAMESPACE = "default"


def container(name: str, image: str, command: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        **fields,
    }


def shell(name: str, image: str, script: str, **fields: Any) -> dict[str, Any]:
    return container(name, image, ["sh", "-c", script], **fields)


class StaticPod:
    def __init__(self, node: Node, name: str, spec: dict[str, Any]) -> None:
        self.node = node
        self.name = name
        #: the kubelet's name for it (and the API server's mirror pod's)
        self.full_name = f"{name}-{node.name}"
        self.spec = spec
        self.manifest = node.kubelet.static_pod_dir / f"{name}.json"

    def write(self) -> None:
        document = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": {"e2e": self.name}},
            "spec": self.spec,
        }
        hidden = self.manifest.with_name("." + self.manifest.name)
        hidden.write_text(json.dumps(document, indent=1))
        os.rename(hidden, self.manifest)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.manifest.unlink()

    # -- the kubelet's view ------------------------------------------------------------------

    def pod(self) -> dict[str, Any] | None:
        reply = self.node.http_get(f"{self.node.kubelet_url}/pods")
        reply.raise_for_status()
        for item in reply.json().get("items") or []:
            if item["metadata"]["name"] == self.full_name:
                return dict(item)
        return None

    def status(self) -> dict[str, Any]:
        pod = self.pod()
        return dict(pod.get("status") or {}) if pod else {}

    @property
    def uid(self) -> str:
        pod = wait_until(f"{self.full_name} known to the kubelet", self.pod, 60)
        return str(pod["metadata"]["uid"])

    def container_status(self, name: str) -> dict[str, Any]:
        for status in self.status().get("containerStatuses") or []:
            if status["name"] == name:
                return dict(status)
        return {}

    def wait_running(self, *names: str, timeout: float = 90) -> None:
        """Until every container named (all of the spec's by default) runs."""
        wanted = names or tuple(c["name"] for c in self.spec["containers"])

        def running() -> bool:
            states = {s["name"]: s for s in self.status().get("containerStatuses") or []}
            return all("running" in (states.get(n) or {}).get("state", {}) for n in wanted)

        wait_until(f"{self.full_name} running {wanted}", running, timeout)

    def wait_container(
        self, name: str, predicate: Any, what: str, timeout: float = 90
    ) -> dict[str, Any]:
        """Until ``predicate(status of container name)`` holds; that status."""

        def check() -> dict[str, Any] | None:
            status = self.container_status(name)
            return status if status and predicate(status) else None

        return wait_until(f"{self.full_name}/{name}: {what}", check, timeout)

    def wait_terminated(self, name: str, timeout: float = 90) -> dict[str, Any]:
        status = self.wait_container(
            name, lambda s: "terminated" in s.get("state", {}), "terminated", timeout
        )
        return dict(status["state"]["terminated"])

    def container_id(self, name: str) -> str:
        """The runtime's id of the container (``containerID`` without its scheme)."""
        status = self.wait_container(name, lambda s: s.get("containerID"), "has an id")
        return str(status["containerID"]).split("://", 1)[1]


@contextlib.contextmanager
def static_pod(
    node: Node,
    prefix: str,
    containers: list[dict[str, Any]],
    *,
    running: bool = True,
    **spec: Any,
) -> Iterator[StaticPod]:
    """A static pod on ``node`` for the ``with`` block (running first, by default)."""
    spec.setdefault("terminationGracePeriodSeconds", 1)
    pod = StaticPod(node, f"{prefix}-{secrets.token_hex(3)}", {"containers": containers, **spec})
    pod.write()
    try:
        if running:
            pod.wait_running()
        yield pod
    finally:
        pod.remove()
