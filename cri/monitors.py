"""The daemon's side of the per-pod monitors: start them, talk to them, hear exits.

Each pod has one :class:`MonitorConnection` (asyncio, one unix socket) for
requests, and the same connection subscribed to events.  A monitor outlives the
daemon: on restart the daemon connects to the existing socket again and asks
for the status of every app; nothing in the monitor depends on the daemon.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from cri.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RktletError,
    Unavailable,
)
from iottymux import pagemerge
from iottymux.forkserver import ForkServer, ForkServerUnavailable
from iottymux.monitor_cmd import start_detached, systemd_running

log = logging.getLogger("rktlet.monitors")

_ERRORS: dict[str, type[RktletError]] = {
    "InvalidArgument": InvalidArgument,
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "FailedPrecondition": FailedPrecondition,
    "ResourceExhausted": ResourceExhausted,
}


class MonitorError(RktletError):
    """The monitor answered with an error the daemon does not classify."""


EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
LostHandler = Callable[["MonitorConnection"], None]


class MonitorConnection:
    """Requests to one monitor, answered in any order, plus its event stream.

    The connection also watches the monitor process itself: a pidfd of the
    socket's peer (the monitor is double-forked, so not the daemon's child, but
    a pidfd works on any pid) sits in the event loop as a reader and becomes
    readable the moment the monitor exits, however it died.  ``on_lost`` is
    called once, when the monitor exits or the connection ends without
    :meth:`close` having been called.
    """

    def __init__(
        self,
        sandbox_id: str,
        run_dir: str,
        on_event: EventHandler,
        on_lost: LostHandler | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.run_dir = run_dir
        self.control_path = os.path.join(run_dir, "control.sock")
        self._on_event = on_event
        self._on_lost = on_lost
        #: The monitor's pid, from the socket's peer credentials.
        self.pid = 0
        self._pidfd = -1
        #: Set once the monitor process is known to have exited.
        self.exited = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.closed = False

    async def connect(self) -> None:
        # Reach a deep path through a directory fd: sun_path holds 108 bytes.
        dir_fd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                f"/proc/self/fd/{dir_fd}/control.sock", limit=1 << 22
            )
        finally:
            os.close(dir_fd)
        self._watch_peer()
        self._task = asyncio.create_task(self._read_loop(), name=f"monitor-{self.sandbox_id}")
        await self.request("subscribe")

    def _watch_peer(self) -> None:
        assert self._writer is not None
        sock: socket.socket | None = self._writer.get_extra_info("socket")
        if sock is None:
            return
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid = struct.unpack("3i", creds)[0]
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError as exc:
            # Gone already (the read loop will see EOF), or no pidfd on this kernel.
            log.debug("pod %s: no pidfd for monitor %d: %s", self.sandbox_id, self.pid, exc)
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._peer_exited)

    def _unwatch_peer(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _peer_exited(self) -> None:
        self._unwatch_peer()
        self.exited.set()
        self._lost()

    def _lost(self) -> None:
        if self.closed and self._on_lost is None:
            return
        handler, self._on_lost = self._on_lost, None
        self.closed = True
        if handler is not None:
            handler(self)

    def monitor_alive(self) -> bool:
        """Whether the monitor process still runs (False once it has exited)."""
        if self.exited.is_set():
            return False
        if self._pidfd >= 0:
            return not select.select([self._pidfd], [], [], 0)[0]
        return self.pid > 0 and os.path.exists(f"/proc/{self.pid}")

    def retire(self) -> None:
        """The daemon is about to end this monitor on purpose: its exit is no loss."""
        self._on_lost = None

    async def close(self) -> None:
        self.closed = True
        self._on_lost = None
        self._unwatch_peer()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def request(
        self, op: str, *, timeout: float | None = 120.0, **fields: Any
    ) -> dict[str, Any]:
        if self._writer is None or self.closed:
            raise Unavailable(f"pod {self.sandbox_id}: monitor is not connected")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        line = json.dumps({"id": request_id, "op": op, **fields}).encode() + b"\n"
        try:
            self._writer.write(line)
            await self._writer.drain()
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise  # an OSError subclass, but the caller's deadline, not a lost link
        except (ConnectionError, OSError) as exc:
            raise Unavailable(f"pod {self.sandbox_id}: monitor connection lost: {exc}") from None
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            cls = _ERRORS.get(str(error.get("code")), MonitorError)
            raise cls(str(error.get("message", "monitor error")))
        return reply

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("pod %s: monitor sent a bad line", self.sandbox_id)
                    continue
                if "event" in message:
                    try:
                        await self._on_event(message)
                    except RktletError as exc:  # e.g. a read-only state disk
                        log.warning("pod %s: cannot record an event: %s", self.sandbox_id, exc)
                    except Exception:
                        log.exception("pod %s: handling monitor event failed", self.sandbox_id)
                    continue
                future = self._pending.get(message.get("id"))
                if future is not None and not future.done():
                    future.set_result(message)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("monitor closed the connection"))
            self._lost()


_fork_server: ForkServer | None = None


def fork_server() -> ForkServer | None:
    """This daemon's monitor fork server (started on first use), or None when disabled.

    ``RKTLET_NO_FORK_SERVER=1`` starts every monitor as a new interpreter instead.
    """
    global _fork_server
    if os.environ.get("RKTLET_NO_FORK_SERVER") == "1":
        return None
    if _fork_server is None:
        _fork_server = ForkServer()
        # Closing our end is what tells it to exit; a killed daemon closes it too.
        atexit.register(_fork_server.close)
    return _fork_server


async def prestart_fork_server() -> None:
    """Start the fork server with the daemon where monitors will be forked from it.

    The first RunPodSandbox then costs a fork, not an interpreter start, and the
    daemon's descriptors are the same before and after its first pod.
    """
    if pagemerge.enabled() and not pagemerge.ksm_running():
        log.info(
            "KSM is off on this host (%s is not 1): pod monitors offer their memory to it, "
            "but each keeps its own copy of ~2 MiB of interpreter pages until it runs",
            pagemerge.KSM_RUN,
        )
    if systemd_running() and os.environ.get("RKTLET_NO_SYSTEMD") != "1":
        return  # monitors run as transient units; a fork server would sit idle
    server = fork_server()
    if server is None:
        return
    try:
        await asyncio.to_thread(server.start)
    except ForkServerUnavailable as exc:
        log.warning("%s; monitors will start as new interpreters until it can", exc)


async def start_monitor(run_dir: str, sandbox_id: str = "") -> int:
    """Start a pod's monitor: a transient systemd unit under systemd, else forked by
    the fork server, else (no fork server) detached from a new interpreter."""
    unit = f"rktlet-pod-{sandbox_id[:16]}" if sandbox_id else ""
    try:
        return await asyncio.to_thread(
            start_detached, run_dir, unit=unit, fork_server=fork_server()
        )
    except (RuntimeError, OSError) as exc:
        raise Unavailable(f"cannot start the pod monitor: {exc}") from None
