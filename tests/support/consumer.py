"""A kombu consumer on a real Redis through dispatchq's transport (`dispatchq.broker.fetch`)."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Consumer, Queue


def consume(conn: Connection, queue: str, count: int) -> tuple[Any, list[Any]]:
    """A consumer on `queue` and the first `count` messages it was handed, in fetch order
    (unacknowledged), with its channel."""
    got: list[Any] = []
    channel = conn.channel()
    consumer = Consumer(channel, [Queue(queue, routing_key=queue)], accept=["json"],
                        on_message=got.append)  # fmt: skip
    consumer.consume()
    while len(got) < count:
        conn.drain_events(timeout=5)
    return channel, got
