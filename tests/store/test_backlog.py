"""The queue's backlog over time (`dispatchq.store.backlog`), on a real redis-server."""

from __future__ import annotations

import json

import redis

from dispatchq.store import keys
from dispatchq.store.backlog import BacklogSampler, history

QUEUE = "q-backlog"


def test_a_sample_is_taken_when_due_and_the_oldest_go(redis_client: redis.Redis) -> None:
    redis_client.delete(keys.backlog(QUEUE), QUEUE, keys.lanes(QUEUE), keys.lane("b1"))
    redis_client.rpush(QUEUE, "m1", "m2")
    redis_client.hset(keys.lanes(QUEUE), "b1", "acme")
    redis_client.rpush(keys.lane("b1"), "m3", "m4", "m5")
    sampler = BacklogSampler(redis_client, QUEUE)
    sampler.due()
    sampler.due()  # not due again yet: nothing more
    [sample] = history(redis_client, QUEUE)
    assert (sample.interactive, sample.batches, sample.total) == (2, 3, 5)
    assert 0 < redis_client.ttl(keys.backlog(QUEUE)) <= keys.BACKLOG_TTL
    older = [json.dumps([n, n, 0]) for n in range(keys.BACKLOG_SAMPLES + 5)]
    redis_client.rpush(keys.backlog(QUEUE), *older)
    sampler._last = 0.0
    sampler.due()
    samples = history(redis_client, QUEUE)
    assert len(samples) == keys.BACKLOG_SAMPLES  # capped: the oldest went
    assert [s.total for s in samples[-2:]] == [5, 5]  # oldest first, the newest last
    redis_client.lset(keys.backlog(QUEUE), 5, "not a sample")
    assert len(history(redis_client, QUEUE)) == keys.BACKLOG_SAMPLES - 1  # skipped
