"""Container events for GetContainerEvents: one bounded queue per subscriber.

A subscriber that stops reading loses its stream (with a log line) once its
queue is full, instead of making the runtime wait or grow without bound.
"""

from __future__ import annotations

import asyncio
import logging

from cri.api import api_pb2

log = logging.getLogger("rktlet.events")

QUEUE_SIZE = 1024


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[api_pb2.ContainerEventResponse | None]] = set()

    def subscribe(self) -> asyncio.Queue[api_pb2.ContainerEventResponse | None]:
        queue: asyncio.Queue[api_pb2.ContainerEventResponse | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[api_pb2.ContainerEventResponse | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: api_pb2.ContainerEventResponse) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("dropping a container-event subscriber that does not read")
                self._subscribers.discard(queue)
                # Wake it so that it ends its stream.
                queue.get_nowait()
                queue.put_nowait(None)

    def close(self) -> None:
        for queue in list(self._subscribers):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
