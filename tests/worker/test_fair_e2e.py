"""Fair queueing end to end: a real worker (one slot, so that the order it takes requests
in is the order it starts them), nomadsim and redis-server. Ordering, not timing: which
requests a worker started before which (the records' `started_at`). Small batches: a
gevent worker with every slot busy fetches again only when its consumer loop's wait
(2 s) ends, so one slot takes a request every 2 s or so."""

from __future__ import annotations

import time

import pytest
import redis

from dispatchq.producer.api import Producer
from dispatchq.producer.batch import request_id_for
from dispatchq.store import keys, lanes
from tests.support.stack import QUEUE, Stack

pytestmark = pytest.mark.integration

WAIT = 120


def items(count: int) -> list[dict[str, object]]:
    return [{"meta": {"profile": "hd"}} for _ in range(count)]


def started(client: redis.Redis, ids: list[str]) -> dict[str, float]:
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(keys.request(rid), "started_at")
    return {rid: float(at) for rid, at in zip(ids, pipe.execute(), strict=True) if at}


def submit(producer: Producer, batch_id: str, count: int, tenant: str | None = None) -> list[str]:
    producer.dispatch_batch(
        "encode", items(count), batch_id=batch_id, detach=True, preflight=False, tenant=tenant
    )
    return [request_id_for(batch_id, n) for n in range(1, count + 1)]


def test_a_dispatch_in_no_batch_overtakes_a_draining_batch(
    clean: Stack, redis_client: redis.Redis
) -> None:
    with clean.producer() as producer, clean.worker("fair-1", concurrency=1):
        batch = submit(producer, "b-backlog", 12)
        while len(started(redis_client, batch)) < 2:  # the batch is draining
            time.sleep(0.05)
        enqueued_at = time.time()
        rid = producer.enqueue("encode", meta={"profile": "sd"}, detach=True)
        statuses = producer.wait([rid, *batch], timeout=WAIT)
    assert all(s.done and s.outcome and s.outcome.exit_code == 0 for s in statuses.values())
    times = started(redis_client, [rid, *batch])
    overtaken = [b for b in batch if times[b] < times[rid]]
    # At most the item running when it was enqueued, and one the worker had reserved.
    assert len([b for b in overtaken if times[b] >= enqueued_at]) <= 2
    assert len(overtaken) < len(batch) // 2


def test_two_tenants_share_whatever_their_number_of_batches(
    clean: Stack, redis_client: redis.Redis
) -> None:
    with clean.producer() as producer:
        many = [rid for n in range(3) for rid in submit(producer, f"b-many-{n}", 4, "many")]
        one = submit(producer, "b-one", 8, "one")
        backlog = lanes.backlog(redis_client, QUEUE)
        assert backlog.tenants == {"many": 12, "one": 8}
        with clean.worker("fair-2", concurrency=1):
            statuses = producer.wait([*many, *one], timeout=WAIT)
    assert all(s.done for s in statuses.values())
    times = started(redis_client, [*many, *one])
    first = sorted(times, key=times.__getitem__)[:12]  # while both tenants had a backlog
    assert 5 <= sum(1 for rid in first if rid in one) <= 7
    assert lanes.backlog(redis_client, QUEUE).total == 0
    assert not redis_client.exists(keys.tenants(QUEUE))
