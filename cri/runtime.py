"""The runtime's shared state: stores, monitors, network, events, recovery.

One :class:`Runtime` lives in the daemon.  The RPC families (``cri.sandboxes``,
``cri.containers``, ...) are functions over it.  On start it reconnects to
every pod's monitor, reconciles SQLite with what the monitors report (an app
that exited while the daemon was down gets its real exit code), and rolls back
objects a previous daemon left half-created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cri import cgroups
from cri.api import api_pb2
from cri.config import Config, images_document
from cri.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cri.events import EventHub
from cri.images.config import load_images_config
from cri.images.manager import ImageManager
from cri.images.rootfs import RootfsManager
from cri.images.service import ImageService
from cri.images.store import ImageStore
from cri.monitors import MonitorConnection
from cri.network.cni import CNINetwork
from cri.oci.exec_helper import ExecHelper
from cri.oci.features import HandlerFeatures, detect_features
from cri.store import ContainerRecord, SandboxRecord, Store

log = logging.getLogger("rktlet.runtime")

_R = TypeVar("_R")

RUNTIME_NAME = "rktlet"
RUNTIME_VERSION = "0.1.0"

#: The app name of a pod's infra (pause) container inside its monitor.
INFRA_APP = "infra"

CONTAINER_STATES = {
    "creating": api_pb2.ContainerState.CONTAINER_UNKNOWN,
    "created": api_pb2.ContainerState.CONTAINER_CREATED,
    "running": api_pb2.ContainerState.CONTAINER_RUNNING,
    "exited": api_pb2.ContainerState.CONTAINER_EXITED,
}


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = Path(config.root)
        self.run_dir = Path(config.run_dir)
        for directory in (self.root, self.run_dir, self.pods_dir, self.containers_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.runc_root = str(self.run_dir / "runc")
        self.store = Store(self.root / "state.db")
        self.image_store = ImageStore(self.root / "images")
        self.images = ImageManager(
            self.image_store, load_images_config({"images": images_document(config)})
        )
        self.rootfs = RootfsManager(self.image_store, self.root / "rootfs")
        self.images.in_use = self.image_volume_user
        self.image_service = ImageService(self.images, self.root / "rootfs")
        self.network = CNINetwork(
            state_dir=str(self.root / "cni"),
            conf_dir=config.cni_conf_dir,
            bin_dirs=[config.cni_bin_dir],
            default_subnet=config.default_subnet,
        )
        self.monitors: dict[str, MonitorConnection] = {}
        self.events = EventHub()
        self.cgroup_layout = cgroups.detect_layout()
        self.cgroup_driver = (
            cgroups.CgroupDriver.SYSTEMD
            if config.cgroup_driver == "systemd"
            else cgroups.CgroupDriver.CGROUPFS
        )
        #: Last CPU sample per cgroup, for usage_nano_cores.
        self.cpu_samples: dict[str, cgroups.CpuStats] = {}
        #: Background tasks (stop waits, event handlers) owned by the runtime.
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Per-object locks so that two RPCs on one pod or container serialise.
        self._locks: dict[str, asyncio.Lock] = {}
        self.streaming: Any = None
        #: Runs every exec (ExecSync and streaming) without an interpreter start each.
        self.exec_helper = ExecHelper(str(self.run_dir / "exec-helper.sock"))
        #: Probed features per OCI runtime binary (they do not change while we run).
        self._features: dict[str, HandlerFeatures] = {}
        self._features_lock = asyncio.Lock()

    # -- paths -----------------------------------------------------------------

    @property
    def pods_dir(self) -> Path:
        return self.run_dir / "pods"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    def pod_run_dir(self, sandbox_id: str) -> str:
        return str(self.pods_dir / sandbox_id)

    def pod_state_dir(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def bundle_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def cgroups_path(self, cgroup_parent: str, object_id: str) -> str:
        """``linux.cgroupsPath`` of a pod's infra container or of a container."""
        return cgroups.cgroups_path(cgroup_parent, object_id, self.cgroup_driver)

    def userns_pin(self, sandbox_id: str) -> Path:
        """Where a pod's user namespace is pinned (pods with ``hostUsers: false``)."""
        return self.run_dir / "userns" / sandbox_id

    def cgroup_dir(self, cgroups_path: str) -> str:
        return cgroups.cgroup_dir(cgroups_path, self.cgroup_driver)

    def lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def forget_lock(self, key: str) -> None:
        self._locks.pop(key, None)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lookups ----------------------------------------------------------------

    def sandbox(self, sandbox_id: str, field: str = "pod_sandbox_id") -> SandboxRecord:
        """A pod by id or unique id prefix (as crictl users type them)."""
        return _lookup(
            sandbox_id, field, "pod sandbox", self.store.get_sandbox, self.store.find_sandboxes
        )

    def container(self, container_id: str, field: str = "container_id") -> ContainerRecord:
        """A container by id or unique id prefix."""
        return _lookup(
            container_id, field, "container", self.store.get_container, self.store.find_containers
        )

    def image_volume_user(self, image_id: str) -> str | None:
        """A container that mounts image ``image_id`` as a volume (RemoveImage refuses)."""
        for record in self.store.list_containers():
            if image_id in record.info.get("image_volumes", {}).values():
                return record.id
        return None

    def monitor(self, sandbox_id: str) -> MonitorConnection:
        connection = self.monitors.get(sandbox_id)
        if connection is None or connection.closed:
            raise Unavailable(f"pod {sandbox_id}: its monitor is not reachable")
        return connection

    async def connect_monitor(self, sandbox_id: str) -> MonitorConnection:
        async def on_event(event: dict[str, Any]) -> None:
            await self.on_monitor_event(sandbox_id, event)

        connection = MonitorConnection(sandbox_id, self.pod_run_dir(sandbox_id), on_event)
        await connection.connect()
        self.monitors[sandbox_id] = connection
        return connection

    # -- events from monitors -----------------------------------------------------

    async def on_monitor_event(self, sandbox_id: str, event: dict[str, Any]) -> None:
        if event.get("event") != "exited":
            return
        app = str(event.get("app", ""))
        if app == INFRA_APP:
            return
        record = self.store.get_container(app)
        if record is None or record.state == "exited":
            return
        self.record_exit(record, event)

    def record_exit(self, record: ContainerRecord, status: dict[str, Any]) -> None:
        """A container's process has ended: persist how, then tell subscribers."""
        record.state = "exited"
        record.finished_at = int(status.get("finished_at") or 0)
        exit_code = status.get("exit_code")
        record.exit_code = int(exit_code) if exit_code is not None else 255
        cgroup_path = record.info.get("cgroups_path", "")
        oom = False
        if cgroup_path:
            with contextlib.suppress(Exception):
                oom = cgroups.oom_killed(self.cgroup_dir(cgroup_path), self.cgroup_layout)
        if oom:
            record.reason = "OOMKilled"
        elif status.get("reason") == "StartError":
            record.reason = "StartError"
        else:
            record.reason = "Completed" if record.exit_code == 0 else "Error"
        record.message = str(status.get("message") or "")
        self.store.update_container(record)
        self.publish(record, api_pb2.ContainerEventType.CONTAINER_STOPPED_EVENT)

    def publish(self, record: ContainerRecord, kind: int) -> None:
        if not self.events.subscribers:
            return  # building the statuses costs a store read and two decodes
        from cri.containers import container_status_proto
        from cri.sandboxes import sandbox_status_proto

        sandbox = self.store.get_sandbox(record.sandbox_id)
        event = api_pb2.ContainerEventResponse(
            container_id=record.id,
            container_event_type=kind,  # type: ignore[arg-type]
            created_at=record.created_at,
            pod_sandbox_status=sandbox_status_proto(self, sandbox) if sandbox else None,
            containers_statuses=[container_status_proto(self, record)]
            if kind != api_pb2.ContainerEventType.CONTAINER_DELETED_EVENT
            else [],
        )
        self.events.publish(event)

    # -- resources ----------------------------------------------------------------

    def check_memory_limit(self, cgroup_dir: str, limit: int, field: str) -> None:
        """Refuse a memory limit below what the cgroup uses and cannot give back.

        Lowering it there would make the kernel OOM-kill the app (v2) or fail with EBUSY
        after reclaiming what it could (v1); the caller should say no first instead.
        """
        if limit <= 0:
            return
        in_use = cgroups.working_set(cgroup_dir, self.cgroup_layout)
        if in_use is not None and limit < in_use:
            raise FailedPrecondition(
                f"{field}.memory_limit_in_bytes: {limit} is below the {in_use} bytes in use "
                f"(working set of cgroup {cgroup_dir}); lowering it would OOM-kill the app"
            )

    # -- features -----------------------------------------------------------------

    async def handler_features(self, handler: str) -> HandlerFeatures:
        """What the runtime handler ``handler`` supports on this node (probed once)."""
        binary = self.config.handler_binary(handler)
        async with self._features_lock:
            found = self._features.get(binary)
            if found is None:
                found = await asyncio.to_thread(
                    detect_features, binary, self.image_store.layers_dir, self.run_dir
                )
                self._features[binary] = found
        return found

    # -- status -------------------------------------------------------------------

    async def status(self, verbose: bool) -> api_pb2.StatusResponse:
        runtime_ready = shutil.which(self.config.runtime) is not None
        network_ready, network_reason = await self.network.check_status()
        conditions = [
            api_pb2.RuntimeCondition(
                type="RuntimeReady",
                status=runtime_ready,
                reason="" if runtime_ready else "RuntimeBinaryMissing",
                message="" if runtime_ready else f"{self.config.runtime} not found in PATH",
            ),
            api_pb2.RuntimeCondition(
                type="NetworkReady",
                status=network_ready,
                reason="" if network_ready else "NetworkPluginNotReady",
                message=network_reason,
            ),
        ]
        response = api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=conditions))
        missing: dict[str, dict[str, str]] = {}
        for name in self.config.handlers():
            features = await self.handler_features(name)
            missing[name] = {
                "recursiveReadOnlyMounts": features.rro_reason,
                "userNamespaces": features.userns_reason,
            }
            response.runtime_handlers.append(
                api_pb2.RuntimeHandler(
                    name=name,
                    features=api_pb2.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=features.recursive_read_only,
                        user_namespaces=features.user_namespaces,
                    ),
                )
            )
        response.features.supplemental_groups_policy = True
        if verbose:
            import json

            response.info["config"] = json.dumps(
                {
                    "root": self.config.root,
                    "runDir": self.config.run_dir,
                    "runtime": self.config.runtime,
                    "cgroups": self.cgroup_layout.mode.value,
                    "cniConfDir": self.config.cni_conf_dir,
                }
            )
            # Why a handler lacks a feature ("" where it has it).
            response.info["featuresMissing"] = json.dumps(missing, sort_keys=True)
        return response

    # -- start and stop -------------------------------------------------------------

    async def recover(self) -> None:
        """Reconnect to monitors and reconcile state after a (re)start."""
        from cri.sandboxes import rollback_half_created

        for sandbox in self.store.list_sandboxes():
            if sandbox.state == "creating":
                log.info("rolling back pod %s, left half-created", sandbox.id)
                await rollback_half_created(self, sandbox)
                continue
            if not os.path.exists(os.path.join(self.pod_run_dir(sandbox.id), "control.sock")):
                await self._monitor_lost(sandbox)
                continue
            try:
                connection = await self.connect_monitor(sandbox.id)
                apps = (await connection.request("status"))["apps"]
            except Exception as exc:
                log.warning("pod %s: cannot reach its monitor: %s", sandbox.id, exc)
                await self._monitor_lost(sandbox)
                continue
            by_name = {app["app"]: app for app in apps}
            for record in self.store.list_containers(sandbox.id):
                app = by_name.get(record.id)
                if record.state == "creating":
                    from cri.containers import rollback_container

                    await rollback_container(self, record)
                    continue
                if app is None:
                    if record.state in ("created", "running"):
                        self.record_exit(record, {"exit_code": 255, "message": "lost"})
                    continue
                if app["state"] == "exited" and record.state != "exited":
                    self.record_exit(record, app)
                elif app["state"] == "running" and record.state == "created":
                    record.state = "running"
                    record.started_at = int(app.get("started_at") or 0)
                    self.store.update_container(record)
        with contextlib.suppress(Exception):
            self.rootfs.cleanup_orphans()

    async def _monitor_lost(self, sandbox: SandboxRecord) -> None:
        """The pod's monitor is gone (node reboot, killed): nothing of it runs."""
        for record in self.store.list_containers(sandbox.id):
            if record.state in ("created", "running", "creating"):
                record.state = "exited"
                record.exit_code = 255
                record.reason = "Error"
                record.message = "the pod's monitor is gone; the container is not running"
                self.store.update_container(record)
        if sandbox.state == "ready":
            sandbox.state = "notready"
            self.store.update_sandbox(sandbox)

    async def close(self) -> None:
        """Stop serving; pods and their monitors go on running."""
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.monitors.values()):
            await connection.close()
        self.monitors.clear()
        self.events.close()
        with contextlib.suppress(Exception):
            await self.images.aclose()
        self.exec_helper.stop()
        self.store.close()


def _lookup(
    key: str,
    field: str,
    kind: str,
    get: Callable[[str], _R | None],
    find: Callable[[str], list[_R]],
) -> _R:
    if not key:
        raise InvalidArgument(f"{field}: must not be empty")
    record = get(key)
    if record is None:
        matches = find(key)
        if len(matches) > 1:
            raise InvalidArgument(f"{field}: {key!r} names {len(matches)} objects; give more")
        record = matches[0] if matches else None
    if record is None:
        raise NotFound(f"{field}: {kind} {key!r} not found")
    return record


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI label selectors: every key of the selector with the same value."""
    return all(labels.get(key) == value for key, value in selector.items())
