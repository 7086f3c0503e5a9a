"""Helpers for the OCI tests: busybox root filesystems, CRI configs, a runc runner."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri import cgroups
from cri.api import api_pb2
from cri.oci.image_config import ImageConfig
from cri.oci.spec import ContainerContext, PodNamespaces, build_container_spec

BUSYBOX = Path("/bin/busybox")
PASSWD = """root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app user:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
app:x:1000:
extra:x:1001:app
other:x:1002:root,nobody
nogroup:x:65534:
"""
SECRET = "top secret\n"

_ids = itertools.count()


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid()}-{next(_ids)}"


def make_rootfs(path: Path, busybox_binary: Path, applets: list[str]) -> Path:
    """A busybox root filesystem: every applet a hard link in /bin, users root and app."""
    (path / "bin").mkdir(parents=True)
    for name in ("etc", "tmp", "home/app", "root", "proc", "sys", "dev"):
        (path / name).mkdir(parents=True, exist_ok=True)
    os.chmod(path / "tmp", 0o1777)
    os.chown(path / "home/app", 1000, 1000)
    os.link(busybox_binary, path / "bin/busybox")
    for applet in applets:
        with contextlib.suppress(FileExistsError):
            os.link(busybox_binary, path / "bin" / applet)
    (path / "etc/passwd").write_text(PASSWD)
    (path / "etc/group").write_text(GROUP)
    (path / "etc/secret").write_text(SECRET)
    return path


def container_config(
    *args: str,
    command: list[str] | None = None,
    name: str = "app",
    envs: dict[str, str] | None = None,
    **security: Any,
) -> api_pb2.ContainerConfig:
    """A ContainerConfig with its own PID and IPC namespaces on the host network."""
    cfg = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image="rktlet/busybox:latest"),
        command=command if command is not None else [],
        args=list(args),
    )
    for k, v in (envs or {}).items():
        cfg.envs.add(key=k, value=v)
    sc = cfg.linux.security_context
    sc.namespace_options.network = api_pb2.NODE
    sc.namespace_options.pid = api_pb2.CONTAINER
    sc.namespace_options.ipc = api_pb2.CONTAINER
    for key, value in security.items():
        if key in ("run_as_user", "run_as_group"):
            getattr(sc, key).value = value
        elif key == "seccomp":
            sc.seccomp.profile_type = value
        elif key == "add_caps":
            sc.capabilities.add_capabilities.extend(value)
        elif key == "drop_caps":
            sc.capabilities.drop_capabilities.extend(value)
        elif isinstance(value, list):
            getattr(sc, key).extend(value)
        else:
            setattr(sc, key, value)
    return cfg


def sandbox_config(**kwargs: Any) -> api_pb2.PodSandboxConfig:
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="pod", namespace="default", uid="uid-1"),
        hostname=kwargs.pop("hostname", "pod"),
        log_directory="/var/log/pods/default_pod_uid-1",
    )
    for k, v in kwargs.pop("sysctls", {}).items():
        cfg.linux.sysctls[k] = v
    opts = cfg.linux.security_context.namespace_options
    opts.network = kwargs.pop("network", api_pb2.NODE)
    opts.pid = kwargs.pop("pid", api_pb2.CONTAINER)
    opts.ipc = kwargs.pop("ipc", api_pb2.POD)
    cfg.linux.security_context.privileged = kwargs.pop("privileged", False)
    assert not kwargs, kwargs
    return cfg


@dataclass
class Started:
    """A detached container: its id, init pid, cgroup and the pipes to its stdio."""

    id: str
    pid: int
    cgroup: str
    proc: subprocess.Popen[bytes]
    spec: dict[str, Any]

    buffer: bytes = b""

    def readline(self, timeout: float = 30) -> bytes:
        """One line of the container's stdout (b"" at EOF); fails rather than hang."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from container {self.id} in {timeout}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()


@dataclass
class Runner:
    """Runs specs with runc under a private root; remembers everything to clean up."""

    root: Path
    work: Path
    parent: str
    created: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def runc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["runc", "--root", str(self.root), *args], **kw)

    def cgroups_path(self, cid: str) -> str:
        return cgroups.cgroups_path(self.parent, cid)

    def _bundle(self, cid: str, spec: dict[str, Any]) -> Path:
        bundle = self.work / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        self.created.append(cid)
        self.cgroups.append(spec["linux"]["cgroupsPath"])
        return bundle

    def run(self, spec: dict[str, Any], cid: str, timeout: float = 60) -> tuple[int, str, str]:
        """``runc run`` in the foreground; (exit code, stdout, stderr)."""
        bundle = self._bundle(cid, spec)
        done = self.runc(
            "run",
            "--bundle",
            str(bundle),
            cid,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    def start(self, spec: dict[str, Any], cid: str) -> Started:
        """``runc run --detach`` with the container's stdio on pipes we hold."""
        bundle = self._bundle(cid, spec)
        proc = subprocess.Popen(
            ["runc", "--root", str(self.root), "run", "--detach", "--bundle", str(bundle), cid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        # runc --detach exits once the container is started (the pipes stay with it).
        code = proc.wait(timeout=60)
        if code != 0:
            assert proc.stderr is not None
            raise AssertionError(f"runc run --detach failed: {proc.stderr.read().decode()}")
        state = json.loads(self.runc("state", cid, capture_output=True, check=True).stdout)
        return Started(cid, int(state["pid"]), spec["linux"]["cgroupsPath"], proc, spec)

    def cleanup(self) -> None:
        for cid in reversed(self.created):
            self.runc("delete", "--force", cid, capture_output=True)
        layout = cgroups.detect_layout()
        for path in self.cgroups:
            cgroups.remove_cgroup(cgroups.cgroup_dir(path), layout)
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def spec_for(
    runner: Runner,
    rootfs: Path,
    config: api_pb2.ContainerConfig,
    *,
    cid: str,
    sandbox: api_pb2.PodSandboxConfig | None = None,
    image: ImageConfig | None = None,
    warnings: list[str] | None = None,
    **ctx: Any,
) -> dict[str, Any]:
    context = ContainerContext(
        rootfs=str(rootfs),
        container_id=cid,
        sandbox_id="sandbox0",
        cgroups_path=runner.cgroups_path(cid),
        namespaces=ctx.pop("namespaces", PodNamespaces()),
        **ctx,
    )
    return build_container_spec(
        config,
        sandbox if sandbox is not None else sandbox_config(),
        image if image is not None else ImageConfig(),
        context,
        warn=warnings.append if warnings is not None else None,
    )
