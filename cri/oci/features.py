"""What each runtime handler can do on this node: the features the kubelet asks about.

``StatusResponse.runtime_handlers[].features`` tells the kubelet whether a handler takes
recursive read-only mounts and user namespaces; it refuses such pods on a handler that
says no.  Both depend on the OCI runtime *and* the kernel, so both are probed, once:

- recursive read-only: the kernel's mount_setattr (Linux 5.12) and the runtime's ``rro``
  mount option (``<runtime> features``; runc 1.1 has it).
- user namespaces: the runtime can join a user namespace, util-linux ``unshare`` is there
  to create one, the kernel lets overlayfs take idmapped lower layers (5.19), and the
  filesystem holding the image layers accepts idmapped mounts (probed for real).

Each answer keeps its reason, so that a pod asking for a missing feature gets an error
that says what the node lacks.  Checkpointing depends on CRIU, whose own ``criu check``
says whether it can work with this kernel.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri.oci import idmap, userns

__all__ = [
    "HandlerFeatures",
    "criu_unavailable",
    "detect_features",
    "kernel_at_least",
    "runtime_features",
]

log = logging.getLogger(__name__)

#: overlayfs accepts idmapped lower layers from this kernel on.
OVERLAY_IDMAP_KERNEL = (5, 19)


@dataclass(frozen=True, slots=True)
class HandlerFeatures:
    """What one handler supports; a reason is "" when the feature is available."""

    rro_reason: str = "not probed"
    userns_reason: str = "not probed"

    @property
    def recursive_read_only(self) -> bool:
        return not self.rro_reason

    @property
    def user_namespaces(self) -> bool:
        return not self.userns_reason


def kernel_at_least(wanted: tuple[int, int], release: str | None = None) -> bool:
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return match is not None and (int(match[1]), int(match[2])) >= wanted


def runtime_features(binary: str) -> dict[str, Any]:
    """``<binary> features`` as a dict; {} when the runtime cannot say."""
    path = shutil.which(binary)
    if path is None:
        return {}
    try:
        out = subprocess.run([path, "features"], capture_output=True, check=True, timeout=30).stdout
        doc = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _rro_reason(binary: str, features: dict[str, Any]) -> str:
    if not idmap.has_mount_api():
        return f"the kernel ({platform.release()}) has no mount_setattr (Linux 5.12+)"
    if not features:
        return f"{binary} does not report its features (`{binary} features`)"
    if "rro" not in features.get("mountOptions", []):
        return f"{binary} has no 'rro' mount option"
    return ""


def _userns_reason(binary: str, features: dict[str, Any], layers: Path, scratch: Path) -> str:
    namespaces = features.get("linux", {}).get("namespaces", [])
    if not features:
        return f"{binary} does not report its features (`{binary} features`)"
    if "user" not in namespaces:
        return f"{binary} cannot create user namespaces"
    if userns.helper_binary() is None:
        return "util-linux unshare(1) is not installed"
    if not kernel_at_least(OVERLAY_IDMAP_KERNEL):
        return f"overlayfs needs Linux 5.19 for idmapped layers; this is {platform.release()}"
    if not idmap.has_mount_api():
        return f"the kernel ({platform.release()}) has no mount_setattr (Linux 5.12+)"
    return _probe_layers(layers, scratch)


def _probe_layers(layers: Path, scratch: Path) -> str:
    pin = scratch / "userns-probe"
    config = userns.UsernsConfig(
        uids=(userns.IdMap(0, 1 << 30, 1),), gids=(userns.IdMap(0, 1 << 30, 1),)
    )
    try:
        userns.remove_pin(pin)  # a leftover from a daemon killed mid-probe
        userns.create_pod_namespaces(config, pin)
    except Exception as exc:
        return f"cannot create a user namespace: {exc}"
    try:
        layers.mkdir(parents=True, exist_ok=True)
        reason = idmap.probe_idmap(layers, pin)
    finally:
        userns.remove_pin(pin)
    return reason


def detect_features(binary: str, layers: Path, scratch: Path) -> HandlerFeatures:
    """Probe the features of the handler running ``binary`` (blocking; call once)."""
    features = runtime_features(binary)
    result = HandlerFeatures(
        rro_reason=_rro_reason(binary, features),
        userns_reason=_userns_reason(binary, features, layers, scratch),
    )
    for name, reason in (
        ("recursive read-only mounts", result.rro_reason),
        ("user namespaces", result.userns_reason),
    ):
        if reason:
            log.info("handler %s: no %s: %s", binary, name, reason)
    return result


def criu_unavailable() -> str:
    """Why CRIU cannot checkpoint here ("" when ``criu check`` passes).  Blocking."""
    path = shutil.which("criu")
    if path is None:
        return "criu is not installed (Debian package criu)"
    try:
        done = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"criu check could not run: {exc}"
    if done.returncode == 0:
        return ""
    # Its first error is the cause; the lines after it are consequences.
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return f"criu check failed: {lines[0] if lines else f'exit status {done.returncode}'}"
