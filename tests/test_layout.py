"""The shape of the code: which module may import which.

The import graph is read from the source (AST), every ``import`` statement
counted wherever it stands: at module level, inside a function (a deferred
import is still a dependency), under ``if TYPE_CHECKING:``.  The checks are of
the daemon (``cri/``: no cycle, imports pointing one way through its layers), of
the command-line client (``cri/client/``: nothing of the daemon), and of the
per-pod monitor (stdlib and iottymux only, measured in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def module_files(package: str) -> dict[str, Path]:
    """Every module of ``package`` (a top-level directory of the repository), by name."""
    found: dict[str, Path] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(tree: ast.AST, name: str, is_package: bool) -> Iterable[str]:
    """The dotted names ``tree`` imports; ``from a import b`` yields ``a.b`` and ``a``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports.

    Parent packages count (importing ``cri.images.store`` runs ``cri/images/__init__.py``
    first), except a module's own: its package is being imported already when it runs.
    """
    files = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for dotted in _imported(tree, name, path.name == "__init__.py"):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in files and not (name + ".").startswith(prefix + "."):
                    targets.add(prefix)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it starts), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_function_level_import(tmp_path: Path) -> None:
    # The checker itself: a cycle closed only by an import inside a function counts.
    graph = {"p.a": {"p.b"}, "p.b": set()}
    assert find_cycle(graph) is None
    tree = ast.parse("import os\ndef f() -> None:\n    from p.a import thing\n")
    assert "p.a" in set(_imported(tree, "p.b", False))
    graph["p.b"] = {"p.a"}
    assert find_cycle(graph) == ["p.a", "p.b", "p.a"]


def test_no_import_cycle_in_cri() -> None:
    graph = import_graph("cri")
    assert "cri.runtime" in graph and "cri.client.main" in graph  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


#: The daemon's layers, bottom first: a module imports only from its own layer or
#: below.  Modules of cri/ not named here (cri.api, cri.images.*, cri.network.*,
#: cri.oci.*, errors, config, store ...) are the foundation, layer 0.
DAEMON_LAYERS: tuple[tuple[str, ...], ...] = (
    ("cri.runtime",),
    (
        "cri.sandboxes",
        "cri.containers",
        "cri.execs",
        "cri.stats",
        "cri.pod_metrics",
        "cri.streaming_runtime",
    ),
    ("cri.recovery", "cri.service", "cri.metrics_server"),
    ("cri.server",),
    ("cri.cli",),
)


def _layer(module: str) -> int:
    for level, members in enumerate(DAEMON_LAYERS, start=1):
        if module in members:
            return level
    if module == "cri.client" or module.startswith("cri.client."):
        return len(DAEMON_LAYERS)  # the client sits beside the daemon, under cli only
    return 0


def test_daemon_imports_point_down() -> None:
    """server -> service -> RPC families -> runtime -> stores, never back up."""
    graph = import_graph("cri")
    for members in DAEMON_LAYERS:
        for module in members:
            assert module in graph, f"{module} is named in DAEMON_LAYERS but does not exist"
    upward = [
        f"{source} (layer {_layer(source)}) imports {target} (layer {_layer(target)})"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer(target) > _layer(source)
    ]
    assert upward == []


#: What only the daemon runs.  The client may use the common foundations (the CRI
#: messages, errors, the image store library for its offline image commands).
DAEMON_ONLY = (
    "cri.runtime",
    "cri.recovery",
    "cri.service",
    "cri.server",
    "cri.sandboxes",
    "cri.containers",
    "cri.execs",
    "cri.stats",
    "cri.pod_metrics",
    "cri.streaming_runtime",
    "cri.metrics",
    "cri.metrics_server",
    "cri.monitors",
    "cri.store",
    "cri.statuses",
    "cri.orphans",
    "cri.events",
    "cri.cgroups",
    "cri.config",
    "cri.network",
    "cri.oci",
)


def _daemon_only(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in DAEMON_ONLY)


def test_client_source_imports_nothing_of_the_daemon() -> None:
    graph = import_graph("cri")
    client = {name: targets for name, targets in graph.items() if name.startswith("cri.client")}
    assert {"cri.client.pods", "cri.client.apps", "cri.client.images"} <= set(client)
    assert {
        (name, target)
        for name, targets in client.items()
        for target in targets
        if _daemon_only(target)
    } == set()


def test_client_loads_nothing_of_the_daemon() -> None:
    """Imported for real, every client module and all they pull in transitively."""
    modules = sorted(name for name in module_files("cri") if name.startswith("cri.client"))
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "cri.client.main" in loaded and "grpc" in loaded  # it did import the client
    assert [name for name in loaded if _daemon_only(name)] == []


MONITOR_ENTRIES = ["iottymux.monitor_cmd", "iottymux.monitor", "iottymux.forkserver"]


@pytest.mark.parametrize("entry", MONITOR_ENTRIES)
def test_monitor_loads_only_stdlib_and_iottymux(entry: str) -> None:
    """The per-pod monitor starts in a few ms and stays small: no third-party import."""
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({entry!r})\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert entry in loaded
    foreign = [
        name
        for name in loaded
        if name != "__main__" and name.split(".")[0] not in (*sys.stdlib_module_names, "iottymux")
    ]
    assert foreign == []
