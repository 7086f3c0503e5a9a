"""Answers kept between changes (PodSandboxStatus, filtered lists): a change shows next call.

A real :class:`cri.runtime.Runtime` in this process over a real store; records are
written to the store as the RPC families write them, or by another SQLite connection
(another process on the same state), and the handlers are called as the servicer
calls them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from cri import containers, sandboxes
from cri.api import api_pb2
from cri.config import Config
from cri.runtime import Runtime
from tests.cri.test_views import add_container, add_pod

UID = "io.kubernetes.pod.uid"


def with_runtime(tmp_path: Path, body: Callable[[Runtime], Awaitable[None]]) -> None:
    async def main() -> None:
        rt = Runtime(Config(root=str(tmp_path / "root"), run_dir=str(tmp_path / "run")))
        try:
            await body(rt)
        finally:
            await rt.close()

    asyncio.run(main())


def status_request(pod_id: str, verbose: bool = False) -> api_pb2.PodSandboxStatusRequest:
    return api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)


def test_pod_status_follows_every_change(tmp_path: Path) -> None:
    async def body(rt: Runtime) -> None:
        pod = add_pod(rt.store, 1)
        other_pod = add_pod(rt.store, 2)
        ctrs = [add_container(rt.store, pod, k) for k in range(2)]
        add_container(rt.store, other_pod, 0)

        first = await sandboxes.status(rt, status_request(pod.id))
        assert first.status.state == api_pb2.SANDBOX_READY
        assert [c.id for c in first.containers_statuses] == [c.id for c in ctrs]
        assert not first.info
        # What a caller does to its answer is its own.
        first.containers_statuses[0].state = api_pb2.CONTAINER_UNKNOWN
        again = await sandboxes.status(rt, status_request(pod.id))
        assert again.containers_statuses[0].state == api_pb2.CONTAINER_RUNNING
        assert again.timestamp > first.timestamp

        record = rt.store.get_container(ctrs[0].id)
        assert record is not None
        record.state, record.exit_code, record.reason = "exited", 2, "Error"
        rt.store.update_container(record)
        exited = await sandboxes.status(rt, status_request(pod.id))
        assert exited.containers_statuses[0].state == api_pb2.CONTAINER_EXITED
        assert exited.containers_statuses[0].exit_code == 2

        added = add_container(rt.store, pod, 5)
        grown = await sandboxes.status(rt, status_request(pod.id))
        assert [c.id for c in grown.containers_statuses] == [*(c.id for c in ctrs), added.id]

        # Log drops live outside the store: no new generation, still seen.
        rt.note_log_stats(ctrs[1].id, {"dropped_lines": 3, "dropped_bytes": 30}, announce=False)
        dropped = await sandboxes.status(rt, status_request(pod.id))
        assert "3 lines (30 bytes) dropped" in dropped.containers_statuses[1].message

        verbose = await sandboxes.status(rt, status_request(pod.id, verbose=True))
        assert "info" in verbose.info
        assert not (await sandboxes.status(rt, status_request(pod.id))).info

        other = sqlite3.connect(tmp_path / "root" / "state.db", isolation_level=None)
        try:
            other.execute("UPDATE sandboxes SET state='notready' WHERE id=?", (pod.id,))
        finally:
            other.close()
        stopped = await sandboxes.status(rt, status_request(pod.id))
        assert stopped.status.state == api_pb2.SANDBOX_NOTREADY

    with_runtime(tmp_path, body)


def test_filtered_lists_follow_every_change(tmp_path: Path) -> None:
    async def body(rt: Runtime) -> None:
        pods = [add_pod(rt.store, n) for n in range(3)]
        ctrs = [add_container(rt.store, p, k) for p in pods for k in range(3)]
        by_uid = {UID: pods[1].uid}
        pod_filter = api_pb2.PodSandboxFilter(label_selector=by_uid)
        ready = api_pb2.PodSandboxFilter(
            label_selector=by_uid,
            state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY),
        )
        ctr_filter = api_pb2.ContainerFilter(label_selector=by_uid)

        async def pod_ids(flt: api_pb2.PodSandboxFilter) -> list[str]:
            reply = await sandboxes.list_(rt, api_pb2.ListPodSandboxRequest(filter=flt))
            return [p.id for p in reply.items]

        async def ctr_states() -> dict[str, int]:
            request = api_pb2.ListContainersRequest(filter=ctr_filter)
            reply = await containers.list_(rt, request)
            return {c.id: c.state for c in reply.containers}

        assert await pod_ids(pod_filter) == await pod_ids(ready) == [pods[1].id]
        running = dict.fromkeys((c.id for c in ctrs[3:6]), api_pb2.CONTAINER_RUNNING)
        assert await ctr_states() == running

        sandbox = rt.store.get_sandbox(pods[1].id)
        assert sandbox is not None
        sandbox.state = "notready"
        rt.store.update_sandbox(sandbox)
        assert await pod_ids(ready) == []
        assert await pod_ids(pod_filter) == [pods[1].id]

        record = rt.store.get_container(ctrs[4].id)
        assert record is not None
        record.state = "exited"
        rt.store.update_container(record)
        rt.store.delete_container(ctrs[5].id)
        assert await ctr_states() == {
            ctrs[3].id: api_pb2.CONTAINER_RUNNING,
            ctrs[4].id: api_pb2.CONTAINER_EXITED,
        }

        other = sqlite3.connect(tmp_path / "root" / "state.db", isolation_level=None)
        try:
            other.execute("DELETE FROM containers WHERE id=?", (ctrs[3].id,))
            other.execute("UPDATE sandboxes SET state='ready' WHERE id=?", (pods[1].id,))
        finally:
            other.close()
        assert await ctr_states() == {ctrs[4].id: api_pb2.CONTAINER_EXITED}
        assert await pod_ids(ready) == [pods[1].id]

    with_runtime(tmp_path, body)
