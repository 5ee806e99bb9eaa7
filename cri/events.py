"""Fan-out of container lifecycle events to GetContainerEvents subscribers.

Publishers are worker threads (the managers); subscribers are asyncio tasks.
Each subscriber has a bounded queue: one that falls behind gets a `None`
marker and its stream is ended, never a silent gap (kubelet's evented PLEG
then relists, which is what it does on any stream error).
"""

from __future__ import annotations

import asyncio
import threading
import time

QUEUE_SIZE = 1000

Event = tuple[str, str, int]  # container id, kind, timestamp ns


class Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = QUEUE_SIZE) -> None:
        self.loop = loop
        self.size = size
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(size + 1)
        self.overflowed = False

    def _put(self, item: Event) -> None:  # on the loop's thread
        if self.overflowed:
            return
        if self.queue.qsize() >= self.size:
            self.overflowed = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(item)

    async def get(self) -> Event | None:
        return await self.queue.get()


class EventHub:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> Subscriber:
        sub = Subscriber(asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, cid: str, kind: str) -> None:
        """Callable from any thread."""
        item = (cid, kind, time.time_ns())
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            if s.loop.is_closed():
                continue
            s.loop.call_soon_threadsafe(s._put, item)
