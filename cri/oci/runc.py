"""A thin asyncio wrapper around the runc command line, for what the pod monitor does not do.

The monitor creates, starts, kills and deletes app containers itself.  The daemon needs
runc for the rest: ``state`` and ``list`` when reconciling, ``exec`` for ExecSync,
``update`` for UpdateContainerResources, ``ps``, ``events --stats`` and a forced
``delete`` when cleaning up after a monitor that died.

Every call runs ``runc --root <root> --log <file> --log-format json …``: with a log file
of its own per call, runc's error messages never mix with the output of an exec'd
process, and they come back as JSON lines that this module turns into
:mod:`cri.errors` exceptions carrying runc's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc

from cri.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RktletError,
)
from cri.oci.exec_helper import ExecHelper

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "ExecResult",
    "Runc",
    "RuncError",
    "RuncState",
    "log_message",
    "process_spec_for_exec",
]

# The kubelet caps ExecSync output at 16 MiB per stream (MaxContainerTerminationMessage…
# aside, remotecommand's limit); reading more would only be thrown away.
DEFAULT_MAX_OUTPUT = 16 << 20
# After the exec'd process exits, a background child may still hold the output pipes
# open; drain for at most this long rather than hang the RPC.
DRAIN_TIMEOUT = 1.0
_CHUNK = 64 << 10
_SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_exec_shim.py")


class RuncError(RktletError):
    """runc failed in a way no more specific CRI error describes."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, command: Sequence[str] = (), exit_code: int = -1) -> None:
        super().__init__(message)
        self.command = list(command)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class RuncState:
    """``runc state``: ``status`` is creating, created, running, paused or stopped."""

    id: str
    pid: int
    status: str
    bundle: str
    rootfs: str
    created: str
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RuncState:
        return cls(
            id=str(doc.get("id", "")),
            pid=int(doc.get("pid") or 0),
            status=str(doc.get("status", "")),
            bundle=str(doc.get("bundle", "")),
            rootfs=str(doc.get("rootfs", "")),
            created=str(doc.get("created", "")),
            annotations={str(k): str(v) for k, v in (doc.get("annotations") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class ExecResult:
    """Outcome of an ExecSync.  ``exit_code`` is 128+N when killed by signal N."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False


def shell_exit_code(wait_status: int) -> int:
    """A wait status as a container exit code: 128+N for a process killed by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def process_spec_for_exec(
    container_spec: Mapping[str, Any],
    cmd: Sequence[str],
    tty: bool = False,
    *,
    env: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``process.json`` for ``runc exec``: ``cmd`` with the container's security context.

    User and groups, capabilities, no_new_privs, AppArmor profile, SELinux label,
    rlimits, environment and working directory are the container's (runc applies the
    container's seccomp filter to exec'd processes by itself).  ``env`` entries are
    appended and win over the container's.
    """
    if not cmd or not cmd[0]:
        raise InvalidArgument("cmd: no command specified")
    proc = container_spec.get("process")
    if not isinstance(proc, Mapping):
        raise InvalidArgument("container spec has no process")
    merged: dict[str, str] = {}
    for entry in [*proc.get("env", []), *env]:
        merged[entry.split("=", 1)[0]] = entry
    out: dict[str, Any] = {
        "terminal": bool(tty),
        "user": copy.deepcopy(proc.get("user", {"uid": 0, "gid": 0})),
        "args": list(cmd),
        "env": list(merged.values()),
        "cwd": proc.get("cwd", "/"),
        "noNewPrivileges": bool(proc.get("noNewPrivileges", False)),
    }
    for key in ("capabilities", "rlimits", "apparmorProfile", "selinuxLabel"):
        if key in proc:
            out[key] = copy.deepcopy(proc[key])
    return out


def _classify(message: str) -> type[RktletError]:
    text = message.lower()
    if "does not exist" in text or ("not found" in text and "container" in text):
        return NotFound
    if "already exists" in text or "container with id exists" in text:
        return AlreadyExists
    if any(
        s in text
        for s in (
            "not running",
            "is stopped",
            "stopped container",
            "container that has stopped",
            "is paused",
            "cannot exec",
        )
    ):
        return FailedPrecondition
    return RuncError


def log_message(log_text: str, stderr: bytes) -> str:
    """runc's error from its JSON log (falling back to stderr)."""
    messages = []
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            messages.append(str(entry.get("msg", "")))
    if messages:
        # runc logs the root cause first and then "runc run failed: …" wrappers.
        return "; ".join(dict.fromkeys(m for m in messages if m))
    return stderr.decode("utf-8", "replace").strip() or "no error message"


async def _connect_collectors(
    loop: asyncio.AbstractEventLoop,
    fds: tuple[int, int],
    collectors: list[_Collector],
    transports: list[asyncio.ReadTransport],
    unowned: list[int],
) -> None:
    """Read each pipe into its collector; a fd a transport took over leaves ``unowned``."""
    for fd, collector in zip(fds, collectors, strict=True):
        transport, _ = await loop.connect_read_pipe(
            collector.factory, os.fdopen(fd, "rb", buffering=0, closefd=True)
        )
        unowned.remove(fd)
        transports.append(transport)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to a pipe and close it (in a worker thread: the pipe may block)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except (BrokenPipeError, OSError):
        pass
    finally:
        os.close(fd)


class _Collector(asyncio.Protocol):
    """Collects a pipe's bytes up to a limit; ``done`` resolves at EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.done: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.size < self.limit:
            self.chunks.append(data[: self.limit - self.size])
        if self.size + len(data) > self.limit:
            self.truncated = True
        self.size += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def factory(self) -> _Collector:
        return self


class Runc:
    """runc with a private state directory (``--root``), one per daemon."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        binary: str = "runc",
        systemd_cgroup: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        exec_helper: ExecHelper | None = None,
    ) -> None:
        self.root = os.fspath(root)
        #: Runs exec'd processes without an interpreter start each (else the shim).
        self.exec_helper = exec_helper
        self.binary = binary
        self.systemd_cgroup = systemd_cgroup
        # Not inside root: runc treats every directory there as a container.
        self.log_dir = os.fspath(log_dir) if log_dir is not None else self.root.rstrip("/") + ".log"

    # ------------------------------------------------------------------ plumbing

    def _global(self, log_path: str) -> list[str]:
        args = [self.binary, "--root", self.root, "--log", log_path, "--log-format", "json"]
        if self.systemd_cgroup:
            args.append("--systemd-cgroup")
        return args

    def _new_file(self, suffix: str) -> str:
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="runc-", suffix=suffix, dir=self.log_dir)
        os.close(fd)
        return path

    @staticmethod
    def _read_and_remove(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(1 << 20)
        except FileNotFoundError:
            return ""
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _error(self, argv: Sequence[str], code: int, log_text: str, stderr: bytes) -> RktletError:
        message = log_message(log_text, stderr)
        verb = next((a for a in argv[len(self._global("x")) :] if not a.startswith("-")), "")
        cls = _classify(message)
        text = f"runc {verb}: {message}"
        if cls is RuncError:
            return RuncError(text, command=argv, exit_code=code)
        return cls(text)

    async def _run(self, *args: str, stdin: bytes | None = None) -> bytes:
        log_path = self._new_file(".log")
        argv = [*self._global(log_path), *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            self._read_and_remove(log_path)
            raise RuncError(f"{self.binary}: not found", command=argv) from None
        try:
            out, err = await proc.communicate(stdin)
        except BaseException:
            # Cancelled: do not leave a runc behind.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._read_and_remove(log_path)
            raise
        log_text = self._read_and_remove(log_path)
        if proc.returncode != 0:
            raise self._error(argv, proc.returncode or -1, log_text, err)
        return out

    # ------------------------------------------------------------------ commands

    async def state(self, container_id: str) -> RuncState:
        out = await self._run("state", container_id)
        return RuncState.from_json(json.loads(out))

    async def list_containers(self) -> list[RuncState]:
        out = await self._run("list", "--format", "json")
        docs = json.loads(out or b"null") or []
        return [RuncState.from_json(d) for d in docs]

    async def ps(self, container_id: str) -> list[int]:
        """Host pids of the container's processes."""
        out = await self._run("ps", "--format", "json", container_id)
        return [int(p) for p in json.loads(out or b"null") or []]

    async def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Apply an OCI ``linux.resources`` object (see cri.oci.resources.linux_resources)."""
        payload = json.dumps(dict(resources)).encode()
        await self._run("update", "--resources", "-", container_id, stdin=payload)

    async def kill(
        self, container_id: str, sig: int = signal.SIGKILL, *, all: bool = False
    ) -> None:
        args = ["kill", *(["--all"] if all else []), container_id, str(int(sig))]
        await self._run(*args)

    async def delete(
        self, container_id: str, *, force: bool = True, missing_ok: bool = True
    ) -> None:
        """``runc delete [--force]``; a container runc does not know is fine by default."""
        if not missing_ok:
            # runc delete --force succeeds for an unknown id, so ask first.
            await self.state(container_id)
        try:
            await self._run("delete", *(["--force"] if force else []), container_id)
        except NotFound:
            if not missing_ok:
                raise

    async def stats(self, container_id: str) -> dict[str, Any]:
        """The ``data`` of ``runc events --stats`` (cpu, memory, pids … in runc's naming)."""
        out = await self._run("events", "--stats", container_id)
        doc = json.loads(out)
        data = doc.get("data") if isinstance(doc, dict) else None
        return data if isinstance(data, dict) else {}

    def exec_argv(
        self,
        container_id: str,
        process_path: str,
        *,
        log_path: str,
        detach: bool = False,
        pid_file: str | None = None,
        console_socket: str | None = None,
    ) -> list[str]:
        """The command line of a ``runc exec``, for callers that spawn it themselves
        (streaming exec with a tty passes ``console_socket``)."""
        argv = [*self._global(log_path), "exec", "--process", process_path]
        if detach:
            argv.append("--detach")
        if pid_file:
            argv += ["--pid-file", pid_file]
        if console_socket:
            argv += ["--console-socket", console_socket]
        argv.append(container_id)
        return argv

    async def exec_sync(
        self,
        container_id: str,
        process: Mapping[str, Any],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        """Run ``process`` (from :func:`process_spec_for_exec`) in the container, wait, collect.

        The process writes straight into our pipes (``runc exec --detach`` under a small
        subreaper shim, see ``_exec_shim.py``), so a background child that keeps them open
        delays the answer by at most DRAIN_TIMEOUT.  On ``timeout`` the process is
        SIGKILLed and ``timed_out`` set.  Output over ``max_output`` bytes per stream is
        discarded and ``truncated`` set.  Errors of runc itself (no such container,
        container stopped) raise.
        """
        if process.get("terminal"):
            raise InvalidArgument("tty: ExecSync cannot allocate a terminal")
        log_path = self._new_file(".log")
        process_path = self._new_file(".json")
        pid_file = self._new_file(".pid")
        os.unlink(pid_file)
        with open(process_path, "w", encoding="utf-8") as f:
            json.dump(dict(process), f)
        argv = self.exec_argv(
            container_id, process_path, log_path=log_path, detach=True, pid_file=pid_file
        )
        try:
            if self.exec_helper is not None:
                return await self._exec_via_helper(
                    argv, pid_file, log_path, timeout, stdin, max_output
                )
            return await self._exec_collect(argv, pid_file, log_path, timeout, stdin, max_output)
        finally:
            for path in (process_path, pid_file, log_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    async def _exec_via_helper(
        self,
        argv: list[str],
        pid_file: str,
        log_path: str,
        timeout: float | None,
        stdin: bytes | None,
        max_output: int,
    ) -> ExecResult:
        """:meth:`_exec_collect`, with the daemon's exec helper instead of a shim each."""
        assert self.exec_helper is not None
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin is not None:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        try:
            sock = await self.exec_helper.submit(argv, pid_file, [in_r, out_w, err_w])
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        collectors = [_Collector(loop, max_output), _Collector(loop, max_output)]
        transports: list[asyncio.ReadTransport] = []
        feed: asyncio.Future[None] | None = None
        timed_out = False
        report_task = asyncio.ensure_future(self.exec_helper.result(sock))
        unowned = [out_r, err_r]
        try:
            await _connect_collectors(loop, (out_r, err_r), collectors, transports, unowned)
            if stdin is not None:
                feed = loop.run_in_executor(None, _write_all, in_w, stdin)
                in_w = -1
            try:
                status = await asyncio.wait_for(asyncio.shield(report_task), timeout)
            except TimeoutError:
                timed_out = True
                self._kill_exec(pid_file)
                status = await asyncio.wait_for(report_task, 10.0)
            await asyncio.wait([c.done for c in collectors], timeout=DRAIN_TIMEOUT)
        except BaseException:
            self._kill_exec(pid_file)
            report_task.cancel()
            raise
        finally:
            for transport in transports:
                transport.close()
            for fd in unowned:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if in_w >= 0:
                os.close(in_w)
        if feed is not None:
            await asyncio.wait([feed], timeout=DRAIN_TIMEOUT)
        return self._exec_result(status, argv, log_path, collectors, timed_out, "no report")

    async def _exec_collect(
        self,
        argv: list[str],
        pid_file: str,
        log_path: str,
        timeout: float | None,
        stdin: bytes | None,
        max_output: int,
    ) -> ExecResult:
        loop = asyncio.get_running_loop()
        # Our own pipes rather than asyncio's subprocess pipes: Process.wait() must not
        # depend on a background child closing them, and we close them when we choose.
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin is not None else (-1, -1)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                _SHIM,
                str(status_w),
                "--",
                *argv,
                stdin=in_r if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(status_w,),
            )
        except BaseException:
            for fd in (status_r, out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (status_w, out_w, err_w, in_r):
                if fd >= 0:
                    os.close(fd)
        collectors = [_Collector(loop, max_output), _Collector(loop, max_output)]
        transports: list[asyncio.ReadTransport] = []
        feed: asyncio.Future[None] | None = None
        timed_out = False
        unowned = [out_r, err_r]  # closed by us unless a transport took them over
        try:
            await _connect_collectors(loop, (out_r, err_r), collectors, transports, unowned)
            if stdin is not None:
                feed = loop.run_in_executor(None, _write_all, in_w, stdin)
                in_w = -1  # owned by the writer now
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
                self._kill_exec(pid_file)
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await asyncio.wait([c.done for c in collectors], timeout=DRAIN_TIMEOUT)
        except BaseException:
            self._kill_exec(pid_file)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        finally:
            for transport in transports:
                transport.close()
            for fd in unowned:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if in_w >= 0:
                os.close(in_w)
            try:
                report = os.read(status_r, 4096)
            finally:
                os.close(status_r)
        if feed is not None:
            # The writer ends when the process closes its stdin or exits (EPIPE).
            await asyncio.wait([feed], timeout=DRAIN_TIMEOUT)
        try:
            status = json.loads(report) if report else {}
        except ValueError:
            status = {}
        return self._exec_result(
            status,
            argv,
            log_path,
            collectors,
            timed_out,
            f"exec shim exited with {proc.returncode}",
        )

    def _exec_result(
        self,
        status: Mapping[str, Any],
        argv: list[str],
        log_path: str,
        collectors: list[_Collector],
        timed_out: bool,
        no_report: str,
    ) -> ExecResult:
        """Turn a shim's or the helper's report into an ExecResult, or runc's error."""
        stdout, stderr = (c.data() for c in collectors)
        truncated = any(c.truncated for c in collectors)
        if "status" in status:
            code = shell_exit_code(int(status["status"]))
            return ExecResult(code, stdout, stderr, timed_out=timed_out, truncated=truncated)
        log_text = self._read_and_remove(log_path)
        if "runc" in status:
            raise self._error(argv, int(status["runc"]), log_text, stderr)
        detail = status.get("error") or no_report
        raise RuncError(f"runc exec: {detail}", command=argv)

    @staticmethod
    def _kill_exec(pid_file: str) -> None:
        try:
            with open(pid_file, encoding="ascii") as f:
                pid = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
