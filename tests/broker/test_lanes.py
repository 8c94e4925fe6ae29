"""Fair queueing in `dispatchq.broker.fetch` on a real redis-server, through kombu as a worker uses
it: the interactive lane first, batches and tenants in turn, weights, and every way a
message goes back (requeue, give-back, reclaim, retry) returning it to its own lane."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange

from dispatchq.broker.app import TASK_DISPATCH
from dispatchq.broker.fetch import FETCH_MOST, Counted, ReliableChannel, ReliableTransport
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.enqueue import Enqueuer, NewRequest
from dispatchq.store import keys, lanes
from dispatchq.store.messages import celery_message
from dispatchq.store.records import DELIVERIES
from tests.support.consumer import consume as consume_from
from tests.support.requests import message_body

QUEUE = "lanes-test"


class TaskChannel(ReliableChannel):
    """As `dispatchq.broker.poison`'s channel: retries of a batch's requests go to its lane."""

    def lane_of(self, message: Any) -> tuple[str, str] | None:
        return lanes.lane_of(message, TASK_DISPATCH)


class TaskTransport(ReliableTransport):
    Channel = TaskChannel


class WeightedChannel(ReliableChannel):
    def weights(self) -> dict[str, int]:
        return {"heavy": 3}


class WeightedTransport(ReliableTransport):
    Channel = WeightedChannel


@pytest.fixture
def connection(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Connection]:
    with Connection(redis_server.url, transport=TaskTransport) as conn:
        yield conn


def enqueue(client: redis.Redis, batch: str | None, count: int, tenant: str | None = None) -> None:
    """`count` requests `<batch>-<n>` (or `i-<n>` in no batch), as the producer enqueues."""
    enqueuer = Enqueuer(client, queue=QUEUE, result_ttl=60, blob_ttl=60)
    enqueuer.enqueue(
        NewRequest("video", request_id=f"{batch or 'i'}-{n}", batch_id=batch, tenant=tenant)
        for n in range(count)
    )


def consume(conn: Connection, count: int) -> tuple[Any, list[Any]]:
    """A consumer on QUEUE and the first `count` messages it was handed, in fetch order."""
    return consume_from(conn, QUEUE, count)


def fetch_again(conn: Connection, holding: Any = None) -> None:
    """One more fetch, which finds nothing: the one that unregisters a lane the last fetch
    emptied (by a channel `holding` unacknowledged messages: its prefetch limit lifted)."""
    if holding is not None:
        holding.qos.prefetch_count = 0
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.5)


def source(message: Any) -> str:
    """The batch of a message's request ID (`i` for none)."""
    return str(message.headers["id"]).rpartition("-")[0]


def test_a_request_in_no_batch_is_taken_before_any_batch_item(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "big", 50)
    enqueue(redis_client, None, 1)
    assert redis_client.llen(QUEUE) == 1  # the batch's items wait in their own lane
    assert redis_client.llen(keys.lane("big")) == 50
    _, got = consume(connection, 3)
    assert [source(m) for m in got] == ["i", "big", "big"]


def test_a_foreign_v1_message_on_the_queue_is_served_first(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "big", 5)
    redis_client.lpush(QUEUE, celery_message(message_body("foreign-1", "video"), QUEUE))
    _, [first, second] = consume(connection, 2)
    assert first.headers["id"] == "foreign-1"
    assert source(second) == "big"


def test_batches_take_turns(connection: Connection, redis_client: redis.Redis) -> None:
    enqueue(redis_client, "a", 6)
    enqueue(redis_client, "b", 6)
    enqueue(redis_client, "c", 2)
    _, got = consume(connection, 14)
    order = [source(m) for m in got]
    assert Counter(order[:6]) == {"a": 2, "b": 2, "c": 2}
    assert Counter(order[6:]) == {"a": 4, "b": 4}
    # Items of one batch keep their order.
    assert [m.headers["id"] for m in got if source(m) == "a"] == [f"a-{n}" for n in range(6)]


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats")["cmdstat_evalsha"]["calls"])


def test_one_fetch_takes_several_messages_turn_by_turn(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "a", 40)
    enqueue(redis_client, "b", 40)
    before = evalsha_calls(redis_client)
    _, got = consume(connection, FETCH_MOST)
    assert evalsha_calls(redis_client) - before == 1  # one fetch for all of them
    assert [source(m) for m in got] == ["a", "b"] * (FETCH_MOST // 2)


def test_a_lone_batch_gives_a_whole_fetch_at_once(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "a", 40)
    before = evalsha_calls(redis_client)
    _, got = consume(connection, FETCH_MOST)
    assert evalsha_calls(redis_client) - before == 1
    assert [m.headers["id"] for m in got] == [f"a-{n}" for n in range(FETCH_MOST)]
    assert redis_client.llen(keys.lane("a")) == 40 - FETCH_MOST


def test_tenants_take_turns_whatever_their_number_of_batches(
    connection: Connection, redis_client: redis.Redis
) -> None:
    for batch in ("m1", "m2", "m3"):
        enqueue(redis_client, batch, 10, tenant="many")
    enqueue(redis_client, "o1", 10, tenant="one")
    _, got = consume(connection, 12)
    tenants = Counter("one" if source(m) == "o1" else "many" for m in got)
    assert tenants == {"one": 6, "many": 6}


def test_a_tenants_weight_is_its_share(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "h", 20, tenant="heavy")
    enqueue(redis_client, "l", 20, tenant="light")
    with Connection(redis_server.url, transport=WeightedTransport) as conn:
        _, got = consume(conn, 16)
    assert Counter(source(m) for m in got) == {"h": 12, "l": 4}


def test_drained_lanes_leave_the_registry(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "a", 2, tenant="t")
    enqueue(redis_client, "b", 1)
    assert lanes.backlog(redis_client, QUEUE).batches == {"t": {"a": 2}, "-": {"b": 1}}
    _, got = consume(connection, 3)
    for message in got:
        message.ack()
    fetch_again(connection)
    for key in (keys.lanes(QUEUE), keys.tenants(QUEUE), keys.tenant_ring(QUEUE, "t")):
        assert not redis_client.exists(key), key
    assert lanes.backlog(redis_client, QUEUE).total == 0


def test_a_rejected_batch_item_goes_back_to_its_lane(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "a", 1, tenant="t")
    channel, [message] = consume(connection, 1)
    fetch_again(connection, holding=channel)
    assert not redis_client.exists(keys.lanes(QUEUE))  # its lane drained: unregistered
    message.reject(requeue=True)
    assert redis_client.llen(keys.inflight(channel.consumer_id, QUEUE)) == 0
    assert redis_client.llen(QUEUE) == 0
    [item] = redis_client.lrange(keys.lane("a"), 0, -1)
    assert json.loads(item)["headers"]["id"] == "a-0"  # as it was, unwrapped
    assert lanes.backlog(redis_client, QUEUE).batches == {"t": {"a": 1}}
    _, [again] = consume(connection, 1)  # and it is fetched from there
    assert again.headers["id"] == "a-0"


def test_a_closing_channel_gives_batch_items_back_to_their_lanes(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "a", 1)
    enqueue(redis_client, None, 1)
    channel, got = consume(connection, 2)
    assert {source(m) for m in got} == {"i", "a"}
    channel.close()
    assert redis_client.llen(QUEUE) == 1
    assert redis_client.llen(keys.lane("a")) == 1
    assert lanes.backlog(redis_client, QUEUE).batches == {"-": {"a": 1}}


def test_a_dead_consumers_batch_items_are_reclaimed_to_their_lane(
    connection: Connection, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, "a", 1, tenant="t")
    dead = keys.inflight("dead", QUEUE)
    redis_client.rpoplpush(keys.lane("a"), dead)  # as the fetch stores a lane's item:
    item: bytes = redis_client.lindex(dead, 0)  # type: ignore[assignment]
    redis_client.delete(dead, keys.lanes(QUEUE), keys.tenants(QUEUE), keys.tenant_ring(QUEUE, "t"))
    redis_client.lpush(dead, b"\x1et\x1ea\x1e" + item)
    redis_client.sadd(keys.INFLIGHT, f"dead:{QUEUE}")
    _, [message] = consume(connection, 1)  # its first fetch sweeps, then takes it
    assert message.headers["id"] == "a-0"
    assert not redis_client.exists(dead)


def test_a_retry_of_a_batch_item_is_published_to_its_lane(
    connection: Connection, redis_client: redis.Redis
) -> None:
    exchange = Exchange("", type="direct")
    with connection.Producer() as producer:
        for rid, batch in (("r-1", "a"), ("r-2", None)):
            body = [[], message_body(rid, "video", batch_id=batch, tenant="t"), {}]
            producer.publish(body, exchange=exchange, routing_key=QUEUE,
                             headers={"task": TASK_DISPATCH, "id": rid})  # fmt: skip
    assert redis_client.llen(QUEUE) == 1
    assert lanes.backlog(redis_client, QUEUE).batches == {"t": {"a": 1}}


def test_lane_of_refuses_what_is_not_a_batch_item_of_the_task() -> None:
    assert lanes.lane_of({"headers": {"task": "other"}}, TASK_DISPATCH) is None
    assert lanes.lane_of({"headers": {"task": TASK_DISPATCH}, "body": "%%"}, TASK_DISPATCH) is None
    assert lanes.lane_of("junk", TASK_DISPATCH) is None


class CountingTaskChannel(TaskChannel):
    def counted(self) -> Counted | None:
        return Counted(TASK_DISPATCH, keys.request(""), 3600)


class CountingTaskTransport(ReliableTransport):
    Channel = CountingTaskChannel


def test_a_batch_items_delivery_is_counted_and_its_record_keeps_its_own_ttl(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The count leaves a batch item's record the TTL it was enqueued with (the fetch
    renews none); a foreign message on the interactive lane, whose record the count makes,
    gets one."""
    enqueue(redis_client, "a", 1)
    redis_client.lpush(QUEUE, celery_message(message_body("foreign-1", "video"), QUEUE))
    with Connection(redis_server.url, transport=CountingTaskTransport) as conn:
        _, got = consume(conn, 2)
        for message in got:
            message.ack()
    assert redis_client.hget(keys.request("a-0"), DELIVERIES) == b"1"
    assert 0 < redis_client.ttl(keys.request("a-0")) <= 60  # enqueued with 60 s
    assert redis_client.hget(keys.request("foreign-1"), DELIVERIES) == b"1"
    assert 60 < redis_client.ttl(keys.request("foreign-1")) <= 3600
