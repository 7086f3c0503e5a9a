"""Reading logs through the kubelet's ``/containerLogs`` and through ``kubectl logs``.

:class:`Follower` holds a ``follow=true`` request open in a thread inside the node's
namespace and hands over what arrives, so a test can make the container write more
and see it come, then see the stream end when the container does.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.cluster import Node, insecure_tls
from tests.e2e.pods import NAMESPACE, StaticPod


def logs_url(pod: StaticPod, container: str) -> str:
    return f"{pod.node.kubelet_url}/containerLogs/{NAMESPACE}/{pod.full_name}/{container}"


def container_logs(pod: StaticPod, container: str, **params: Any) -> bytes:
    """``GET /containerLogs/…`` with query ``params`` (booleans as the kubelet spells them)."""
    query = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items()}
    reply = pod.node.http_get(logs_url(pod, container), params=query)
    assert reply.status_code == 200, f"{reply.status_code}: {reply.text}"
    return reply.content


_END = object()


class Follower:
    """A ``follow=true`` log request read in the background."""

    def __init__(self, node: Node, url: str, params: dict[str, str]) -> None:
        self._chunks: queue.Queue[object] = queue.Queue()
        self._buffer = b""
        self.ended = False
        self._stop = threading.Event()
        self._client = httpx.Client(verify=insecure_tls(), timeout=httpx.Timeout(30, read=None))

        def read() -> None:
            try:
                with self._client.stream("GET", url, params=params) as reply:
                    if reply.status_code != 200:
                        self._chunks.put(RuntimeError(f"{reply.status_code}: {reply.read()!r}"))
                        return
                    for chunk in reply.iter_raw():
                        if self._stop.is_set():
                            return
                        self._chunks.put(chunk)
            except Exception as exc:
                if not self._stop.is_set():
                    self._chunks.put(exc)
            finally:
                self._chunks.put(_END)

        self._thread = threading.Thread(target=lambda: node.call(read), daemon=True)
        self._thread.start()

    def read_until(self, check: Callable[[bytes], bool], timeout: float = 60) -> bytes:
        """Everything read so far, once ``check`` holds for it (or the stream ended)."""
        while not check(self._buffer):
            if self.ended:
                raise AssertionError(f"the log stream ended before expected: {self._buffer!r}")
            try:
                item = self._chunks.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"nothing more in {timeout} s: {self._buffer!r}") from None
            if item is _END:
                self.ended = True
            elif isinstance(item, Exception):
                raise item
            else:
                assert isinstance(item, bytes)
                self._buffer += item
        return self._buffer

    def wait_end(self, timeout: float = 60) -> bytes:
        """Everything, once the server ended the stream."""
        while not self.ended:
            try:
                item = self._chunks.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the stream did not end in {timeout} s") from None
            if item is _END:
                self.ended = True
            elif isinstance(item, bytes):
                self._buffer += item
            elif isinstance(item, Exception):
                raise item
        return self._buffer

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._client.close()
        self._thread.join(2)


def follow(pod: StaticPod, container: str, **params: Any) -> Follower:
    query = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items()}
    query["follow"] = "true"
    return Follower(pod.node, logs_url(pod, container), query)
