"""Kubernetes nodes for the end-to-end suite: a runtime and the real kubelet, per netns.

A :class:`Node` is one network namespace holding a docker-registry on 127.0.0.1 (the
node's images), a CRI runtime (rktlet, or Debian's containerd for comparison) and the
real kubelet pointed at it.  The kubelet runs in the runtime's namespace because it
proxies exec/attach/port-forward to the URL the runtime returns, which is on 127.0.0.1
there.  Every node has its own ``--root-dir``, ``podLogsDir``, ``staticPodPath``,
``cgroupRoot``, node name and address, so that two of them share nothing.

An :class:`ApiServer` is etcd and kube-apiserver in a node's namespace, with a static
token (``--authorization-mode AlwaysAllow`` turns anonymous requests off); nodes
started with it register, and :meth:`ApiServer.kubectl` runs kubectl as a person would.

Teardown removes what was made even after a failure: pods through CRI, the daemons,
then by force whatever is left (bench/_cri_peer.py's clean-up), the kubelet's mounts,
its ``/var/log/containers`` links, the cgroup roots and the namespaces; and
:class:`HostState` puts back what every kubelet changes on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx

from bench._cri_peer import (
    ContainerdDaemon,
    CriDaemon,
    NetNS,
    RktletDaemon,
    cgroup_mounts,
    cgroup_pids,
    kill_pids,
    make_run_dir,
    python_env,
    remove_cgroup_tree,
    start_registry,
    unmount_under,
    write_conflist,
)
from fixtures.registry import Registry
from tests.e2e.tools import Tools

T = TypeVar("T")

#: Images every node's registry serves (the fixture builder's names).
IMAGES = {"busybox": "rktlet/busybox:latest", "httpd": "rktlet/httpd:latest"}
PAUSE = "rktlet/pause:latest"
#: The kubelet's own directory of container log links; not configurable.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
#: Host sysctls the kubelet sets for itself (kubelet/cm ``setupKernelTunables``).
KERNEL_TUNABLES = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
#: Host paths every kubelet makes, deepest first.
HOST_PATHS = (
    Path("/var/lib/kubelet/device-plugins/kubelet.sock"),
    Path("/var/lib/kubelet/device-plugins"),
    Path("/var/lib/kubelet"),
    CONTAINER_LOG_LINKS,
)
KUBELET_PORT = 10250
HEALTHZ_PORT = 10248
APISERVER_PORT = 6443


class E2EError(RuntimeError):
    """A component did not start or answer; the message carries its log's end."""


def wait_until(what: str, check: Callable[[], T | None], timeout: float, step: float = 0.2) -> T:
    """Poll ``check`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- host state the kubelet touches ----------------------------------------------------------


class HostState:
    """What every kubelet does to the host whatever its configuration, undone after the
    last kubelet of ours stops: it sets three sysctls (even with
    ``protectKernelDefaults: false``), and makes ``/var/log/containers`` and its
    device-plugin socket ``/var/lib/kubelet/device-plugins/kubelet.sock`` (``--root-dir``
    does not move it)."""

    _sysctls: ClassVar[dict[str, str]] = {}
    _made: ClassVar[list[Path]] = []
    _users: ClassVar[int] = 0

    @classmethod
    def acquire(cls) -> None:
        if cls._users == 0:
            cls._sysctls = {
                name: (Path("/proc/sys") / name).read_text().strip() for name in KERNEL_TUNABLES
            }
            # Kept across a restart (users back to 0 while the links are still there);
            # deepest first, the order they are removed in.
            made = {p for p in HOST_PATHS if not p.exists()} | set(cls._made)
            cls._made = [p for p in HOST_PATHS if p in made]
        cls._users += 1

    @classmethod
    def release(cls) -> None:
        cls._users -= 1
        if cls._users:
            return
        for name, value in cls._sysctls.items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / name).write_text(value + "\n")
        for path in cls._made:
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()
                elif path.is_dir():
                    path.rmdir()  # only when empty: nothing else uses it


def make_cgroup_root(relative: str) -> None:
    """The kubelet wants its ``cgroupRoot`` to exist already, in every hierarchy."""
    for mount in cgroup_mounts():
        with contextlib.suppress(OSError):
            (Path(mount) / relative.lstrip("/")).mkdir(parents=True, exist_ok=True)


def remove_log_links(pod_logs_dir: Path) -> None:
    """``/var/log/containers`` links into ``pod_logs_dir`` (the kubelet's, for our pods)."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    prefix = str(pod_logs_dir).rstrip("/") + "/"
    for link in CONTAINER_LOG_LINKS.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()


# -- HTTP inside a namespace ------------------------------------------------------------------


def insecure_tls() -> ssl.SSLContext:
    """The kubelet's and the API server's self-signed serving certificates are not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Kubelet:
    """The real kubelet for one node, configured from what this host needs."""

    def __init__(self, node: Node, tools: Tools, kubeconfig: Path | None) -> None:
        self.node = node
        self.binary = tools.kubelet
        self.kubeconfig = kubeconfig
        base = node.base / "kubelet"
        self.root_dir = base / "root"
        self.static_pod_dir = base / "manifests"
        self.pod_logs_dir = base / "pod-logs"
        self.config_path = base / "config.json"
        self.log_file = base / "kubelet.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup_root = f"/rktlet-e2e-{node.token}-{node.name_suffix}"
        for d in (self.root_dir, self.static_pod_dir, self.pod_logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def config(self) -> dict[str, Any]:
        """The KubeletConfiguration the suite runs with (README "Use it with a kubelet")."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.node.runtime.socket}",
            "imageServiceEndpoint": f"unix://{self.node.runtime.socket}",
            "staticPodPath": str(self.static_pod_dir),
            "podLogsDir": str(self.pod_logs_dir),
            "cgroupRoot": self.cgroup_root,
            "cgroupDriver": "cgroupfs",
            # This host: cgroup v1 (with a v2 mount), swap not checked.
            "failCgroupV1": False,
            "failSwapOn": False,
            # The kubelet still sets vm.overcommit_memory, kernel.panic(_on_oops); with
            # true it would refuse to start on a host whose values differ.
            "protectKernelDefaults": False,
            "address": self.node.ip,
            "port": KUBELET_PORT,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": HEALTHZ_PORT,
            "readOnlyPort": 0,
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # Small logs and frequent checks, so rotation happens within a test.
            "containerLogMaxSize": "64Ki",
            "containerLogMaxFiles": 5,
            "containerLogMonitorInterval": "3s",
            # Restarts of crashing containers within a second, not 10 s doubling to 5 min.
            "featureGates": {"KubeletCrashLoopBackOffMax": True},
            "crashLoopBackOff": {"maxContainerRestartPeriod": "1s"},
            # Neither disk nor image-disk usage of this shared machine evicts test pods.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "fileCheckFrequency": "2s",
            "syncFrequency": "5s",
            "nodeStatusUpdateFrequency": "4s",
            "serializeImagePulls": False,
            # Not /usr/libexec/kubernetes/kubelet-plugins/volume/exec, which it would make.
            "volumePluginDir": str(self.root_dir / "volume-plugins"),
        }

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")

    def command(self) -> list[str]:
        argv = [
            *self.node.netns.nsenter(),
            self.binary,
            "--config",
            str(self.config_path),
            "--root-dir",
            str(self.root_dir),
            "--cert-dir",
            str(self.root_dir / "pki"),
            "--hostname-override",
            self.node.name,
            "--node-ip",
            self.node.ip,
            "--v",
            "2",
        ]
        if self.kubeconfig is not None:
            argv += ["--kubeconfig", str(self.kubeconfig)]
        return argv

    def start(self, timeout: float = 90.0) -> None:
        make_cgroup_root(self.cgroup_root)
        self.node.runtime.cgroup_parents.add(self.cgroup_root)
        HostState.acquire()  # before the kubelet runs: it changes the host at once
        try:
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        except BaseException:
            HostState.release()
            raise

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise E2EError(
                    f"kubelet exited with {self.proc.returncode}; its log ends:\n"
                    + log_tail(self.log_file)
                )
            try:
                return self.node.http_get(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz").text == "ok"
            except httpx.HTTPError:
                return False

        try:
            wait_until("the kubelet's healthz", healthy, timeout)
        except TimeoutError:
            raise E2EError(
                "kubelet not healthy; its log ends:\n" + log_tail(self.log_file)
            ) from None

    def stop(
        self, sig: int = signal.SIGTERM, *, before_release: Callable[[], None] | None = None
    ) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        try:
            if before_release is not None:
                before_release()
        finally:
            HostState.release()

    def cleanup(self) -> None:
        def remove() -> None:
            unmount_under([self.root_dir])
            remove_log_links(self.pod_logs_dir)

        # Its links go before the host state is put back (that removes an empty
        # /var/log/containers the first kubelet made).
        self.stop(before_release=remove)


class Node:
    """A network namespace with a registry, a CRI runtime and a kubelet in it."""

    def __init__(
        self,
        base: Path,
        tools: Tools,
        runtime: str,
        *,
        token: str,
        name_suffix: str,
        netns: NetNS,
        ip: str,
        pod_subnet: str,
        layout: Path,
        pycache: Path,
    ) -> None:
        self.base = base
        self.tools = tools
        self.runtime_name = runtime
        self.token = token
        self.name_suffix = name_suffix
        self.name = f"e2e-{name_suffix}-{token}"
        self.netns = netns
        self.ip = ip
        self.pod_subnet = pod_subnet
        self.layout = layout
        self.pycache = pycache
        self.registry: Registry | None = None
        self.runtime: CriDaemon
        self.kubelet: Kubelet  # set by start()
        self.crictl_config = base / "crictl.yaml"
        self._cleanups: list[tuple[str, Callable[[], object]]] = []

    # -- images ------------------------------------------------------------------------------

    def image(self, name: str) -> str:
        assert self.registry is not None
        return f"{self.registry.host}/{IMAGES[name]}"

    # -- bring-up ----------------------------------------------------------------------------

    def start(self, kubeconfig: Path | None = None) -> Node:
        """Registry, runtime (images pulled), then the kubelet."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.registry = start_registry(
            self.netns, self.base, self.layout, {*IMAGES.values(), PAUSE}
        )
        self._cleanups.append(("registry", self.registry.stop))
        cni_dir = self.base / "cni"
        write_conflist(
            cni_dir,
            name=f"e2e-{self.name_suffix}",
            bridge="e2e0",
            subnet=self.pod_subnet,
            ipam_dir=self.base / "ipam",
        )
        if self.runtime_name == "rktlet":
            run_dir = make_run_dir(f"rktlet-e2e-{self.name_suffix}")
            self.runtime = RktletDaemon(
                self.base / "rktlet",
                run_dir,
                self.netns,
                cni_conf_dir=cni_dir,
                insecure_registries=[self.registry.host],
                env=python_env(self.pycache),
            )
        else:
            self.runtime = ContainerdDaemon(
                self.base / "containerd",
                self.netns,
                sandbox_image=f"{self.registry.host}/{PAUSE}",
                cni_conf_dir=cni_dir,
                plain_http_registries=[self.registry.host],
            )
        self._cleanups.append(("runtime", self.runtime.cleanup))
        self.runtime.start()
        images = [self.image(n) for n in IMAGES]
        if isinstance(self.runtime, ContainerdDaemon):
            images.append(self.runtime.sandbox_image)
        for image in images:
            self.runtime.pull(image)
        endpoint = f"unix://{self.runtime.socket}"
        self.crictl_config.write_text(
            f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 60\n"
        )
        self.kubelet = Kubelet(self, self.tools, kubeconfig)
        self._cleanups.append(("kubelet", self.kubelet.cleanup))
        self.kubelet.start()
        return self

    def cleanup(self) -> list[str]:
        """Everything the node made goes; the problems met on the way."""
        problems: list[str] = []
        # The kubelet first, so that it does not restart what the runtime's clean-up stops.
        order = {"kubelet": 0, "runtime": 1, "registry": 2}
        for what, step in sorted(self._cleanups, key=lambda c: order[c[0]]):
            try:
                result = step()
                if isinstance(result, list) and result:
                    problems += [f"{what}: {p}" for p in result]
            except Exception as exc:
                problems.append(f"{what}: {exc!r}")
        self._cleanups.clear()
        if hasattr(self, "kubelet"):
            for _ in range(5):
                pids = cgroup_pids(self.kubelet.cgroup_root)
                if not pids:
                    break
                kill_pids(pids)
            remove_cgroup_tree(self.kubelet.cgroup_root)
        return problems

    # -- restarts ------------------------------------------------------------------------------

    def restart_kubelet(self) -> None:
        self.kubelet.stop()
        self.kubelet.start()

    def restart_runtime(self) -> None:
        """Stop the CRI daemon (its pods run on) and start it again."""
        self.runtime.stop()
        self.runtime.start()

    # -- clients ---------------------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside this node's network namespace."""
        return self.netns.call(fn)

    def http_get(self, url: str, params: Any = None, timeout: float = 30.0) -> httpx.Response:
        def get() -> httpx.Response:
            with httpx.Client(verify=insecure_tls(), timeout=timeout) as client:
                return client.get(url, params=params)

        return self.call(get)

    @property
    def kubelet_url(self) -> str:
        return f"https://{self.ip}:{KUBELET_PORT}"

    def crictl_argv(self, *args: str) -> list[str]:
        return [
            *self.netns.nsenter(),
            self.tools.crictl,
            "--config",
            str(self.crictl_config),
            *args,
        ]

    def crictl(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            self.crictl_argv(*args), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)}: {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def crictl_json(self, *args: str) -> Any:
        verb, *rest = args
        return json.loads(self.crictl(verb, "-o", "json", *rest))


# -- the API server ------------------------------------------------------------------------------


class ApiServer:
    """etcd and kube-apiserver inside ``netns`` (on ``ip``), token auth, AlwaysAllow."""

    def __init__(self, base: Path, tools: Tools, netns: NetNS, ip: str) -> None:
        self.base = base
        self.tools = tools
        self.netns = netns
        self.ip = ip
        self.token = secrets.token_hex(16)
        self.etcd_proc: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.kubeconfig = base / "kubeconfig"
        self.log_file = base / "kube-apiserver.log"
        self.etcd_log = base / "etcd.log"

    @property
    def url(self) -> str:
        return f"https://{self.ip}:{APISERVER_PORT}"

    def _files(self) -> list[str]:
        pki = self.base / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        key = pki / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pki / "sa.pub")],
            check=True,
            capture_output=True,
        )
        tokens = self.base / "tokens.csv"
        tokens.write_text(f'{self.token},e2e-admin,e2e-admin,"system:masters"\n')
        tokens.chmod(0o600)
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "e2e",
                            "cluster": {"server": self.url, "insecure-skip-tls-verify": True},
                        }
                    ],
                    "users": [{"name": "e2e", "user": {"token": self.token}}],
                    "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
                    "current-context": "e2e",
                }
            )
        )
        self.kubeconfig.chmod(0o600)
        return [
            self.tools.apiserver,
            "--etcd-servers",
            "http://127.0.0.1:2379",
            "--bind-address",
            "0.0.0.0",
            "--advertise-address",
            self.ip,
            "--secure-port",
            str(APISERVER_PORT),
            "--cert-dir",
            str(pki),
            "--token-auth-file",
            str(tokens),
            "--authorization-mode",
            "AlwaysAllow",
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            "--service-cluster-ip-range",
            "10.215.0.0/24",
            # Reach kubelets at the address they report (no DNS for node names here).
            "--kubelet-preferred-address-types",
            "InternalIP",
            "--allow-privileged=true",
            "--v",
            "1",
        ]

    def start(self, timeout: float = 120.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        argv = self._files()
        with open(self.etcd_log, "ab") as log:
            self.etcd_proc = subprocess.Popen(
                [
                    *self.netns.nsenter(),
                    self.tools.etcd,
                    "--data-dir",
                    str(self.base / "etcd"),
                    "--listen-client-urls",
                    "http://127.0.0.1:2379",
                    "--advertise-client-urls",
                    "http://127.0.0.1:2379",
                    "--listen-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-cluster",
                    "default=http://127.0.0.1:2380",
                    "--unsafe-no-fsync",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.netns.nsenter(), *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

        def ready() -> bool:
            for what, proc, log_file in (
                ("etcd", self.etcd_proc, self.etcd_log),
                ("kube-apiserver", self.proc, self.log_file),
            ):
                if proc is not None and proc.poll() is not None:
                    raise E2EError(f"{what} exited; its log ends:\n{log_tail(log_file)}")
            try:
                reply = self.netns.call(
                    lambda: httpx.get(
                        f"{self.url}/readyz",
                        headers={"Authorization": f"Bearer {self.token}"},
                        verify=insecure_tls(),
                        timeout=5,
                    )
                )
            except httpx.HTTPError:
                return False
            return reply.status_code == 200

        try:
            wait_until("kube-apiserver /readyz", ready, timeout, step=0.5)
        except TimeoutError:
            raise E2EError("kube-apiserver not ready:\n" + log_tail(self.log_file)) from None

    def kubectl_argv(self, *args: str) -> list[str]:
        return [
            *self.netns.nsenter(),
            self.tools.kubectl,
            "--kubeconfig",
            str(self.kubeconfig),
            *args,
        ]

    def kubectl(
        self, *args: str, input: bytes | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            self.kubectl_argv(*args), input=input, capture_output=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)}: exit {proc.returncode}: {proc.stderr.decode()}"
            )
        return proc

    def stop(self) -> None:
        for proc in (self.proc, self.etcd_proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.proc = self.etcd_proc = None


# -- networks ----------------------------------------------------------------------------------


def lone_address(netns: NetNS, ip: str) -> None:
    """An address for a lone node (the kubelet refuses a loopback node IP): a veth pair
    with both ends inside (this kernel has no dummy interfaces)."""
    subprocess.run(
        ["ip", "-n", netns.name, "link", "add", "e2e-node", "type", "veth", "peer", "e2e-nodep"],
        check=True,
    )
    subprocess.run(
        ["ip", "-n", netns.name, "addr", "add", f"{ip}/32", "dev", "e2e-node"], check=True
    )
    for ifname in ("e2e-node", "e2e-nodep"):
        subprocess.run(["ip", "-n", netns.name, "link", "set", ifname, "up"], check=True)


def link(a: NetNS, a_ip: str, b: NetNS, b_ip: str) -> None:
    """A veth pair between two namespaces, one /24 shared by both ends."""
    name = f"e2e{secrets.token_hex(3)}"
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            name,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            f"{name}p",
            "netns",
            b.name,
        ],
        check=True,
    )
    for ns, ifname, ip in ((a, name, a_ip), (b, f"{name}p", b_ip)):
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{ip}/24", "dev", ifname], check=True)
        subprocess.run(["ip", "-n", ns.name, "link", "set", ifname, "up"], check=True)


@contextlib.contextmanager
def cleanups() -> Iterator[list[Callable[[], object]]]:
    """Steps run last-in first-out at the end, each whatever the others did."""
    steps: list[Callable[[], object]] = []
    try:
        yield steps
    finally:
        for step in reversed(steps):
            with contextlib.suppress(Exception):
                step()
