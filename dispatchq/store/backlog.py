"""The queue's backlog over time: what `dispatchq queue` shows now, sampled every
`keys.BACKLOG_EVERY` seconds by the leading tracker into `keys.backlog(queue)`, for the
dashboard's chart. An hour is kept (`keys.BACKLOG_SAMPLES`); the list expires when no
tracker samples it. A sample costs three round trips every five seconds, nothing per
request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import cast

import redis

from dispatchq.store import keys, lanes


@dataclass(frozen=True)
class Sample:
    at: float
    """Unix time."""
    interactive: int
    """Waiting in the interactive lane (requests in no batch)."""
    batches: int
    """Waiting in the batches' lanes."""

    @property
    def total(self) -> int:
        return self.interactive + self.batches


class BacklogSampler:
    """Takes a sample when one is due (`due()`); the tracker's leader calls it between passes."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue
        self._last = 0.0

    def due(self) -> None:
        now = time.time()
        if now - self._last < keys.BACKLOG_EVERY:
            return
        self._last = now
        now_backlog = lanes.backlog(self.client, self.queue)
        batches = sum(sum(lane.values()) for lane in now_backlog.batches.values())
        key = keys.backlog(self.queue)
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, json.dumps([round(now, 1), now_backlog.interactive, batches]))
        pipe.ltrim(key, 0, keys.BACKLOG_SAMPLES - 1)
        pipe.expire(key, keys.BACKLOG_TTL)
        pipe.execute()


def history(client: redis.Redis, queue: str) -> list[Sample]:
    """The kept samples, oldest first (one LRANGE)."""
    raw = cast(list[bytes], client.lrange(keys.backlog(queue), 0, -1))
    samples = []
    for entry in reversed(raw):
        try:
            at, interactive, batches = json.loads(entry)
            samples.append(Sample(float(at), int(interactive), int(batches)))
        except (ValueError, TypeError):
            continue  # not ours: skipped, never fatal to a page
    return samples
