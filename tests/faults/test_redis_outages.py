"""Redis killed and restarted, broker connections dropped, messages delivered twice: nothing
acknowledged is lost, and running a request twice dispatches it once."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from dispatchq.producer.api import Producer
from dispatchq.producer.batch import request_id_for
from dispatchq.store.messages import celery_message
from tests.support.faults import (
    REDELIVERY,
    Accounting,
    FaultStack,
    deliveries,
    drained,
    keys_without_ttl,
    set_latency,
    states,
    wait_until,
)
from tests.support.requests import message_body
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]

AOF_WINDOW = 1.0
"""appendfsync everysec: a crash may lose about the last second of writes."""


def test_redis_killed_and_restarted_mid_batch(fault_stack: FaultStack) -> None:
    """A producer enqueues steadily while redis-server is SIGKILLed and restarted from its
    AOF; every request acknowledged at least 1 s before the crash, or after the restart,
    ends with one outcome and one child. Workers and the producer reconnect unaided."""
    stack = fault_stack
    set_latency(stack.sim.address, 20)
    workers = [w.start() for w in stack.workers(2)]
    crash: dict[str, float] = {}

    def crash_and_restart() -> None:
        assert stack.redis.process is not None
        stack.redis.process.kill()
        stack.redis.process.wait()
        crash["at"] = time.monotonic()
        time.sleep(1.0)
        stack.redis.start()
        crash["back"] = time.monotonic()

    acked: list[tuple[str, float]] = []
    refused = 0
    timer = threading.Timer(3.0, crash_and_restart)
    try:
        with stack.producer() as producer:
            timer.start()
            stop = time.monotonic() + 7.0
            while time.monotonic() < stop:
                try:
                    rid = producer.enqueue("encode", meta={"profile": "hd"})
                except redis.RedisError:
                    refused += 1  # never acknowledged: the caller knows to retry
                    time.sleep(0.05)
                    continue
                acked.append((rid, time.monotonic()))
                time.sleep(0.005)
            timer.join()
            safe = [r for r, t in acked if t <= crash["at"] - AOF_WINDOW or t >= crash["back"]]
            at_risk = [r for r, t in acked if crash["at"] - AOF_WINDOW < t < crash["back"]]
            accounting = Accounting.of(stack, producer, safe, timeout=60 + REDELIVERY)
            risky = producer.wait(at_risk, timeout=5)
            alive = [w.process is not None and w.process.poll() is None for w in workers]
            leftover = keys_without_ttl(producer.redis)
    finally:
        timer.cancel()
        for worker in workers:
            worker.stop()
    lost_at_risk = sum(1 for s in risky.values() if not s.done)
    stack.report(
        "redis SIGKILL + restart (AOF)",
        requests=len(acked),
        faults="1 redis-server SIGKILL, down 1 s",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"{len(safe)} must survive; of {len(at_risk)} acknowledged within "
        f"{AOF_WINDOW:.0f} s of the crash, {lost_at_risk} lost (allowed); {refused} refused",
    )
    assert alive == [True, True]
    accounting.assert_each_succeeded_once(safe)
    assert leftover == []


def test_dropped_broker_connections_and_duplicate_messages_are_harmless(
    fault_stack: FaultStack,
) -> None:
    """Every client connection is killed three times during a batch (acks and results
    in flight are lost, so some requests run again), and half the requests are also pushed
    twice. Each still gets one child and one consistent outcome."""
    stack = fault_stack
    set_latency(stack.sim.address, 30)
    workers = [w.start() for w in stack.workers(2)]
    count = 300
    drops = 0
    try:
        with stack.producer() as producer, stack.client() as admin:
            ids = [producer.enqueue("encode", meta={"profile": "hd"}) for _ in range(count)]
            for rid in ids[::2]:  # a second copy, as a producer retrying a publish makes
                body = message_body(rid, "encode", meta={"profile": "hd"})
                admin.lpush(QUEUE, celery_message(body, QUEUE))
            while drops < 3 and states(producer.redis, ids)["done"] < count:
                time.sleep(1.0)
                admin.client_kill_filter(_type="normal", skipme=True)
                drops += 1
            accounting = Accounting.of(stack, producer, ids, timeout=60 + REDELIVERY)
            # The second copies queued last: let the workers take them all.
            wait_until(lambda: drained(admin), 60, "every message taken")
            delivered = deliveries(producer.redis, ids)
            duplicates_delivered = deliveries(producer.redis, ids[::2])
    finally:
        for worker in workers:
            worker.stop()
    twice = sum(n for times, n in delivered.items() if times > 1)
    stack.report(
        "broker connections dropped + dupes",
        requests=count,
        faults=f"{drops} CLIENT KILLs; {len(ids[::2])} duplicate messages",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"{twice} requests delivered more than once, harmlessly",
    )
    accounting.assert_each_succeeded_once(ids)
    assert min(duplicates_delivered) >= 2  # every duplicate was taken by a worker too


RESTARTS = 20


def _finished(producer: Producer, batch: str) -> bool:
    """Whether the batch has finished, asked until Redis answers (it may be loading)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status = producer.batch_status(batch)
            return status is not None and status.finished
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_twenty_redis_restarts_during_a_batch_end_no_request(fault_stack: FaultStack) -> None:
    """redis-server restarted (SIGTERM, AOF replayed) twenty times in a row while two
    workers run a batch: a connection error anywhere on a request's path (taking it,
    writing ahead, retrying, storing, acknowledging) means "try again", so every request
    ends exit 0, with one child. (The time limit is an hour by default; the suite's 6 s
    would be spent waiting for Redis by a request taken as the restarts begin.)"""
    stack = fault_stack.with_env(DISPATCHQ_TASK_TIME_LIMIT="120")
    set_latency(stack.sim.address, 20)
    workers = [w.start() for w in stack.workers(2)]
    items = [{"meta": {"profile": "hd"}} for _ in range(1_500)]
    try:
        with stack.producer() as producer:
            batch = producer.dispatch_batch("encode", items, preflight=False)
            ids = [request_id_for(batch, n) for n in range(1, len(items) + 1)]
            during = 0
            for n in range(RESTARTS):
                time.sleep(0.3)
                during += not _finished(producer, batch)
                stack.redis.stop()
                # Every fourth outage outlasts redis-py's own retries (a few seconds), so
                # commands fail, and the task's retry and requeue paths are taken too.
                time.sleep(3.0 if n % 4 == 3 else 0)
                stack.redis.start()
            accounting = Accounting.of(stack, producer, ids, timeout=120 + REDELIVERY)
            alive = [w.process is not None and w.process.poll() is None for w in workers]
    finally:
        for worker in workers:
            worker.stop()
    stack.report(
        "redis restarted 20x during a batch",
        requests=len(ids),
        faults=f"{RESTARTS} redis-server restarts (SIGTERM + AOF), {during} mid-batch, "
        f"{RESTARTS // 4} of them down 3 s",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"exit codes {dict(accounting.exit_codes)}",
    )
    assert during == RESTARTS  # every restart hit the batch while it ran
    assert alive == [True, True]
    accounting.assert_each_succeeded_once(ids)
