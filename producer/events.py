"""Follow the completion event stream from Python (`Producer.events`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from dispatchq.store.completion import parse_entry


def follow_events(
    client: redis.Redis, stream: str, group: str, consumer: str, *, block: float, start: str
) -> Iterator[dict[str, Any]]:
    """Parsed events read with XREADGROUP as `consumer` of `group`; each acknowledged when
    the next is asked for (so at least once: one whose handling raised stays pending)."""
    if not stream:
        raise ValueError("the event stream is off (DISPATCHQ_EVENTS_STREAM is empty)")
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise
    while True:
        answer: Any = client.xreadgroup(
            group, consumer, {stream: ">"}, count=100, block=int(block * 1000)
        )
        for _, entries in answer or []:
            for entry_id, fields in entries:
                event, _ = parse_entry(fields)
                event["stream_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                yield event
                client.xack(stream, group, entry_id)
