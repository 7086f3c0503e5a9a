"""ExecSync, and the Exec / Attach / PortForward RPCs of the streaming seam.

ExecSync runs ``<runtime> exec`` with a process spec derived from the
container's own (user, capabilities, no_new_privs, AppArmor, env, cwd), so the
command runs with the container's security context and in its cgroup.  Each
output stream is capped at 16 MiB (the excess is read and dropped, so the
process never blocks on a full pipe); the timeout kills the exec'd process; and
output draining after the exit is bounded, since a background child may keep
the pipes open forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from cri import validate
from cri.api import api_pb2
from cri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unimplemented
from cri.oci.runc import process_spec_for_exec
from cri.runtime import Runtime

OUTPUT_CAP = 16 << 20
#: How long output is still read once the exec'd process has exited.
DRAIN_AFTER_EXIT = 2.0


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
    return bytes(kept)


async def exec_sync(rt: Runtime, request: api_pb2.ExecSyncRequest) -> Any:
    record = rt.container(request.container_id)
    cmd = list(request.cmd)
    if not cmd or not cmd[0]:
        raise InvalidArgument("cmd: must not be empty")
    if request.timeout < 0:
        raise InvalidArgument("timeout: must not be negative")
    if record.state != "running":
        raise FailedPrecondition(f"container_id: container {record.id} is not running")
    sandbox = rt.sandbox(record.sandbox_id)
    bundle = rt.bundle_dir(record.id)
    token = secrets.token_hex(8)
    process_file = bundle / f"exec-{token}.json"
    pid_file = bundle / f"exec-{token}.pid"
    container_spec = json.loads((bundle / "config.json").read_text())
    process_file.write_text(json.dumps(process_spec_for_exec(container_spec, cmd, False)))
    runtime = rt.config.handler_binary(sandbox.runtime_handler)
    proc = await asyncio.create_subprocess_exec(
        runtime,
        "--root",
        rt.runc_root,
        "exec",
        "--process",
        str(process_file),
        "--pid-file",
        str(pid_file),
        record.id,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(
        _read_capped(proc.stdout, OUTPUT_CAP), _read_capped(proc.stderr, OUTPUT_CAP)
    )
    try:
        try:
            await asyncio.wait_for(proc.wait(), request.timeout or None)
        except TimeoutError:
            _kill_exec(pid_file)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            readers.cancel()
            with contextlib.suppress(BaseException):
                await readers
            raise DeadlineExceeded(
                f"timeout: command {cmd[0]!r} did not finish within {request.timeout}s"
            ) from None
        try:
            out, err = await asyncio.wait_for(readers, DRAIN_AFTER_EXIT)
        except TimeoutError:
            readers.cancel()
            out, err = b"", b""
    finally:
        for path in (process_file, pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return api_pb2.ExecSyncResponse(stdout=out, stderr=err, exit_code=proc.returncode or 0)


def _kill_exec(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _check_streams(request: Any, *, stderr_allowed: bool = True) -> None:
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


async def exec_url(rt: Runtime, request: api_pb2.ExecRequest) -> Any:
    validate.required_id(request.container_id, "container_id")
    if not request.cmd:
        raise InvalidArgument("cmd: must not be empty")
    _check_streams(request)
    record = rt.container(request.container_id)
    if record.state != "running":
        raise FailedPrecondition(f"container_id: container {record.id} is not running")
    if rt.streaming is None:
        raise Unimplemented("Exec: the streaming server is not available")
    return await rt.streaming.get_exec(request)


async def attach_url(rt: Runtime, request: api_pb2.AttachRequest) -> Any:
    validate.required_id(request.container_id, "container_id")
    _check_streams(request)
    record = rt.container(request.container_id)
    if record.state != "running":
        raise FailedPrecondition(f"container_id: container {record.id} is not running")
    if rt.streaming is None:
        raise Unimplemented("Attach: the streaming server is not available")
    return await rt.streaming.get_attach(request)


async def port_forward_url(rt: Runtime, request: api_pb2.PortForwardRequest) -> Any:
    validate.required_id(request.pod_sandbox_id, "pod_sandbox_id")
    sandbox = rt.sandbox(request.pod_sandbox_id)
    if sandbox.state != "ready":
        raise FailedPrecondition(f"pod_sandbox_id: pod {sandbox.id} is not ready")
    for port in request.port:
        if not 0 < port < 65536:
            raise InvalidArgument(f"port: {port} out of range")
    if rt.streaming is None:
        raise Unimplemented("PortForward: the streaming server is not available")
    return await rt.streaming.get_port_forward(request)
