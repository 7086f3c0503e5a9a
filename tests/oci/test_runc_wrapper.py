"""cri.oci.runc against real runc: state, ps, exec, update, stats, delete, errors."""

from __future__ import annotations

import asyncio
import json
import os
import select
from pathlib import Path
from typing import Any

import pytest

from cri import cgroups
from cri.api import api_pb2
from cri.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.oci.capabilities import capabilities_from_mask
from cri.oci.host import HostInfo
from cri.oci.resources import linux_resources
from cri.oci.runc import Runc, RuncError, process_spec_for_exec
from tests.oci.oci_helpers import Runner, Started, container_config, spec_for, unique_id

pytestmark = pytest.mark.root


def start(runner: Runner, rootfs: Path, **security: Any) -> Started:
    cfg = container_config(command=["sh", "-c", "echo ready; read x"], **security)
    cfg.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    cid = unique_id()
    started = runner.start(spec_for(runner, rootfs, cfg, cid=cid), cid)
    assert started.readline() == b"ready\n"
    return started


def wait_exit(pid: int, timeout: float = 30) -> None:
    """Block until ``pid`` (not our child) has exited, via a pidfd: no polling."""
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], timeout)[0], f"pid {pid} still running"
    finally:
        os.close(fd)


def make_runc(runner: Runner) -> Runc:
    return Runc(runner.root, log_dir=runner.work / "runc-logs")


def test_state_ps_list(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs)
    runc = make_runc(runner)

    async def scenario() -> None:
        state = await runc.state(started.id)
        assert (state.id, state.pid, state.status) == (started.id, started.pid, "running")
        assert state.annotations["io.kubernetes.cri.container-type"] == "container"
        assert await runc.ps(started.id) == [started.pid]
        assert [s.id for s in await runc.list_containers()] == [started.id]

    asyncio.run(scenario())


def test_exec_sync_inherits_security_context(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs, run_as_user=1000, drop_caps=["ALL"], add_caps=["KILL"])
    runc = make_runc(runner)
    process = process_spec_for_exec(
        started.spec,
        [
            "sh",
            "-c",
            "id -u; echo $HOME; pwd; grep -E 'Seccomp:|NoNewPrivs' /proc/self/status; "
            "echo err >&2; exit 3",
        ],
    )
    result = asyncio.run(runc.exec_sync(started.id, process, timeout=30))
    assert result.exit_code == 3
    assert result.stderr == b"err\n"
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == ["1000", "/home/app", "/"]
    assert lines[3].split() == ["NoNewPrivs:", "0"]
    assert lines[4].split() == ["Seccomp:", "2"]
    assert process["capabilities"]["bounding"] == ["CAP_KILL"]


def test_exec_sync_root_keeps_container_capabilities(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs, drop_caps=["ALL"], add_caps=["CHOWN", "KILL"])
    process = process_spec_for_exec(started.spec, ["grep", "CapEff", "/proc/self/status"])
    result = asyncio.run(make_runc(runner).exec_sync(started.id, process, timeout=30))
    mask = int(result.stdout.split()[1], 16)
    assert capabilities_from_mask(mask) == {"CAP_CHOWN", "CAP_KILL"}


def test_exec_sync_timeout_kills_the_process(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs)
    runc = make_runc(runner)

    async def scenario() -> None:
        process = process_spec_for_exec(started.spec, ["sh", "-c", "echo begun; exec sleep 60"])
        result = await runc.exec_sync(started.id, process, timeout=0.5)
        assert result.timed_out
        assert result.stdout == b"begun\n"
        assert result.exit_code == 128 + 9
        # The exec'd sleep is gone: only the container's init is left.
        assert await runc.ps(started.id) == [started.pid]

    asyncio.run(scenario())


def test_exec_sync_output_is_bounded(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs)
    process = process_spec_for_exec(started.spec, ["head", "-c", "100000", "/dev/zero"])
    result = asyncio.run(
        make_runc(runner).exec_sync(started.id, process, timeout=30, max_output=1000)
    )
    assert (result.exit_code, len(result.stdout), result.truncated) == (0, 1000, True)


def test_exec_sync_with_stdin_and_background_child(runner: Runner, rootfs: Path) -> None:
    # A child left running with the output pipe open must not hang the call.
    started = start(runner, rootfs)
    process = process_spec_for_exec(started.spec, ["sh", "-c", "cat; sleep 30 &"])
    result = asyncio.run(
        make_runc(runner).exec_sync(started.id, process, timeout=20, stdin=b"piped\n")
    )
    assert (result.exit_code, result.stdout, result.timed_out) == (0, b"piped\n", False)


def test_errors_map_to_cri_errors(runner: Runner, rootfs: Path) -> None:
    runc = make_runc(runner)
    process = {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": []}

    async def scenario() -> None:
        with pytest.raises(NotFound, match="does not exist"):
            await runc.state("no-such-container")
        with pytest.raises(NotFound):
            await runc.exec_sync("no-such-container", process, timeout=10)
        await runc.delete("no-such-container")  # missing_ok by default
        with pytest.raises(NotFound):
            await runc.delete("no-such-container", missing_ok=False)
        with pytest.raises(InvalidArgument, match="tty"):
            await runc.exec_sync("x", {**process, "terminal": True})

    asyncio.run(scenario())


def test_exec_in_stopped_container_is_failed_precondition(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs)
    runc = make_runc(runner)

    async def scenario() -> None:
        started.write(b"\n")  # the shell's read returns and the container exits
        wait_exit(started.pid)
        state = await runc.state(started.id)
        assert state.status == "stopped"
        process = process_spec_for_exec(started.spec, ["true"])
        with pytest.raises(FailedPrecondition):
            await runc.exec_sync(started.id, process, timeout=10)
        await runc.delete(started.id, force=False)
        with pytest.raises(NotFound):
            await runc.state(started.id)

    asyncio.run(scenario())


def test_update_resources_and_stats(runner: Runner, rootfs: Path, host: HostInfo) -> None:
    started = start(runner, rootfs)
    runc = make_runc(runner)
    res = api_pb2.LinuxContainerResources(memory_limit_in_bytes=48 << 20, cpu_shares=256)

    async def scenario() -> None:
        await runc.update(started.id, linux_resources(res, host))
        stats = await runc.stats(started.id)
        assert stats["memory"]["usage"]["limit"] == 48 << 20
        assert stats["pids"]["current"] >= 1

    asyncio.run(scenario())
    layout = cgroups.detect_layout()
    stats = cgroups.read_stats(cgroups.cgroup_dir(started.cgroup), layout)
    assert stats.memory is not None and stats.memory.limit_bytes == 48 << 20


def test_kill_and_force_delete(runner: Runner, rootfs: Path) -> None:
    started = start(runner, rootfs)
    runc = make_runc(runner)

    async def scenario() -> None:
        await runc.kill(started.id, 9)
        assert started.readline() == b""  # the pipe closes when the shell dies
        await runc.delete(started.id)
        with pytest.raises(NotFound):
            await runc.state(started.id)

    asyncio.run(scenario())


def test_runc_error_carries_runc_message(tmp_path: Path) -> None:
    runc = Runc(tmp_path / "root", binary="/nonexistent/runc")
    with pytest.raises(RuncError, match="not found"):
        asyncio.run(runc.state("x"))


def test_process_spec_for_exec_copies_security_fields() -> None:
    spec: dict[str, Any] = {
        "process": {
            "user": {"uid": 5, "gid": 6, "additionalGids": [6, 7]},
            "env": ["A=1", "B=2"],
            "cwd": "/work",
            "capabilities": {"bounding": ["CAP_KILL"]},
            "noNewPrivileges": True,
            "apparmorProfile": "rktlet-default",
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2}],
            "oomScoreAdj": 5,
            "args": ["init"],
        }
    }
    process = process_spec_for_exec(spec, ["ls", "-l"], tty=True, env=["B=3"])
    assert process == {
        "terminal": True,
        "user": {"uid": 5, "gid": 6, "additionalGids": [6, 7]},
        "args": ["ls", "-l"],
        "env": ["A=1", "B=3"],
        "cwd": "/work",
        "noNewPrivileges": True,
        "capabilities": {"bounding": ["CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2}],
        "apparmorProfile": "rktlet-default",
    }
    process["user"]["additionalGids"].append(99)
    assert spec["process"]["user"]["additionalGids"] == [6, 7]  # a deep copy
    json.dumps(process)
    with pytest.raises(InvalidArgument, match="cmd"):
        process_spec_for_exec(spec, [])
