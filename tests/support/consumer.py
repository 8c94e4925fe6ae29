"""A kombu consumer on a real Redis through dispatchq's transport (`dispatchq.broker.fetch`)."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Consumer, Queue


def consume(conn: Connection, queue: str, count: int) -> tuple[Any, list[Any]]:
    """A consumer on `queue` and the first `count` messages it was handed, in fetch order
    (unacknowledged), with its channel. Its prefetch limit is `count`, so that a fetch
    (which takes several at once) takes no more."""
    got: list[Any] = []
    channel = conn.channel()
    consumer = Consumer(channel, [Queue(queue, routing_key=queue)], accept=["json"],
                        on_message=got.append)  # fmt: skip
    consumer.qos(prefetch_count=count)
    consumer.consume()
    while len(got) < count:
        conn.drain_events(timeout=5)
    return channel, got
