"""The CNI runtime: attaches pods to the network by running CNI plugins (spec 1.0.0).

Theory of operation
-------------------
One network is in force at a time: the first valid configuration in the conf dir, in
lexical order, or -- when there is none -- the built-in bridge network.  The conf dir
is scanned again on every :meth:`CNINetwork.setup` and :meth:`CNINetwork.status`, so a
configuration dropped in by a network add-on takes effect without a restart.

``setup`` runs ADD through the plugin chain, handing each plugin the previous one's
result (``prevResult``) and the runtime capabilities it declared (``runtimeConfig``).
The final result, together with the exact configuration and arguments used, is cached
in ``<state_dir>/cni/results`` (as libcni does), so that ``teardown`` runs DEL -- in
reverse order, with the cached ``prevResult`` -- against what ADD really did, even if
the configuration file changed or disappeared meanwhile.  A failed ADD is undone by a
DEL of the plugins that ran, so nothing is left half-attached; if that undo fails too,
the partial state is cached so that a later ``teardown`` retries it.

Plugins cannot be interrupted safely, so a cancelled ``setup`` lets its ADD finish in
the background and then removes the attachment again (:meth:`CNINetwork.wait_idle`
waits for such clean-ups).  Operations on one pod are serialised, as the spec requires;
different pods proceed in parallel.

Plugins run as child processes of the calling thread, so they act on *its* network
namespace: the host's in the daemon, a test's own namespace in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri.api import api_pb2
from cri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from .cniconfig import (
    BUILTIN_SOURCE,
    ConfigInvalid,
    LoadedConfig,
    NetworkConfigList,
    default_config_list,
    derive_plugin_config,
    load_config_dir,
    parse_config_list,
)
from .cnitypes import CNIError, CNIErrorCode, CNIResult, parse_plugin_error, parse_result

__all__ = [
    "DEFAULT_BIN_DIRS",
    "DEFAULT_CONF_DIR",
    "NETWORK_NOT_READY_REASON",
    "CNINetwork",
    "NetworkResult",
    "port_mappings_from_cri",
]

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
# The CRI RuntimeCondition reason the kubelet expects for NetworkReady=false.
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"

_CACHE_KIND = "rktletCNICacheV1"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class NetworkResult:
    """What a pod got from the network: its addresses and the full CNI result.

    ``ip`` is the primary address (IPv4 preferred, as the kubelet's default family is),
    ``additional_ips`` the others, both without prefix length; they fill CRI's
    ``PodSandboxNetworkStatus.ip`` and ``additional_ips``.
    """

    network: str
    interface: str
    ip: str
    additional_ips: tuple[str, ...]
    result: CNIResult

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip, *self.additional_ips) if self.ip else self.additional_ips


def port_mappings_from_cri(mappings: Sequence[api_pb2.PortMapping]) -> list[dict[str, Any]]:
    """CRI port mappings -> the ``portMappings`` capability (CNI conventions).

    Mappings without a host port expose nothing on the host and are left out, as in
    containerd.  Raises :class:`InvalidArgument` naming the offending field.
    """
    out: list[dict[str, Any]] = []
    for i, pm in enumerate(mappings):
        where = f"port_mappings[{i}]"
        if pm.host_port <= 0:
            continue
        if pm.host_port > 65535:
            raise InvalidArgument(f"{where}.host_port: {pm.host_port} is not a port (1-65535)")
        if not 0 < pm.container_port <= 65535:
            raise InvalidArgument(
                f"{where}.container_port: {pm.container_port} is not a port (1-65535)"
            )
        protocol = _PROTOCOLS.get(pm.protocol)
        if protocol is None:
            raise InvalidArgument(f"{where}.protocol: unknown protocol {pm.protocol}")
        entry: dict[str, Any] = {
            "hostPort": pm.host_port,
            "containerPort": pm.container_port,
            "protocol": protocol,
        }
        if pm.host_ip:
            try:
                ipaddress.ip_address(pm.host_ip)
            except ValueError:
                raise InvalidArgument(
                    f"{where}.host_ip: {pm.host_ip!r} is not an IP address"
                ) from None
            entry["hostIP"] = pm.host_ip
        out.append(entry)
    return out


def _cni_args(pod_id: str, namespace: str, name: str, uid: str) -> str:
    for field_name, value in (
        ("metadata.namespace", namespace),
        ("metadata.name", name),
        ("metadata.uid", uid),
    ):
        if any(c in value for c in ";=\0\n"):
            raise InvalidArgument(f"{field_name}: {value!r} may not contain ';', '=' or newlines")
    pairs = (
        # Without it, plugins built on CNI's CommonArgs reject the K8S_* keys.
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", name),
        ("K8S_POD_INFRA_CONTAINER_ID", pod_id),
        ("K8S_POD_UID", uid),
    )
    return ";".join(f"{k}={v}" for k, v in pairs)


def _validate_pod_id(pod_id: str) -> None:
    if not _ID_RE.match(pod_id):
        raise InvalidArgument(
            f"pod_sandbox_id: {pod_id!r} is not a valid CNI container ID "
            "(a letter or digit, then letters, digits, '_', '.', '-')"
        )


def _primary_ips(result: CNIResult, ifname: str) -> tuple[str, ...]:
    candidates = [
        ip
        for ip in result.ips
        if ip.interface is not None
        and 0 <= ip.interface < len(result.interfaces)
        and result.interfaces[ip.interface].name == ifname
        and result.interfaces[ip.interface].sandbox
    ] or list(result.sandbox_ips())
    ordered = sorted(candidates, key=lambda ip: ip.address.version)
    return tuple(dict.fromkeys(str(ip.address.ip) for ip in ordered))


class _PodLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass(frozen=True, slots=True)
class _Invocation:
    """Everything about one attachment that ADD, CHECK and DEL must agree on."""

    pod_id: str
    netns: str
    ifname: str
    cni_args: str
    capability_args: Mapping[str, Any]


class CNINetwork:
    """Pod networking through CNI plugins.

    ``state_dir`` holds the result cache and the built-in network's IPAM state.
    ``conf_dir`` is scanned for ``.conflist``/``.conf``/``.json`` files; ``bin_dirs``
    are searched for plugin executables (and passed on as ``CNI_PATH``).  With
    ``use_default`` (the default), the built-in bridge network on ``default_subnet`` is
    used whenever the conf dir holds no valid configuration.
    """

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str],
        conf_dir: str | os.PathLike[str] | None = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_BIN_DIRS,
        use_default: bool = True,
        default_subnet: str = "10.88.0.0/16",
        default_network_name: str = "rktlet",
        default_bridge: str = "rktlet0",
        ifname: str = "eth0",
        plugin_timeout: float = 120.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.conf_dir = Path(conf_dir) if conf_dir is not None else None
        self.bin_dirs = tuple(os.fspath(d) for d in bin_dirs)
        self.ifname = ifname
        self.plugin_timeout = plugin_timeout
        self.cache_dir = self.state_dir / "cni" / "results"
        # Built eagerly so that a bad subnet or bridge name fails at start-up.
        self._default = (
            default_config_list(
                ipam_data_dir=self.state_dir / "cni" / "ipam",
                subnet=default_subnet,
                name=default_network_name,
                bridge=default_bridge,
            )
            if use_default
            else None
        )
        self._locks: dict[str, _PodLock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._reported: set[tuple[str, str]] = set()
        self._versions: dict[tuple[str, int, int, int], list[str]] = {}

    # -- configuration and readiness -------------------------------------------------

    def load_config(self) -> LoadedConfig:
        """Scan the conf dir now; fall back to the built-in network.  Logs new rejects."""
        loaded = load_config_dir(self.conf_dir)
        for path, reason in loaded.skipped:
            if (path, reason) not in self._reported:
                self._reported.add((path, reason))
                log.warning("skipping CNI config %s: %s", path, reason)
        if loaded.config is None and self._default is not None:
            return LoadedConfig(self._default, loaded.skipped)
        return loaded

    def find_plugin(self, name: str) -> str | None:
        """The path of plugin executable ``name`` in the bin dirs, or None."""
        for directory in self.bin_dirs:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        return None

    def _not_found(self, name: str) -> str:
        return f"CNI plugin {name!r} not found in {':'.join(self.bin_dirs) or '(no bin dirs)'}"

    def status(self) -> tuple[bool, str]:
        """(ready, message) for the CRI NetworkReady condition; cheap, no plugin runs.

        Not ready when no configuration is usable or one of its plugin binaries is
        missing; the message says which (use :data:`NETWORK_NOT_READY_REASON` as the
        condition's reason).
        """
        return self._static_status(self.load_config())

    def _static_status(self, loaded: LoadedConfig) -> tuple[bool, str]:
        config = loaded.config
        if config is None:
            why = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in loaded.skipped)
            return False, (
                f"no valid CNI network configuration in {self.conf_dir}"
                + (f" ({why})" if why else "")
            )
        missing = [b for b in config.binaries() if self.find_plugin(b) is None]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            return False, (
                f"network {config.name!r} ({config.source}): CNI plugin {names} not found "
                f"in {':'.join(self.bin_dirs)}"
            )
        return True, ""

    async def check_status(self) -> tuple[bool, str]:
        """:meth:`status`, then ask the plugins: VERSION (is our cniVersion spoken?) and,
        for spec 1.1.0 networks, STATUS.

        VERSION answers are remembered per binary (inode, size, mtime), so calling this
        on every CRI Status RPC costs a plugin run only for STATUS-capable networks.
        """

        def scan() -> tuple[LoadedConfig, tuple[bool, str]]:
            loaded = self.load_config()
            return loaded, self._static_status(loaded)

        loaded, (ready, message) = await asyncio.to_thread(scan)
        config = loaded.config
        if not ready or config is None:
            return ready, message
        for binary in config.binaries():
            try:
                supported = await self._supported_versions(binary, config)
            except CNIError as exc:
                return False, str(exc)
            if config.cni_version not in supported:
                return False, (
                    f"network {config.name!r}: plugin {binary!r} does not support cniVersion "
                    f"{config.cni_version} (it supports {', '.join(supported)})"
                )
        if config.supports_status:
            env = self._env("STATUS", None)
            for plugin in config.plugins:
                conf = derive_plugin_config(config, plugin, prev_result=None, capability_args={})
                try:
                    await self._exec(plugin["type"], env, conf, config.name)
                except CNIError as exc:
                    return False, str(exc)
        return True, ""

    async def _supported_versions(self, binary: str, config: NetworkConfigList) -> list[str]:
        path = self.find_plugin(binary)
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        key = (path or binary, st.st_ino, st.st_size, st.st_mtime_ns) if st else None
        if key is not None and key in self._versions:
            return self._versions[key]
        out = await self._exec(
            binary, self._env("VERSION", None), {"cniVersion": config.cni_version}, config.name
        )
        try:
            reply = json.loads(out)
            supported = reply["supportedVersions"]
            if not isinstance(supported, list) or not all(isinstance(v, str) for v in supported):
                raise ValueError("supportedVersions is not a list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            raise CNIError(
                CNIErrorCode.DECODE_FAILURE,
                "malformed VERSION reply",
                f"{exc}; output: {out[:500].decode(errors='replace')}",
                command="VERSION",
                plugin=binary,
                network=config.name,
            ) from None
        if key is not None:
            self._versions[key] = supported
        return supported

    # -- attachments ------------------------------------------------------------------

    async def setup(
        self,
        pod_id: str,
        netns_path: str | os.PathLike[str],
        namespace: str,
        name: str,
        uid: str,
        port_mappings: Sequence[api_pb2.PortMapping] = (),
        *,
        capability_args: Mapping[str, Any] | None = None,
    ) -> NetworkResult:
        """Attach the pod whose network namespace is ``netns_path``; run CNI ADD.

        ``capability_args`` adds runtime capabilities beyond ``portMappings`` (for
        example ``bandwidth``); each goes only to plugins that declare it.  On failure
        every plugin that ran is undone (DEL) and :class:`CNIError` is raised.  Raises
        :class:`AlreadyExists` if the pod is attached already (tear it down first),
        :class:`FailedPrecondition` if the namespace does not exist and
        :class:`InvalidArgument` for bad identifiers or port mappings.
        """
        _validate_pod_id(pod_id)
        netns = os.fspath(netns_path)
        caps: dict[str, Any] = {"portMappings": port_mappings_from_cri(port_mappings)}
        caps.update(capability_args or {})
        inv = _Invocation(pod_id, netns, self.ifname, _cni_args(pod_id, namespace, name, uid), caps)
        if not os.path.exists(netns):
            raise FailedPrecondition(f"network namespace {netns} does not exist")
        task = asyncio.ensure_future(self._setup_locked(inv))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller gave up (the kubelet's deadline, say): a plugin still running
            # is killed, as containerd's go-cni does when its context ends, and _add
            # DELs the plugins that ran -- a hung plugin must not hold the pod.
            task.cancel()
            undo = asyncio.ensure_future(self._undo_after_cancel(task, inv))
            self._background.add(undo)
            undo.add_done_callback(self._background.discard)
            raise

    async def teardown(
        self,
        pod_id: str,
        netns_path: str | os.PathLike[str] | None,
        namespace: str,
        name: str,
        uid: str,
        port_mappings: Sequence[api_pb2.PortMapping] = (),
    ) -> None:
        """Detach the pod; run CNI DEL.  Idempotent: tearing down twice is fine.

        Uses the configuration, arguments and result cached by :meth:`setup` when there
        is one, else the current configuration.  The namespace may already be gone (pass
        its old path, or None to use the cached one); ``namespace``/``name``/``uid`` and
        ``port_mappings`` matter only when nothing is cached, so a restarted daemon can
        reconcile :meth:`cached_pod_ids` knowing just the pod ID.

        Every plugin gets its DEL even if an earlier one fails, so that e.g. an IPAM
        allocation is released; the first error is then raised and the cache kept, so
        that a retry has the same information.
        """
        _validate_pod_id(pod_id)
        netns = os.fspath(netns_path) if netns_path else ""
        caps = {"portMappings": port_mappings_from_cri(port_mappings)}
        inv = _Invocation(pod_id, netns, self.ifname, _cni_args(pod_id, namespace, name, uid), caps)
        async with self._pod_lock(pod_id):
            await self._teardown_unlocked(inv)

    async def check(
        self,
        pod_id: str,
        netns_path: str | os.PathLike[str],
        namespace: str,
        name: str,
        uid: str,
    ) -> None:
        """Run CNI CHECK against the cached ADD result; raises :class:`CNIError` if the
        network is not as set up, :class:`NotFound` if the pod is not attached.  A no-op
        for networks with ``disableCheck`` or a spec version before 0.4.0."""
        _validate_pod_id(pod_id)
        async with self._pod_lock(pod_id):
            cached = await asyncio.to_thread(self._read_cache, pod_id)
            if cached is None or cached.get("result") is None:
                raise NotFound(f"pod sandbox {pod_id} has no network attachment")
            if not cached.get("complete", True):
                raise FailedPrecondition(
                    f"pod sandbox {pod_id}: a failed network set-up could not be undone; "
                    "tear it down"
                )
            config = self._cached_config(cached)
            if config is None:
                config = (await asyncio.to_thread(self.load_config)).config
            if config is None or not config.supports_check:
                return
            env = self._env(
                "CHECK",
                _Invocation(
                    pod_id,
                    os.fspath(netns_path),
                    self.ifname,
                    _cni_args(pod_id, namespace, name, uid),
                    cached.get("capabilityArgs") or {},
                ),
            )
            for plugin in config.plugins:
                conf = derive_plugin_config(
                    config,
                    plugin,
                    prev_result=cached["result"],
                    capability_args=cached.get("capabilityArgs") or {},
                )
                await self._exec(plugin["type"], env, conf, config.name, command="CHECK")

    def cached_pod_ids(self) -> list[str]:
        """Pods with a cached attachment (set up, or left half-undone, and not torn down):
        what a restarted daemon must reconcile."""
        suffix = f"-{self.ifname}.json"
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(suffix)] for n in names if n.endswith(suffix))

    async def wait_idle(self) -> None:
        """Wait for the background clean-ups of cancelled :meth:`setup` calls."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- internals --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _pod_lock(self, pod_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(pod_id)
        if entry is None:
            entry = self._locks[pod_id] = _PodLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[pod_id]

    def _env(self, command: str, inv: _Invocation | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        # Plugins exec iptables, ip6tables and their IPAM plugins through PATH.
        env.setdefault("PATH", _DEFAULT_PATH)
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = os.pathsep.join(self.bin_dirs)
        if inv is not None:
            env["CNI_CONTAINERID"] = inv.pod_id
            env["CNI_NETNS"] = inv.netns
            env["CNI_IFNAME"] = inv.ifname
            env["CNI_ARGS"] = inv.cni_args
        return env

    async def _exec(
        self,
        plugin: str,
        env: Mapping[str, str],
        stdin: Mapping[str, Any],
        network: str,
        *,
        command: str | None = None,
    ) -> bytes:
        """Run one plugin; return its stdout, or raise :class:`CNIError`."""
        command = command or env["CNI_COMMAND"]
        path = self.find_plugin(plugin)
        if path is None:
            raise CNIError(
                CNIErrorCode.RUNTIME,
                self._not_found(plugin),
                command=command,
                plugin=plugin,
                network=network,
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
            )
        except OSError as exc:
            raise CNIError(
                CNIErrorCode.RUNTIME,
                f"cannot execute {path}: {exc.strerror or exc}",
                command=command,
                plugin=plugin,
                network=network,
            ) from exc
        data = json.dumps(stdin).encode()
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(data), self.plugin_timeout)
        except BaseException as exc:
            # Time-out or cancellation: never leave a plugin running unsupervised.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError):
                raise CNIError(
                    CNIErrorCode.RUNTIME,
                    f"plugin did not finish within {self.plugin_timeout:g}s and was killed",
                    command=command,
                    plugin=plugin,
                    network=network,
                ) from None
            raise
        if proc.returncode != 0:
            raise parse_plugin_error(
                stdout,
                stderr,
                proc.returncode if proc.returncode is not None else -1,
                command=command,
                plugin=plugin,
                network=network,
            )
        if stderr.strip():
            log.debug("CNI %s %s stderr: %s", command, plugin, stderr.decode(errors="replace"))
        return stdout

    async def _setup_locked(self, inv: _Invocation) -> NetworkResult:
        config = (await asyncio.to_thread(self.load_config)).config
        if config is None:
            message = (await asyncio.to_thread(self.status))[1]
            raise CNIError(CNIErrorCode.RUNTIME, message or "no CNI network configuration")
        async with self._pod_lock(inv.pod_id):
            if await asyncio.to_thread(self._read_cache, inv.pod_id) is not None:
                raise AlreadyExists(
                    f"pod sandbox {inv.pod_id} is already attached to the network; "
                    "tear it down first"
                )
            return await self._add(config, inv)

    async def _add(self, config: NetworkConfigList, inv: _Invocation) -> NetworkResult:
        env = self._env("ADD", inv)
        prev: dict[str, Any] | None = None
        ran = 0
        try:
            for index, plugin in enumerate(config.plugins):
                conf = derive_plugin_config(
                    config, plugin, prev_result=prev, capability_args=inv.capability_args
                )
                if self.find_plugin(plugin["type"]) is not None:
                    ran = index + 1
                out = await self._exec(plugin["type"], env, conf, config.name)
                if out.strip():
                    prev = self._decode_result(out, plugin["type"], config.name)
            if prev is None:
                raise CNIError(
                    CNIErrorCode.RUNTIME,
                    "no plugin returned a result",
                    command="ADD",
                    network=config.name,
                )
            result = parse_result(prev, default_version=config.cni_version)
            ips = _primary_ips(result, inv.ifname)
            if not ips:
                raise CNIError(
                    CNIErrorCode.RUNTIME,
                    f"the result assigns no IP address to {inv.ifname}",
                    json.dumps(prev),
                    command="ADD",
                    network=config.name,
                )
            await asyncio.to_thread(self._write_cache, config, inv, prev)
        except BaseException as exc:
            await self._rollback(config, inv, config.plugins[:ran], prev, exc)
            raise
        log.info("pod sandbox %s attached to network %s: %s", inv.pod_id, config.name, ips)
        return NetworkResult(
            network=config.name,
            interface=inv.ifname,
            ip=ips[0],
            additional_ips=ips[1:],
            result=result,
        )

    def _decode_result(self, out: bytes, plugin: str, network: str) -> dict[str, Any]:
        try:
            obj = json.loads(out)
            parse_result(obj)
        except ValueError as exc:
            raise CNIError(
                CNIErrorCode.DECODE_FAILURE,
                "plugin returned a malformed result",
                f"{exc}; output: {out[:500].decode(errors='replace')}",
                command="ADD",
                plugin=plugin,
                network=network,
            ) from None
        assert isinstance(obj, dict)
        return obj

    async def _rollback(
        self,
        config: NetworkConfigList,
        inv: _Invocation,
        plugins: Sequence[Mapping[str, Any]],
        prev: Mapping[str, Any] | None,
        cause: BaseException,
    ) -> None:
        errors = await self._delete(config, inv, plugins, prev)
        if not errors:
            await asyncio.to_thread(self._remove_cache, inv.pod_id)
            return
        # Cache what we know, so that teardown() can finish the job later.
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._write_cache, config, inv, prev, False)
        for err in errors:
            cause.add_note(f"undoing the failed ADD also failed: {err}")
        log.error("pod sandbox %s: undoing failed CNI ADD failed: %s", inv.pod_id, errors[0])

    async def _delete(
        self,
        config: NetworkConfigList,
        inv: _Invocation,
        plugins: Sequence[Mapping[str, Any]],
        prev: Mapping[str, Any] | None,
    ) -> list[CNIError]:
        """DEL ``plugins`` in reverse order; return the errors instead of stopping."""
        env = self._env("DEL", inv)
        if inv.netns and not os.path.exists(inv.netns):
            # The spec lets DEL run without a namespace; plugins then clean up what they can.
            env["CNI_NETNS"] = ""
        errors: list[CNIError] = []
        for plugin in reversed(plugins):
            if self.find_plugin(plugin["type"]) is None:
                # It cannot be run, so it cannot clean up; refusing would block pod
                # removal forever.
                log.warning(
                    "pod sandbox %s: skipping DEL: %s", inv.pod_id, self._not_found(plugin["type"])
                )
                continue
            conf = derive_plugin_config(
                config,
                plugin,
                prev_result=prev if config.passes_prev_result_on_del else None,
                capability_args=inv.capability_args,
            )
            try:
                await self._exec(plugin["type"], env, conf, config.name)
            except CNIError as exc:
                errors.append(exc)
        return errors

    async def _teardown_unlocked(self, inv: _Invocation) -> None:
        cached = await asyncio.to_thread(self._read_cache, inv.pod_id)
        config: NetworkConfigList | None = None
        prev: Mapping[str, Any] | None = None
        if cached is not None:
            config = self._cached_config(cached)
            prev = cached.get("result")
            # What ADD used wins: DEL must describe the same attachment.
            inv = _Invocation(
                inv.pod_id,
                inv.netns or str(cached.get("netns") or ""),
                inv.ifname,
                str(cached.get("cniArgs") or inv.cni_args),
                cached.get("capabilityArgs") or inv.capability_args,
            )
        if config is None:
            config = (await asyncio.to_thread(self.load_config)).config
        if config is None:
            raise CNIError(
                CNIErrorCode.RUNTIME,
                "no CNI network configuration to run DEL with",
                command="DEL",
            )
        errors = await self._delete(config, inv, config.plugins, prev)
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"also: {other}")
            raise first
        await asyncio.to_thread(self._remove_cache, inv.pod_id)
        log.info("pod sandbox %s detached from network %s", inv.pod_id, config.name)

    async def _undo_after_cancel(
        self, task: asyncio.Future[NetworkResult], inv: _Invocation
    ) -> None:
        try:
            await task
        except BaseException:
            return  # The failed ADD was rolled back by _add itself.
        try:
            async with self._pod_lock(inv.pod_id):
                await self._teardown_unlocked(inv)
        except Exception:
            log.exception("pod sandbox %s: undoing a cancelled set-up failed", inv.pod_id)

    # -- the result cache -------------------------------------------------------------

    def _cache_path(self, pod_id: str) -> Path:
        return self.cache_dir / f"{pod_id}-{self.ifname}.json"

    def _read_cache(self, pod_id: str) -> dict[str, Any] | None:
        path = self._cache_path(pod_id)
        try:
            with open(path, "rb") as f:
                obj = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # A torn or corrupt entry still means "attached"; DEL with the current config.
            log.warning("unreadable CNI cache %s: %s", path, exc)
            return {}
        if not isinstance(obj, dict) or obj.get("kind") != _CACHE_KIND:
            log.warning("ignoring unknown CNI cache format in %s", path)
            return {}
        return obj

    def _cached_config(self, cached: Mapping[str, Any]) -> NetworkConfigList | None:
        raw = cached.get("config")
        if not isinstance(raw, dict):
            return None
        try:
            return parse_config_list(raw, str(cached.get("source", BUILTIN_SOURCE)))
        except ConfigInvalid as exc:
            log.warning("cached CNI config for %s is invalid (%s)", cached.get("containerId"), exc)
            return None

    def _write_cache(
        self,
        config: NetworkConfigList,
        inv: _Invocation,
        result: Mapping[str, Any] | None,
        complete: bool = True,
    ) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {
            "kind": _CACHE_KIND,
            "containerId": inv.pod_id,
            "ifName": inv.ifname,
            "networkName": config.name,
            "netns": inv.netns,
            "cniArgs": inv.cni_args,
            "capabilityArgs": dict(inv.capability_args),
            "source": config.source,
            "config": dict(config.raw),
            "result": result,
            "complete": complete,
        }
        path = self._cache_path(inv.pod_id)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _remove_cache(self, pod_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._cache_path(pod_id).unlink()
