"""The runtime's shared state: stores, monitors, network, events, monitor deaths.

One :class:`Runtime` lives in the daemon.  The RPC families (``cri.sandboxes``,
``cri.containers``, ...) are functions over it, and it knows none of them: what
it publishes it builds with :mod:`cri.statuses`.  Start-up recovery, which needs
the families' rollbacks, is :mod:`cri.recovery`, one layer up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cri import cgroups, metrics, orphans, validate
from cri.api import api_pb2
from cri.config import Config, images_document
from cri.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cri.events import EventHub
from cri.images.config import load_images_config
from cri.images.manager import ImageManager
from cri.images.rootfs import RootfsManager
from cri.images.service import ImageService
from cri.images.store import ImageStore
from cri.images.usage import UsageCache
from cri.monitors import MonitorConnection
from cri.network.cni import CNINetwork
from cri.oci import userns
from cri.oci.exec_helper import ExecHelper
from cri.oci.features import HandlerFeatures, detect_features
from cri.oci.runc import Runc
from cri.statuses import container_status_proto, sandbox_status_proto
from cri.store import ContainerRecord, SandboxRecord, Store
from cri.views import Views

log = logging.getLogger("rktlet.runtime")

_R = TypeVar("_R")

RUNTIME_NAME = "rktlet"
RUNTIME_VERSION = "0.1.0"

#: The app name of a pod's infra (pause) container inside its monitor.
INFRA_APP = "infra"

#: ContainerStatus.reason of a container ended because its pod's monitor died.
MONITOR_DIED = "MonitorDied"


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = Path(config.root)
        self.run_dir = Path(config.run_dir)
        # The root and the run dir are crossed, never listed, by others: a user
        # namespace's root (nobody on the host) must reach its rootfs below the
        # root, and rktlet.sock (0660) is for the CRI group.  What holds container
        # environments is the owner's alone: the bundles' directory (0700, each
        # config.json 0600) and state.db with its WAL files (0600).
        for directory, mode in (
            (self.root, 0o711),
            (self.run_dir, 0o711),
            (self.pods_dir, 0o700),
            (self.containers_dir, 0o700),
        ):
            directory.mkdir(parents=True, exist_ok=True, mode=mode)
            if directory.stat().st_mode & 0o7777 != mode:  # an older install made 0711
                try:
                    directory.chmod(mode)
                except OSError as exc:  # a read-only disk: serve it as it is
                    log.warning("cannot make %s mode %o: %s", directory, mode, exc)
        self.runc_root = str(self.run_dir / "runc")
        self.store = Store(self.root / "state.db")
        #: The records and CRI messages of the store's current state, for the calls the
        #: kubelet repeats (read-only: changes go through ``store``).
        self.views = Views(self.store)
        self.image_store = ImageStore(self.root / "images")
        self.images = ImageManager(
            self.image_store, load_images_config({"images": images_document(config)})
        )
        self.rootfs = RootfsManager(self.image_store, self.root / "rootfs")
        self.images.in_use = self.image_volume_user
        #: Image store and writable-layer usage, measured every fs_usage_period seconds
        #: once :meth:`start` has run (ImageFsInfo, container stats).
        self.fs_usage = UsageCache(self.image_store, self.rootfs.dir, config.fs_usage_period)
        self.images.on_change = self.fs_usage.images_changed
        self.image_service = ImageService(self.images, self.rootfs.dir, self.fs_usage)
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
        #: Log drops reported by monitors, by container (see note_log_stats).
        self.log_drops: dict[str, dict[str, Any]] = {}
        #: Monitor deaths being handled, by pod (several RPCs may notice one death).
        self._deaths: dict[str, asyncio.Task[None]] = {}
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

    def forget_container(self, container_id: str) -> None:
        """Drop everything kept in memory about a removed container (or pod)."""
        self._locks.pop(container_id, None)
        self.log_drops.pop(container_id, None)
        # CPU samples are kept by cgroup directory, which ends in the object's id.
        for directory in [d for d in self.cpu_samples if d.endswith(container_id)]:
            del self.cpu_samples[directory]
        self.fs_usage.forget(container_id)

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

    def peek_sandbox(self, sandbox_id: str, field: str = "pod_sandbox_id") -> SandboxRecord:
        """:meth:`sandbox` from the views: the same record, to read and not to change."""
        views = self.views
        return _lookup(sandbox_id, field, "pod sandbox", views.get_sandbox, views.find_sandboxes)

    def peek_container(self, container_id: str, field: str = "container_id") -> ContainerRecord:
        """:meth:`container` from the views: the same record, to read and not to change."""
        views = self.views
        return _lookup(container_id, field, "container", views.get_container, views.find_containers)

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

        connection = MonitorConnection(
            sandbox_id, self.pod_run_dir(sandbox_id), on_event, self._on_monitor_lost
        )
        await connection.connect()
        self.monitors[sandbox_id] = connection
        return connection

    async def retire_monitor(self, sandbox_id: str) -> MonitorConnection | None:
        """Take a pod's connection out of service before the daemon ends its monitor on purpose."""
        connection = self.monitors.pop(sandbox_id, None)
        if connection is not None:
            connection.retire()
        return connection

    # -- a monitor that died -------------------------------------------------------

    def _on_monitor_lost(self, connection: MonitorConnection) -> None:
        if self.monitors.get(connection.sandbox_id) is not connection:
            return  # replaced or retired: not ours to mourn
        self.spawn(self._confirm_lost(connection), f"monitor-lost-{connection.sandbox_id[:12]}")

    async def _confirm_lost(self, connection: MonitorConnection) -> None:
        sandbox_id = connection.sandbox_id
        # A monitor's sockets close before its pidfd turns readable; give it a moment.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.exited.wait(), 2.0)
        if connection.monitor_alive():
            log.warning("pod %s: lost the connection to a live monitor; reconnecting", sandbox_id)
            self.monitors.pop(sandbox_id, None)
            try:
                await self.connect_monitor(sandbox_id)
                return
            except Exception as exc:
                log.warning("pod %s: monitor %d unreachable: %s", sandbox_id, connection.pid, exc)
                return  # Stop/Remove will end it (see monitor_or_cleanup)
        await self.monitor_died(sandbox_id, connection.pid)

    async def monitor_or_cleanup(self, sandbox_id: str) -> MonitorConnection | None:
        """The pod's live monitor, or None once its loss has been handled.

        Stop and Remove call this: they must succeed without a monitor.  A
        monitor that still runs but cannot be reached (wedged, stopped) is
        killed first -- the pod's logs and attach are dead with it anyway.
        """
        connection = self.monitors.get(sandbox_id)
        if connection is not None and not connection.closed:
            return connection
        record = self.store.get_sandbox(sandbox_id)
        if record is None or death_handled(record):
            return None
        if record.info.get("monitor_lost"):  # being handled now, or cut short by a restart
            await self.monitor_died(sandbox_id, int(record.info["monitor_lost"].get("pid", 0)))
            return None
        if os.path.exists(os.path.join(self.pod_run_dir(sandbox_id), "control.sock")):
            try:
                return await self.connect_monitor(sandbox_id)
            except Exception as exc:
                log.warning("pod %s: cannot reach its monitor: %s", sandbox_id, exc)
        pid = self._monitor_pid(record)
        if pid and _kill_pid(pid, self.pod_run_dir(sandbox_id)):
            log.warning("pod %s: killed its unreachable monitor (pid %d)", sandbox_id, pid)
        await self.monitor_died(sandbox_id, pid)
        return None

    def _monitor_pid(self, record: SandboxRecord) -> int:
        state = _read_monitor_state(self.pod_run_dir(record.id))
        pid = state.get("monitor", {}).get("pid") if state else None
        return int(pid or record.info.get("monitor_pid") or 0)

    async def monitor_died(self, sandbox_id: str, pid: int = 0) -> None:
        """Record a monitor's death once, however it was noticed; callers share the work."""
        task = self._deaths.get(sandbox_id)
        if task is None:
            task = self.spawn(
                self._handle_death(sandbox_id, pid), f"monitor-died-{sandbox_id[:12]}"
            )
            self._deaths[sandbox_id] = task
            task.add_done_callback(lambda _t: self._deaths.pop(sandbox_id, None))
        await asyncio.shield(task)

    async def _handle_death(self, sandbox_id: str, pid: int) -> None:
        """Nothing of a pod may run without its monitor: end it all, say why, keep the record.

        An app whose monitor died has lost its stdout/stderr reader (its writes
        now fail with EPIPE or SIGPIPE), its log, attach and reaper; leaving it
        running would report a container whose output silently vanishes.  So
        every container still running is killed and reported EXITED with the
        reason ``MonitorDied``; one whose exit the monitor had already recorded
        in its state file keeps its real exit code.
        """
        record = self.store.get_sandbox(sandbox_id)
        connection = self.monitors.pop(sandbox_id, None)
        if connection is not None:
            await connection.close()
        if record is None or death_handled(record) or record.state == "creating":
            return  # a pod being created is unwound by RunPodSandbox or by recovery
        metrics.MONITOR_DEATHS.inc()
        log.warning(
            "pod %s: its monitor (pid %d) died; ending the pod's containers", sandbox_id, pid
        )
        # Before any event, so that watchers see the pod down first; "handled" is
        # set last, and a daemon killed before that handles the death again on restart.
        record.info["monitor_lost"] = {"pid": pid, "at": time.time_ns(), "handled": False}
        if record.state == "ready":
            record.state = "notready"
        self.store.update_sandbox(record)
        state = _read_monitor_state(self.pod_run_dir(sandbox_id)) or {}
        apps = state.get("apps") or {}
        runc = self.runc_for(record)
        message = (
            f"the pod's monitor (pid {pid}) died; the container's output could no longer "
            "be logged, so it was killed"
        )
        for container in self.store.list_containers(sandbox_id):
            if container.state not in ("created", "running"):
                continue  # "creating": its CreateContainer (or recovery) rolls it back
            await orphans.remove_container(
                runc,
                container.id,
                self._cgroup_of(container.info),
                self.cgroup_layout,
                orphaned=True,
            )
            app = apps.get(container.id) or {}
            if app.get("state") == "exited":
                self.record_exit(container, app)
            else:
                self.record_exit(
                    container,
                    {"exit_code": 255, "reason": MONITOR_DIED, "message": message},
                )
        await orphans.remove_container(
            runc, sandbox_id, self._cgroup_of(record.info), self.cgroup_layout, orphaned=True
        )
        record = self.store.get_sandbox(sandbox_id) or record
        record.info["monitor_lost"]["handled"] = True
        self.store.update_sandbox(record)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.pod_run_dir(sandbox_id), "control.sock"))

    def _cgroup_of(self, info: Mapping[str, Any]) -> str:
        path = str(info.get("cgroups_path") or "")
        return self.cgroup_dir(path) if path else ""

    def runc_for(self, sandbox: SandboxRecord) -> Runc:
        return Runc(self.runc_root, binary=self.config.handler_binary(sandbox.runtime_handler))

    async def remove_leftovers(
        self, sandbox: SandboxRecord, object_id: str, cgroup_path: str
    ) -> None:
        """Kill and delete a container (or the pod's infra) that no monitor will."""
        cgroup = self.cgroup_dir(cgroup_path) if cgroup_path else ""
        connection = self.monitors.get(sandbox.id)
        await orphans.remove_container(
            self.runc_for(sandbox),
            object_id,
            cgroup,
            self.cgroup_layout,
            orphaned=connection is None or connection.closed,
        )

    # -- events from monitors -----------------------------------------------------

    async def on_monitor_event(self, sandbox_id: str, event: dict[str, Any]) -> None:
        if event.get("event") == "log":
            self.note_log_stats(str(event.get("app", "")), event, announce=True)
            return
        if event.get("event") != "exited":
            return
        app = str(event.get("app", ""))
        if app == INFRA_APP:
            return
        record = self.store.get_container(app)
        if record is None or record.state == "exited":
            return
        self.record_exit(record, event)

    def note_log_stats(self, container_id: str, stats: Mapping[str, Any], announce: bool) -> None:
        """Remember a container's log drops (for ContainerStatus); warn once per episode."""
        if not container_id or (not stats.get("dropped_lines") and not stats.get("dropping")):
            return
        self.log_drops[container_id] = {
            key: stats.get(key)
            for key in ("dropped_lines", "dropped_bytes", "last_error", "dropping")
        }
        if not announce:
            return
        if stats.get("dropping"):
            log.warning(
                "container %s: cannot write its log (%s); output is dropped until it can",
                container_id,
                stats.get("last_error") or "write failed",
            )
        else:
            log.warning(
                "container %s: log writes work again; %s lines (%s bytes) were dropped",
                container_id,
                stats.get("dropped_lines"),
                stats.get("dropped_bytes"),
            )

    def log_drop_message(self, container_id: str) -> str:
        """ContainerStatus words for a container whose log lost output, else ''."""
        drops = self.log_drops.get(container_id)
        if not drops:
            return ""
        text = f"log: {drops['dropped_lines']} lines ({drops['dropped_bytes']} bytes) dropped"
        if drops.get("dropping"):
            text += f", still dropping ({drops.get('last_error') or 'write failed'})"
        return text

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
        elif status.get("reason") in ("StartError", MONITOR_DIED):
            record.reason = str(status["reason"])
        else:
            record.reason = "Completed" if record.exit_code == 0 else "Error"
        record.message = str(status.get("message") or "")
        self.store.update_container(record)
        self.publish(record, api_pb2.ContainerEventType.CONTAINER_STOPPED_EVENT)

    def publish(self, record: ContainerRecord, kind: int) -> None:
        if not self.events.subscribers:
            return  # building the statuses costs a store read and two decodes
        sandbox = self.store.get_sandbox(record.sandbox_id)
        event = api_pb2.ContainerEventResponse(
            container_id=record.id,
            container_event_type=kind,  # type: ignore[arg-type]
            created_at=record.created_at,
            pod_sandbox_status=sandbox_status_proto(sandbox) if sandbox else None,
            containers_statuses=[container_status_proto(record, self.log_drop_message(record.id))]
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
            # What the daemon keeps in memory per pod and container: it must
            # shrink back when they are removed (see tests/faults/test_memory.py).
            response.info["bookkeeping"] = json.dumps(
                {
                    "locks": len(self._locks),
                    "monitors": len(self.monitors),
                    "logDrops": len(self.log_drops),
                    "cpuSamples": len(self.cpu_samples),
                    "monitorDeaths": len(self._deaths),
                    "tasks": len(self._tasks),
                    "fsUsageLayers": self.fs_usage.layers_kept,
                }
            )
            # Why a handler lacks a feature ("" where it has it).
            response.info["featuresMissing"] = json.dumps(missing, sort_keys=True)
        return response

    # -- start and stop -------------------------------------------------------------

    def start(self) -> None:
        """Start the background work of a serving daemon (after recovery)."""
        self.fs_usage.start()

    async def close(self) -> None:
        """Stop serving; pods and their monitors go on running."""
        await self.fs_usage.stop()
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


def write_private(path: Path, text: str) -> None:
    """Write a file only root may read (a bundle's config.json carries the environment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def death_handled(record: SandboxRecord) -> bool:
    """Whether a pod's monitor death was seen to the end (its containers ended)."""
    lost = record.info.get("monitor_lost")
    return isinstance(lost, dict) and bool(lost.get("handled"))


def _read_monitor_state(run_dir: str) -> dict[str, Any] | None:
    from iottymux.state import read_state

    try:
        return read_state(os.path.join(run_dir, "state.json"))
    except (OSError, ValueError):
        return None


def _kill_pid(pid: int, run_dir: str) -> bool:
    """SIGKILL the monitor ``pid`` if it is still the one serving ``run_dir``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    if run_dir.encode() not in cmdline:
        return False  # the pid was reused by something else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _lookup(
    key: str,
    field: str,
    kind: str,
    get: Callable[[str], _R | None],
    find: Callable[[str], list[_R]],
) -> _R:
    validate.required_id(key, field)  # the same rule for every RPC that takes an id
    record = get(key)
    if record is None:
        matches = find(key)
        if len(matches) > 1:
            raise InvalidArgument(f"{field}: {key!r} names {len(matches)} objects; give more")
        record = matches[0] if matches else None
    if record is None:
        raise NotFound(f"{field}: {kind} {key!r} not found")
    return record


def pod_userns(record: SandboxRecord) -> userns.UsernsConfig | None:
    """The maps of the pod's user namespace, None when it uses the host's."""
    doc = record.info.get("userns")
    return userns.UsernsConfig.from_json(doc) if doc else None


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI label selectors: every key of the selector with the same value."""
    return all(labels.get(key) == value for key, value in selector.items())
