"""Removing what a container left behind when its pod's monitor is gone.

Normally the monitor kills, reaps and ``runc delete``s its apps.  When the
monitor has died (kill -9, OOM kill, crash) or never finished a create, the
daemon does it instead, with nothing but the OCI runtime and the cgroup tree:

1. ``runc kill --all <id> KILL`` and ``runc delete --force <id>`` -- runc
   knows the container's processes and cgroups when its state is intact;
2. whatever is still in the container's cgroup (runc's state may be torn by a
   runc killed mid-create) is SIGKILLed through ``cgroup.procs`` until the
   cgroup is empty, in every hierarchy (v1, v2, hybrid);
3. the cgroup directories are removed in every hierarchy, and runc's state
   directory if runc left it.

Every step tolerates what an earlier run (or runc itself) already removed, so a
cleanup can be repeated after a daemon restart until nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time

from cri import cgroups
from cri.errors import RktletError
from cri.oci.runc import Runc

log = logging.getLogger("rktlet.orphans")

#: How long to keep killing a cgroup's processes before reporting it as stuck.
KILL_DEADLINE = 10.0


def _cgroup_procs(cgroup: str, layout: cgroups.CgroupLayout) -> set[int]:
    """Processes of ``cgroup`` in any hierarchy (v1 controllers may disagree)."""
    pids: set[int] = set()
    for path in layout.all_paths(cgroup):
        with contextlib.suppress(OSError, ValueError), open(f"{path}/cgroup.procs") as f:
            pids.update(int(x) for x in f.read().split())
    return pids


def kill_cgroup(cgroup: str, layout: cgroups.CgroupLayout) -> bool:
    """SIGKILL every process of ``cgroup`` until it is empty; False if it never empties."""
    deadline = time.monotonic() + KILL_DEADLINE
    delay = 0.001
    while pids := _cgroup_procs(cgroup, layout):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)  # a killed process leaves cgroup.procs once it has exited
        delay = min(delay * 2, 0.05)
    return True


def kill_runtime_commands(root: str, container_id: str) -> int:
    """SIGKILL runc commands still working on ``container_id`` (a dead monitor's create).

    Such a command, orphaned by its monitor, would otherwise finish after the
    cleanup and bring the container's state and cgroup back.
    """
    wanted = (root.encode(), container_id.encode())
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if wanted[0] in argv and wanted[1] in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


async def remove_container(
    runc: Runc,
    container_id: str,
    cgroup: str,
    layout: cgroups.CgroupLayout,
    *,
    orphaned: bool = False,
) -> list[str]:
    """Kill and delete one container without its monitor; returns what is left, if any.

    ``cgroup`` is the container's cgroup directory (relative to a hierarchy's
    root), or empty when the container never got one.  When neither runc's
    state nor the cgroup exists there is nothing to do, and no runc is run.
    ``orphaned``: the monitor that ran runc for this container is dead, so a runc
    command of its may still be running; it is killed first.
    """
    killed = (
        await asyncio.to_thread(kill_runtime_commands, runc.root, container_id) if orphaned else 0
    )
    if killed:
        log.info("container %s: killed a runc command its dead monitor had started", container_id)
    state_dir = os.path.join(runc.root, container_id)
    paths = layout.all_paths(cgroup) if cgroup else []
    if not os.path.isdir(state_dir) and not any(os.path.isdir(p) for p in paths):
        return []
    with contextlib.suppress(RktletError, OSError):
        await runc.kill(container_id, signal.SIGKILL, all=True)
    try:
        await runc.delete(container_id, force=True)
    except (RktletError, OSError) as exc:
        log.info("container %s: runc delete --force: %s", container_id, exc)
    left: list[str] = []
    if cgroup:
        if not await asyncio.to_thread(kill_cgroup, cgroup, layout):
            log.warning("container %s: processes of cgroup %s would not die", container_id, cgroup)
        left = await asyncio.to_thread(cgroups.remove_cgroup, cgroup, layout)
    if os.path.isdir(state_dir):
        # runc forgot a container it never finished creating; its state is junk now.
        shutil.rmtree(state_dir, ignore_errors=True)
    if left:
        log.warning("container %s: cgroups left behind: %s", container_id, ", ".join(left))
    return left
