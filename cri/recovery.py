"""What a starting daemon does before it serves: pick up where the last one stopped.

The pods, their monitors and containers outlive the daemon.  A new daemon
reconnects to every pod's monitor, reconciles SQLite with what the monitors
report (an app that exited while no daemon ran gets its real exit code), handles
monitor deaths it missed, and rolls back the pods and containers a killed daemon
left half-created (state ``creating``).

This sits above the RPC families because the rollbacks are theirs: a pod is torn
down as RemovePodSandbox does it, a container as a failed CreateContainer is.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from cri import sandboxes
from cri.containers import rollback_container
from cri.runtime import Runtime, death_handled
from cri.store import SandboxRecord

log = logging.getLogger("rktlet.recovery")


async def recover(rt: Runtime) -> None:
    """Reconnect to monitors and reconcile state after a (re)start."""
    for sandbox in rt.store.list_sandboxes():
        if sandbox.state == "creating":
            log.info("rolling back pod %s, left half-created", sandbox.id)
            await rollback_half_created(rt, sandbox)
            continue
        apps: dict[str, Any] | None = None
        if not death_handled(sandbox):
            try:
                connection = await rt.monitor_or_cleanup(sandbox.id)
                if connection is not None:
                    reply = await connection.request("status", timeout=30)
                    apps = {app["app"]: app for app in reply["apps"]}
            except Exception as exc:
                log.warning("pod %s: cannot reach its monitor: %s", sandbox.id, exc)
        for record in rt.store.list_containers(sandbox.id):
            if record.state == "creating":
                await rollback_container(rt, record)
                continue
            if apps is None:
                continue
            app = apps.get(record.id)
            if app is not None and isinstance(app.get("log"), dict):
                rt.note_log_stats(record.id, app["log"], announce=False)
            if app is None:
                if record.state in ("created", "running"):
                    rt.record_exit(record, {"exit_code": 255, "message": "lost"})
                continue
            if app["state"] == "exited" and record.state != "exited":
                rt.record_exit(record, app)
            elif app["state"] == "running" and record.state == "created":
                record.state = "running"
                record.started_at = int(app.get("started_at") or 0)
                rt.store.update_container(record)
    with contextlib.suppress(Exception):
        rt.rootfs.cleanup_orphans()


async def rollback_half_created(rt: Runtime, record: SandboxRecord) -> None:
    """Undo what a daemon that died during RunPodSandbox had made."""
    await sandboxes.teardown(rt, record, remove=True)
    rt.store.delete_sandbox(record.id)
