"""CRI daemons for side-by-side benchmarks: rktlet and containerd, each in a netns of its own.

Shared by the benchmarks that drive rktlet and a peer runtime through the same CRI
client code (the project's generated stubs, ``cri.api``):

- :class:`NetNS` makes a network namespace (only ``lo`` up), runs Python code inside
  it from a thread that has ``setns``-ed into it, and deletes it again;
- :func:`start_registry` runs Debian's ``docker-registry`` on 127.0.0.1 *inside* such a
  namespace and pushes fixture images to it;
- :func:`write_conflist` writes a bridge + host-local + portmap + loopback CNI network
  whose IPAM state stays in a directory of ours (never /var/lib/cni);
- :class:`RktletDaemon` runs ``rktlet serve``; :class:`ContainerdDaemon` runs Debian's
  containerd with its CRI plugin on a private socket, root, state and runc root under
  directories of ours, a generated ``config.toml`` (version 2) and the registry as a
  plain-HTTP host.  Both are started through ``nsenter --net=…``; the client reaches
  them through their unix sockets, which no network namespace hides.

Each daemon's :meth:`~CriDaemon.cleanup` removes what it made, even after a failure:
pods through CRI first, then the daemon, then by force whatever is left (OCI runtime
containers, shims or monitors found by our own paths on their command lines, processes
left in our cgroups, mounts under our directories, cgroup directories, temp dirs).
Nothing here touches the host's network: every interface, route and iptables rule the
runtimes make lives in the namespaces, which are deleted at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cri.api import api_pb2, api_pb2_grpc
from fixtures.registry import Registry, push_layout

REPO = Path(__file__).resolve().parents[1]
CNI_BIN_DIR = "/usr/lib/cni"
CRI_NAMESPACE = "k8s.io"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
#: containerd's shims put their sockets in /run/containerd/s whatever the state dir;
#: if that directory is ours (it did not exist before), it goes at the end.
_RUN_CONTAINERD = Path("/run/containerd")
_RUN_CONTAINERD_EXISTED = _RUN_CONTAINERD.exists()

T = TypeVar("T")


class PeerError(RuntimeError):
    """A daemon could not be started or used; the message says why."""


# -- small process and filesystem helpers ---------------------------------------------------


def run_quiet(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def pids_with_cmdline(*needles: str) -> list[int]:
    """Processes (not this one) whose command line contains every one of ``needles``."""
    wanted = [n.encode() for n in needles]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if all(n in cmdline for n in wanted):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL, wait: float = 5.0) -> None:
    """Signal ``pids``; for SIGKILL, wait (up to ``wait`` s) until they are gone."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    deadline = time.monotonic() + (wait if sig == signal.SIGKILL else 0)
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def mounts_under(prefixes: Iterable[Path]) -> list[str]:
    """Mount points under any of ``prefixes``, deepest first."""
    roots = [str(p).rstrip("/") + "/" for p in prefixes]
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    inside = {m for m in points if any((m + "/").startswith(r) for r in roots)}
    return sorted(inside, key=lambda m: (m.count("/"), len(m)), reverse=True)


def unmount_under(prefixes: Iterable[Path]) -> None:
    for _ in range(3):  # stacked mounts need more than one pass
        points = mounts_under(prefixes)
        if not points:
            return
        for point in points:
            run_quiet(["umount", "-l", point])


def cgroup_mounts() -> list[str]:
    """Mount points of every cgroup v1 hierarchy and of the v2 one."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                points.append(fields[4])
    return points


def cgroup_pids(relative: str) -> list[int]:
    """Processes in the cgroup ``relative`` (or below it), in any hierarchy."""
    pids: set[int] = set()
    for mount in cgroup_mounts():
        top = Path(mount) / relative.lstrip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def remove_cgroup_tree(relative: str) -> None:
    """rmdir ``relative`` and everything below it, in every hierarchy (deepest first)."""
    for mount in cgroup_mounts():
        top = Path(mount) / relative.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def package_version(name: str) -> str:
    out = run_quiet(["dpkg-query", "-W", "-f=${Version}", name])
    return out.stdout.strip() if out.returncode == 0 else "not installed"


def tool_version(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} not installed"
    out = run_quiet(argv)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


# -- network namespaces ---------------------------------------------------------------------


class NetNS:
    """A named network namespace (``ip netns add``) with only ``lo`` up."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.path = f"/run/netns/{self.name}"
        self.created = False

    def create(self) -> NetNS:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.created = True
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def delete(self) -> None:
        if self.created:
            run_quiet(["ip", "netns", "del", self.name])
            self.created = False

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net={self.path}"]

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a new thread that has entered this namespace; its result.

        Processes started there and sockets made there belong to the namespace; the
        calling thread (and the rest of the process) stays where it is.
        """
        box: dict[str, Any] = {}

        def inside() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.path}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                box["result"] = fn()
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=inside, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result


def start_registry(netns: NetNS, workdir: Path, layout: Path, refs: set[str]) -> Registry:
    """A docker-registry on 127.0.0.1 inside ``netns`` holding ``refs`` of ``layout``."""

    def inside() -> Registry:
        registry = Registry(workdir)
        registry.start()
        try:
            push_layout(layout, registry.url, only=refs)
        except BaseException:
            registry.stop()
            raise
        return registry

    return netns.call(inside)


def write_conflist(conf_dir: Path, *, name: str, bridge: str, subnet: str, ipam_dir: Path) -> Path:
    """bridge + host-local (state in ``ipam_dir``) + portmap + loopback, CNI 1.0.0."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }
    path = conf_dir / f"10-{name}.conflist"
    path.write_text(json.dumps(conflist, indent=2) + "\n")
    return path


# -- daemons ---------------------------------------------------------------------------------


class CriDaemon:
    """A CRI daemon process started through ``nsenter`` and a client for its socket."""

    label = "cri"

    def __init__(self, base: Path, netns: NetNS, wrapper: Sequence[str] = ()) -> None:
        self.base = base
        self.netns = netns
        #: a command the daemon runs under (``strace …``), between nsenter and the daemon
        self.wrapper = list(wrapper)
        #: the daemon's environment (None: this process's)
        self.env: dict[str, str] | None = None
        self.socket = str(base / "cri.sock")
        self.log_file = base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.runtime: Any = None
        self.images: Any = None
        self.cgroup_parents: set[str] = set()
        self.pod_ids: set[str] = set()

    # subclasses: the command line, what identifies the daemon's, and the leftovers
    def command(self) -> list[str]:
        raise NotImplementedError

    def cmdline_needles(self) -> tuple[str, ...]:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        if self.proc is None:
            return None
        if not self.wrapper:
            return self.proc.pid
        # Under a wrapper (strace), signal the daemon itself, not the wrapper.
        pids = [p for p in pids_with_cmdline(*self.cmdline_needles()) if p != self.proc.pid]
        return pids[0] if pids else self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                env=self.env,
            )
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PeerError(
                    f"{self.label} exited with {self.proc.returncode} at start; its log ends:\n"
                    + self.log_tail()
                )
            try:
                grpc.channel_ready_future(self.channel).result(timeout=0.5)
                break
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise PeerError(
                        f"{self.label} did not open {self.socket} in {timeout} s"
                    ) from None
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        try:
            self.runtime.Version(api_pb2.VersionRequest(version="v1"), timeout=30)
        except grpc.RpcError as exc:
            raise PeerError(
                f"{self.label} answers on its socket but not the CRI v1 RuntimeService "
                f"({exc.code().name}: {exc.details()}); its log ends:\n" + self.log_tail()
            ) from None

    def version(self) -> str:
        reply = self.runtime.Version(api_pb2.VersionRequest(version="v1"), timeout=30)
        return f"{reply.runtime_name} {reply.runtime_version} (CRI {reply.runtime_api_version})"

    def not_ready(self) -> list[str]:
        """Conditions the daemon's Status reports as false (RuntimeReady, NetworkReady)."""
        status = self.runtime.Status(api_pb2.StatusRequest(), timeout=30).status
        return [
            f"{c.type}: {c.reason} {c.message}".strip() for c in status.conditions if not c.status
        ]

    def pull(self, image: str) -> str:
        reply = self.images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300
        )
        return str(reply.image_ref)

    def remove_pods(self) -> list[str]:
        """Stop and remove every pod through CRI; the errors, if any."""
        errors: list[str] = []
        if self.runtime is None or self.proc is None or self.proc.poll() is not None:
            return errors
        try:
            pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=60).items
        except grpc.RpcError as exc:
            return [f"ListPodSandbox: {exc.details()}"]
        for pod in pods:
            for rpc, request in (
                (self.runtime.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id)),
                (
                    self.runtime.RemovePodSandbox,
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                ),
            ):
                try:
                    rpc(request, timeout=120)
                except grpc.RpcError as exc:
                    errors.append(f"pod {pod.id[:12]}: {exc.details()}")
        return errors

    def stop(self, timeout: float = 30.0) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.runtime = self.images = None
        if self.proc is None:
            return
        pid = self.daemon_pid()
        if self.proc.poll() is None and pid is not None:
            kill_pids([pid], signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_pids([pid, self.proc.pid])
                self.proc.wait()
        self.proc = None

    def force_cleanup(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> list[str]:
        """Everything this daemon made goes, whatever state it is in; problems seen."""
        problems: list[str] = []
        try:
            problems += self.remove_pods()
        finally:
            try:
                self.stop()
            finally:
                self.force_cleanup()
        return problems

    def _kill_cgroup_leftovers(self) -> None:
        for parent in self.cgroup_parents:
            for _ in range(5):
                pids = cgroup_pids(parent)
                if not pids:
                    break
                kill_pids(pids)
                time.sleep(0.1)
            remove_cgroup_tree(parent)

    @staticmethod
    def _runc_delete_all(runc_roots: Iterable[Path]) -> None:
        for root in runc_roots:
            if not root.is_dir():
                continue
            listed = run_quiet(["runc", "--root", str(root), "list", "-q"])
            for container_id in listed.stdout.split():
                run_quiet(["runc", "--root", str(root), "delete", "--force", container_id])


class RktletDaemon(CriDaemon):
    """``rktlet serve`` with its root under ``base`` and its run dir at ``run_dir``."""

    label = "rktlet"

    def __init__(
        self,
        base: Path,
        run_dir: Path,
        netns: NetNS,
        *,
        cni_conf_dir: Path,
        insecure_registries: Sequence[str] = (),
        wrapper: Sequence[str] = (),
        log_level: str = "info",
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base, netns, wrapper)
        self.env = dict(env) if env is not None else None
        self.root = base / "root"
        self.run_dir = run_dir
        self.socket = str(run_dir / "rktlet.sock")
        self.cni_conf_dir = cni_conf_dir
        self.insecure_registries = list(insecure_registries)
        self.log_level = log_level

    def command(self) -> list[str]:
        argv = [
            *self.netns.nsenter(),
            *self.wrapper,
            sys.executable,
            "-m",
            "cri.cli",
            "serve",
            "--socket",
            self.socket,
            "--root",
            str(self.root),
            "--run-dir",
            str(self.run_dir),
            "--runtime",
            "runc",
            "--cgroup-driver",
            "cgroupfs",
            "--cni-conf-dir",
            str(self.cni_conf_dir),
            "--cni-bin-dir",
            CNI_BIN_DIR,
            "--stream-address",
            "127.0.0.1:0",
            "--log-level",
            self.log_level,
        ]
        for host in self.insecure_registries:
            argv += ["--insecure-registry", host]
        return argv

    def cmdline_needles(self) -> tuple[str, ...]:
        return ("cri.cli", "serve", self.socket)

    def force_cleanup(self) -> None:
        self._runc_delete_all([self.run_dir / "runc"])
        kill_pids(pids_with_cmdline("iottymux", str(self.run_dir) + "/"))
        kill_pids(pids_with_cmdline(*self.cmdline_needles()))
        self._kill_cgroup_leftovers()
        unmount_under([self.base, self.run_dir])
        shutil.rmtree(self.run_dir, ignore_errors=True)


class ContainerdDaemon(CriDaemon):
    """Debian's containerd with its CRI plugin, private everywhere.

    ``base`` holds root, state, temp, the opt dir, the runc root, the CNI config and
    the registry hosts dir, and the generated ``config.toml``; the daemon listens on
    ``base/containerd.sock`` only.  The sandbox (pause) image, the CNI network and the
    plain-HTTP registry are the caller's.
    """

    label = "containerd"

    def __init__(
        self,
        base: Path,
        netns: NetNS,
        *,
        sandbox_image: str,
        cni_conf_dir: Path,
        plain_http_registries: Sequence[str] = (),
        log_level: str = "info",
        wrapper: Sequence[str] = (),
    ) -> None:
        super().__init__(base, netns, wrapper)
        self.socket = str(base / "containerd.sock")
        self.root = base / "root"
        self.state = base / "state"
        self.temp = base / "tmp"
        self.opt = base / "opt"
        self.runc_root = base / "runc"
        self.hosts_dir = base / "certs.d"
        self.config_path = base / "config.toml"
        self.sandbox_image = sandbox_image
        self.cni_conf_dir = cni_conf_dir
        self.plain_http_registries = list(plain_http_registries)
        self.log_level = log_level
        self._shim_sockets: set[str] = set()

    @staticmethod
    def unavailable() -> str | None:
        """Why containerd cannot be run here, or None."""
        for tool in ("containerd", "containerd-shim-runc-v2", "runc", "nsenter", "ip"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt-get install -y containerd runc)"
        return None

    def config_toml(self) -> str:
        q = json.dumps  # TOML basic strings take JSON's escapes for these paths
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        lines = [
            "version = 2",
            f"root = {q(str(self.root))}",
            f"state = {q(str(self.state))}",
            f"temp = {q(str(self.temp))}",
            "disabled_plugins = ["
            '"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
            '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]',
            "",
            "[grpc]",
            f"  address = {q(self.socket)}",
            "[ttrpc]",
            f"  address = {q(self.socket + '.ttrpc')}",
            "[debug]",
            '  address = ""',
            f"  level = {q(self.log_level)}",
            "[metrics]",
            '  address = ""',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {q(str(self.opt))}",
            # The legacy v1 runtime makes <runtime_root>/<namespace> at start.
            '[plugins."io.containerd.runtime.v1.linux"]',
            f"  runtime_root = {q(str(self.runc_root / 'v1'))}",
            "",
            f"{cri}]",
            f"  sandbox_image = {q(self.sandbox_image)}",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            "  disable_apparmor = true",
            # This host lacks CAP_SYS_RESOURCE: the sandbox's -998 could not be set.
            "  restrict_oom_score_adj = true",
            # Pod netns pins under our state dir, not /var/run/netns.
            "  netns_mounts_under_state_dir = true",
            f"{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"{cri}.containerd.runtimes.runc.options]",
            f"  BinaryName = {q(shutil.which('runc') or 'runc')}",
            f"  Root = {q(str(self.runc_root))}",
            "  SystemdCgroup = false",
            f"{cri}.cni]",
            f"  bin_dir = {q(CNI_BIN_DIR)}",
            f"  conf_dir = {q(str(self.cni_conf_dir))}",
            "  max_conf_num = 1",
            f"{cri}.registry]",
            f"  config_path = {q(str(self.hosts_dir))}",
        ]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        for d in (self.root, self.state, self.temp, self.opt, self.runc_root, self.hosts_dir):
            d.mkdir(parents=True, exist_ok=True)
        for host in self.plain_http_registries:
            (self.hosts_dir / host).mkdir(parents=True, exist_ok=True)
            (self.hosts_dir / host / "hosts.toml").write_text(
                f'server = "http://{host}"\n\n'
                f'[host."http://{host}"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
        self.config_path.write_text(self.config_toml())

    def command(self) -> list[str]:
        return [
            *self.netns.nsenter(),
            *self.wrapper,
            shutil.which("containerd") or "containerd",
            "--config",
            str(self.config_path),
        ]

    def cmdline_needles(self) -> tuple[str, ...]:
        return ("containerd", "--config", str(self.config_path))

    def start(self, timeout: float = 60.0) -> None:
        reason = self.unavailable()
        if reason is not None:
            raise PeerError(reason)
        self.write_config()
        super().start(timeout)

    def _note_shim_sockets(self) -> None:
        """The shims' sockets live in /run/containerd/s whatever our state dir is: each
        task dir's ``address`` file names one; remember them to remove any left."""
        for address in (self.state / "io.containerd.runtime.v2.task").glob("*/*/address"):
            with contextlib.suppress(OSError):
                self._shim_sockets.add(address.read_text().strip().removeprefix("unix://"))

    def remove_pods(self) -> list[str]:
        self._note_shim_sockets()
        return super().remove_pods()

    def force_cleanup(self) -> None:
        self._note_shim_sockets()
        # <Root>/<namespace> of the runc shim, and the v1 runtime's the same way
        roots = [p for p in self.runc_root.glob("*") if p.name != "v1"]
        roots += self.runc_root.glob("v1/*")
        self._runc_delete_all(roots)
        kill_pids(pids_with_cmdline("containerd-shim", self.socket))
        kill_pids(pids_with_cmdline(*self.cmdline_needles()))
        self._kill_cgroup_leftovers()
        unmount_under([self.base])
        for sock in self._shim_sockets:
            if re.fullmatch(r"/run/containerd/s/[0-9a-f]{64}", sock):
                with contextlib.suppress(OSError):
                    os.unlink(sock)
        if not _RUN_CONTAINERD_EXISTED:  # only if empty: another containerd may use it now
            for d in ("s", "runc/k8s.io", "runc", "."):
                with contextlib.suppress(OSError):
                    os.rmdir(_RUN_CONTAINERD / d)


def python_env(pycache: Path | None) -> dict[str, str]:
    """This environment for a Python daemon, with bytecode cached under ``pycache``.

    Python then compiles each module once, as it would from an installed package,
    whatever ``PYTHONDONTWRITEBYTECODE`` says here, and writes no ``__pycache__`` into
    the source tree.  ``pycache`` None: the environment unchanged.
    """
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def make_run_dir(prefix: str) -> Path:
    """A fresh directory under /run for sockets and runtime state (short unix paths)."""
    path = Path("/run") / f"{prefix}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path
