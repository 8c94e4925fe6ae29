"""`dispatchq.broker.fetch` on a real redis-server (BLMOVE, leases and scripts are the point here),
through kombu as a worker uses it, without a worker process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from unittest.mock import patch

import pytest
import redis
from kombu import Connection

from dispatchq.broker.app import TASK_DISPATCH
from dispatchq.broker.fetch import Counted, ReliableChannel, ReliableTransport
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.store import keys
from dispatchq.store.messages import celery_message
from dispatchq.store.records import DELIVERIES
from tests.support.consumer import consume as consume_from
from tests.support.requests import message_body

QUEUE = "fetch-test"


class CountingChannel(ReliableChannel):
    def counted(self) -> Counted | None:
        return Counted(TASK_DISPATCH, keys.request(""), 60)


class CountingTransport(ReliableTransport):
    Channel = CountingChannel


@pytest.fixture
def connection(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Connection]:
    with Connection(redis_server.url, transport=ReliableTransport) as conn:
        yield conn


def push(client: redis.Redis, *request_ids: str) -> None:
    for rid in request_ids:
        client.lpush(QUEUE, celery_message(message_body(rid, "video"), QUEUE))


def consume(conn: Connection, count: int) -> tuple[Any, list[Any]]:
    """A consumer on QUEUE and the first `count` messages it was handed (unacknowledged)."""
    return consume_from(conn, QUEUE, count)


def request_id(message: Any) -> str:
    return str(message.headers["id"])


def test_a_fetched_message_waits_in_the_consumers_inflight_list_until_acknowledged(
    connection: Connection, redis_client: redis.Redis
) -> None:
    push(redis_client, "r-1")
    channel, [message] = consume(connection, 1)
    inflight = keys.inflight(channel.consumer_id, QUEUE)
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.llen(inflight) == 1
    assert redis_client.exists(keys.lease(channel.consumer_id))  # its lease, renewed
    message.ack()
    assert redis_client.llen(inflight) == 0


def test_a_closing_channel_gives_its_unacknowledged_messages_back(
    connection: Connection, redis_client: redis.Redis
) -> None:
    push(redis_client, "r-1")
    channel, [message] = consume(connection, 1)
    assert request_id(message) == "r-1"
    channel.close()
    [item] = redis_client.lrange(QUEUE, 0, -1)
    assert json.loads(item)["headers"]["id"] == "r-1"
    assert not redis_client.exists(keys.lease(channel.consumer_id))


def test_a_dead_consumers_messages_are_reclaimed_by_a_live_one(
    connection: Connection, redis_client: redis.Redis
) -> None:
    # A consumer killed with a message in flight: its list and registration, no lease.
    dead = keys.inflight("dead", QUEUE)
    redis_client.lpush(dead, celery_message(message_body("r-lost", "video"), QUEUE))
    redis_client.sadd(keys.INFLIGHT, f"dead:{QUEUE}")
    channel, [message] = consume(connection, 1)  # its first fetch sweeps, then takes it
    assert request_id(message) == "r-lost"
    assert not redis_client.exists(dead)
    assert redis_client.smembers(keys.INFLIGHT) == {f"{channel.consumer_id}:{QUEUE}".encode()}


def test_a_live_consumers_messages_are_left_alone(
    connection: Connection, redis_client: redis.Redis
) -> None:
    alive = keys.inflight("alive", QUEUE)
    redis_client.lpush(alive, celery_message(message_body("r-busy", "video"), QUEUE))
    redis_client.sadd(keys.INFLIGHT, f"alive:{QUEUE}")
    redis_client.set(keys.lease("alive"), 1, ex=keys.LEASE_TTL)
    push(redis_client, "r-1")
    _, [message] = consume(connection, 1)
    assert request_id(message) == "r-1"
    assert redis_client.llen(alive) == 1


def test_a_rejected_message_goes_back_to_its_queue(
    connection: Connection, redis_client: redis.Redis
) -> None:
    push(redis_client, "r-1")
    channel, [message] = consume(connection, 1)
    message.reject(requeue=True)
    assert redis_client.llen(keys.inflight(channel.consumer_id, QUEUE)) == 0
    assert redis_client.llen(QUEUE) == 1


def test_a_counting_fetch_counts_deliveries_in_the_request_record(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    push(redis_client, "r-1", "r-2", "r-3")  # a busy queue: fetches after the first count
    with Connection(redis_server.url, transport=CountingTransport) as conn:
        _, got = consume(conn, 3)
        for message in got:
            message.ack()
    counts = {rid: redis_client.hget(keys.request(rid), DELIVERIES) for rid in ("r-2", "r-3")}
    assert counts == {"r-2": b"1", "r-3": b"1"}
    assert redis_client.ttl(keys.request("r-2")) > 0


def test_a_publish_on_a_channel_closed_by_a_lost_connection_reconnects(
    connection: Connection, redis_client: redis.Redis
) -> None:
    """kombu closes a channel whose connection was lost while a publisher (a task's retry)
    may still hold it: the publish reconnects and goes through instead of failing with
    `'NoneType' object has no attribute 'client'` (which ended requests in a Redis restart)."""
    producer = connection.Producer()
    channel: Any = producer.channel
    channel.close()  # what kombu does to it as the connection is lost
    assert channel.connection is None
    producer.publish({"n": 1}, routing_key=QUEUE, retry=True, retry_policy={"max_retries": 3})
    [item] = redis_client.lrange(QUEUE, 0, -1)
    assert cast(Any, producer.channel).connection is not None  # revived on a new channel
    assert json.loads(item)["properties"]["delivery_info"]["routing_key"] == QUEUE


def test_acknowledgements_at_the_same_time_share_a_round_trip(
    connection: Connection, redis_client: redis.Redis
) -> None:
    """Twelve threads acknowledge at once: every message leaves the in-flight list, each
    thread returns after its own is gone, and they took fewer round trips than messages."""
    push(redis_client, *(f"r-{n}" for n in range(12)))
    channel, messages = consume(connection, 12)
    inflight = keys.inflight(channel.consumer_id, QUEUE)
    assert redis_client.llen(inflight) == 12
    executes = 0
    real = redis.client.Pipeline.execute
    gate = threading.Barrier(12)

    def counted(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        nonlocal executes
        executes += 1
        time.sleep(0.05)  # a slow round trip: the others queue behind it
        return real(self, *args, **kwargs)

    def ack(message: Any) -> int:
        gate.wait()
        message.ack()
        return int(redis_client.llen(inflight))

    with patch.object(redis.client.Pipeline, "execute", counted), \
            ThreadPoolExecutor(12) as pool:  # fmt: skip
        left = list(pool.map(ack, messages))
    assert redis_client.llen(inflight) == 0
    assert all(n < 12 for n in left)  # each returned once its own was removed
    assert 1 <= executes < 12
