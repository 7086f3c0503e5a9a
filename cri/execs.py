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

import json
from typing import Any

from cri import validate
from cri.api import api_pb2
from cri.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unimplemented
from cri.oci.runc import Runc, process_spec_for_exec
from cri.runtime import Runtime

OUTPUT_CAP = 16 << 20


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
    spec = json.loads((rt.bundle_dir(record.id) / "config.json").read_text())
    runc = Runc(
        rt.runc_root,
        binary=rt.config.handler_binary(sandbox.runtime_handler),
        exec_helper=rt.exec_helper,
    )
    result = await runc.exec_sync(
        record.id,
        process_spec_for_exec(spec, cmd, False),
        timeout=request.timeout or None,
        max_output=OUTPUT_CAP,
    )
    if result.timed_out:
        raise DeadlineExceeded(
            f"timeout: command {cmd[0]!r} did not finish within {request.timeout}s"
        )
    return api_pb2.ExecSyncResponse(
        stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
    )


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
