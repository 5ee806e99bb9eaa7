"""The event fan-out: every subscriber gets every event in order; one that falls behind
further than its queue gets an end marker instead of a silent gap."""

from __future__ import annotations

import asyncio
import threading

from cri.events import EventHub


def test_every_subscriber_gets_every_event_in_order():
    async def main():
        hub = EventHub(queue_size=10)
        a, b = hub.subscribe(), hub.subscribe()

        def publish_all() -> None:
            for i in range(5):
                hub.publish(f"c{i}", "created")

        t = threading.Thread(target=publish_all)
        t.start()
        t.join()
        got_a = [await a.get() for _ in range(5)]
        got_b = [await b.get() for _ in range(5)]
        hub.unsubscribe(a)
        hub.unsubscribe(b)
        return got_a, got_b

    got_a, got_b = asyncio.run(main())
    ids = [f"c{i}" for i in range(5)]
    assert [e[0] for e in got_a if e] == [e[0] for e in got_b if e] == ids


def test_a_subscriber_that_falls_behind_is_ended_not_skipped():
    async def main():
        hub = EventHub(queue_size=3)
        slow = hub.subscribe()
        for i in range(6):
            hub.publish(f"c{i}", "started")
        await asyncio.sleep(0)  # let the loop run the queued puts
        await asyncio.sleep(0)
        items = [await slow.get() for _ in range(4)]
        return items, slow.queue.qsize()

    items, left = asyncio.run(main())
    assert [i[0] for i in items[:3] if i] == ["c0", "c1", "c2"]
    assert items[3] is None  # the end marker: the stream is closed with an error
    assert left == 0  # and nothing after it
