"""The kubelet end-to-end suite's fixtures: nodes per runtime, rktlet and containerd.

Every test runs twice, against rktlet and against Debian's containerd 1.6, to show it
checks the kubelet's contract rather than rktlet's habits.  The nodes are started once
per runtime (pytest groups the tests by runtime and tears one set down before starting
the next; the last goes when the package's tests end):

- ``node``: a standalone kubelet (static pods, no API server) on the runtime;
- ``cluster`` (for one module at a time): etcd + kube-apiserver and two registered
  nodes, each a kubelet and a runtime in a namespace of its own, joined by a veth pair.

Without the binaries (see :mod:`tests.e2e.tools`) every test skips with one reason.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench._cri_peer import NetNS
from tests.e2e import tools
from tests.e2e.cluster import ApiServer, Node, cleanups, link, lone_address, wait_until

RUNTIMES = ("rktlet", "containerd")
#: Set-ups that failed, by fixture and runtime: later tests fail at once with the same
#: reason instead of starting everything again.
_FAILED: dict[tuple[str, str], str] = {}


@contextlib.contextmanager
def _once(what: str, runtime: str) -> Iterator[None]:
    key = (what, runtime)
    if key in _FAILED:
        pytest.fail(f"{what} on {runtime} could not be set up: {_FAILED[key]}")
    try:
        yield
    except Exception as exc:
        _FAILED[key] = f"{type(exc).__name__}: {exc}"[:2000]
        raise


@pytest.fixture(scope="session")
def e2e_tools() -> tools.Tools:
    reason = tools.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return tools.tools()


@pytest.fixture(scope="session")
def e2e_layout(e2e_tools: tools.Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.build_images import build_all

    return build_all(tmp_path_factory.mktemp("e2e-images") / "layout")


# Package scope: everything goes when the suite ends, not at the end of a whole test
# session that goes on with other packages (the kubelet changes host sysctls).
@pytest.fixture(scope="package", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _node(
    base: Path,
    e2e_tools: tools.Tools,
    runtime: str,
    layout: Path,
    *,
    token: str,
    suffix: str,
    netns: NetNS,
    ip: str,
    subnet: str,
) -> Node:
    return Node(
        base / suffix,
        e2e_tools,
        runtime,
        token=token,
        name_suffix=suffix,
        netns=netns,
        ip=ip,
        pod_subnet=subnet,
        layout=layout,
        pycache=base / "pycache",
    )


@pytest.fixture(scope="package")
def node(
    runtime: str,
    e2e_tools: tools.Tools,
    e2e_layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    """A standalone kubelet on ``runtime``, in a network namespace of its own."""
    base = tmp_path_factory.mktemp(f"e2e-{runtime}")
    token = secrets.token_hex(3)
    with cleanups() as steps:
        with _once("node", runtime):
            netns = NetNS(f"rktlet-e2e-{runtime[0]}").create()
            steps.append(netns.delete)
            lone_address(netns, "10.213.1.1")
            one = _node(
                base,
                e2e_tools,
                runtime,
                e2e_layout,
                token=token,
                suffix="a",
                netns=netns,
                ip="10.213.1.1",
                subnet="10.214.1.0/24",
            )
            steps.append(one.cleanup)
            one.start()
        yield one


@dataclass
class Cluster:
    api: ApiServer
    nodes: list[Node]


@pytest.fixture(scope="module")
def cluster(
    runtime: str,
    e2e_tools: tools.Tools,
    e2e_layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """An API server and two registered nodes on ``runtime``."""
    base = tmp_path_factory.mktemp(f"e2e-cluster-{runtime}")
    token = secrets.token_hex(3)
    with cleanups() as steps:
        with _once("cluster", runtime):
            spaces = []
            for _ in range(2):
                netns = NetNS(f"rktlet-e2e-{runtime[0]}").create()
                steps.append(netns.delete)
                spaces.append(netns)
            ips = ["10.213.2.1", "10.213.2.2"]
            link(spaces[0], ips[0], spaces[1], ips[1])
            api = ApiServer(base / "api", e2e_tools, spaces[0], ips[0])
            steps.append(api.stop)
            api.start()
            nodes = []
            for i, (netns, ip) in enumerate(zip(spaces, ips, strict=True)):
                one = _node(
                    base,
                    e2e_tools,
                    runtime,
                    e2e_layout,
                    token=token,
                    suffix="bc"[i],
                    netns=netns,
                    ip=ip,
                    subnet=f"10.214.{2 + i}.0/24",
                )
                steps.append(one.cleanup)
                one.start(kubeconfig=api.kubeconfig)
                nodes.append(one)
            for one in nodes:
                # A kubelet registers in the background; "wait" fails on an unknown node.
                def registered(name: str = one.name) -> bool:
                    return api.kubectl("get", "node", name, check=False).returncode == 0

                wait_until(f"node {one.name} registered", registered, 90, step=0.5)
                api.kubectl(
                    "wait",
                    "--for=condition=Ready",
                    f"node/{one.name}",
                    "--timeout=90s",
                    timeout=120,
                )
        yield Cluster(api, nodes)
