"""A Redis primary SIGKILLed behind Sentinel: one primary, one replica, three Sentinels
(real redis-server processes, on loopback), two workers, a tracker and a notifier. Nobody
restarts anything: every process finds the promoted replica by itself, and every request
whose enqueue returned ends exactly once, with the right exit code and one Nomad child."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatchq.config.settings import Settings
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.errors import NotReplicated
from dispatchq.producer.api import Producer
from dispatchq.producer.batch import request_id_for
from dispatchq.store import keys
from dispatchq.store.completion import parse_entry
from tests.notifier.test_notifier_e2e import SECRET, Receiver
from tests.support.faults import REDELIVERY, Accounting, FaultStack, wait_until
from tests.support.nomad_jobs import FAST_SIM, mock_encode_job, register
from tests.support.sentinel import MASTER, SentinelGroup
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture(scope="module")
def fast_sim() -> Iterator[NomadSimProcess]:
    """nomadsim running children at a thousandth of their time (`until` finished)."""
    with NomadSimProcess(args=FAST_SIM) as sim:
        register(sim.address, mock_encode_job("enc"))
        yield sim


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup(replicas=1) as g:
        yield g


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _producer(group: SentinelGroup) -> Producer:
    """A producer whose enqueue returns once the replica has the requests too."""
    return Producer(Settings(redis_url=group.url, redis_master_name=MASTER, queue=QUEUE,
                             redis_min_replicas=1, redis_replica_timeout=1.0))  # fmt: skip


def _done(producer: Producer, batch: str) -> int:
    """The batch's ended items, or -1 while Redis does not answer."""
    try:
        status = producer.batch_status(batch)
    except redis.RedisError:
        return -1
    return status.done if status is not None else 0


def _kill_primary(group: SentinelGroup) -> tuple[int, float]:
    old = group.primary()
    assert old.process is not None
    old.process.kill()
    old.process.wait()
    return old.port, time.monotonic()


@pytest.mark.timeout(300)
def test_a_failover_during_a_followed_batch_loses_and_doubles_nothing(
    fault_stack: FaultStack, fast_sim: NomadSimProcess, group: SentinelGroup,
    receiver: Receiver,
) -> None:  # fmt: skip
    count = 2_000
    env = {**fault_stack.env, **group.env, "NOMAD_ADDR": fast_sim.address,
           "DISPATCHQ_TASK_TIME_LIMIT": "120",
           "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{receiver.port}",
           "DISPATCHQ_NOTIFY_SECRET": SECRET}  # fmt: skip
    stack = fault_stack.with_env(**env)
    stack.sim = fast_sim
    logs = stack.log_dir
    items = [{"meta": {"exit_code": "3" if n % 10 == 0 else "0",
                       "run_for": f"{500 + (n * 37) % 1500}s"}}
             for n in range(count)]  # fmt: skip
    workers = [w.start() for w in stack.workers(2)]
    tracker = TrackerProcess(env=env, log_path=logs / "tracker.log").start()
    # Entries the notifier had read but not acknowledged on the old primary are pending on
    # the new one: claimed again after --claim-idle (60 s by default; 5 here).
    notifier = NotifierProcess(env=env, log_path=logs / "notifier.log", claim_idle=5).start()
    try:
        with _producer(group) as producer:
            batch = producer.dispatch_batch("enc", items, until="finished", preflight=False,
                                            notify_url=receiver.url())  # fmt: skip
            ids = [request_id_for(batch, n) for n in range(1, count + 1)]
            wait_until(lambda: _done(producer, batch) >= count // 4, 120, "a quarter done")
            before = _done(producer, batch)
            old_port, killed_at = _kill_primary(group)
            new_port = group.wait_failover(old_port)
            promoted_after = time.monotonic() - killed_at
            wait_until(lambda: _done(producer, batch) > before, 60, "requests ending again")
            ending_again_after = time.monotonic() - killed_at
            group.server(old_port).start()  # back, as a replica of the new primary
            group.wait_synced()
            wait_until(lambda: _done(producer, batch) >= count, 180, "every request to end")
            accounting = Accounting.of(stack, producer, ids, timeout=60 + REDELIVERY)
            wait_until(lambda: f"batch:{batch}" in receiver.delivered(), 90, "the webhook")
            all_ended_after = time.monotonic() - killed_at
            client = producer.redis
            wait_until(lambda: _notifier_caught_up(client), 60, "the notifier to catch up")
            ended = _request_events(client)
            alive = [p.process is not None and p.process.poll() is None
                     for p in (*workers, tracker, notifier)]  # fmt: skip
            primary_now = group.primary_port()
    finally:
        for process in (*workers, tracker, notifier):
            process.stop()
    codes = accounting.exit_codes
    stack.report(
        "Sentinel failover, followed batch",
        requests=count,
        faults="primary SIGKILLed at a quarter done; replica promoted; old primary back",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"promoted after {promoted_after:.1f} s; requests ending again "
        f"{ending_again_after:.1f} s after the kill; all ended, webhook in, "
        f"{all_ended_after:.1f} s after; exit codes {dict(codes)}",
    )
    assert new_port != old_port and primary_now == new_port
    assert alive == [True] * 4
    assert accounting.lost == [] and accounting.doubled == [] and accounting.mismatched == []
    assert accounting.children_of(ids) == {1: count}
    assert codes == {0: count * 9 // 10, 2: count // 10}
    assert ended == set(ids)  # one completion event per request (none lost) ...
    assert len([p for p in receiver.posts if p[1] == f"batch:{batch}"]) >= 1  # ... and the webhook


def _notifier_caught_up(client: redis.Redis) -> bool:
    groups: list[dict[str, Any]] = client.xinfo_groups(keys.EVENTS)
    [notifier] = [g for g in groups if g["name"] == keys.NOTIFIER_GROUP.encode()]
    return bool(notifier["pending"] == 0 and notifier["lag"] == 0)


def _request_events(client: redis.Redis) -> set[str]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.EVENTS)  # type: ignore[assignment]
    found = set()
    for _, fields in entries:
        event, _ = parse_entry(fields)
        if event.get("type") == "request.finished":
            found.add(str(event["request_id"]))
    return found


@pytest.mark.timeout(300)
def test_a_failover_during_enqueues_doubles_nothing(
    fault_stack: FaultStack, group: SentinelGroup
) -> None:
    """Callers enqueue one request at a time, with the durability receipt, while the primary
    is SIGKILLed, the replica promoted and the old primary brought back as its replica. A
    caller that gets an error (no primary yet, or NotReplicated while the new primary has
    no replica) enqueues the same request ID again until it is taken; every request ends
    once, with one child."""
    env = {**fault_stack.env, **group.env}
    stack = fault_stack.with_env(**env)
    workers = [w.start() for w in stack.workers(2)]
    ids = [f"fo-enq-{n:04d}" for n in range(600)]
    errors: Counter[str] = Counter()
    failover: dict[str, float] = {}

    def fail_over() -> None:
        old_port, failover["killed"] = _kill_primary(group)
        group.wait_failover(old_port)
        failover["promoted"] = time.monotonic()
        group.server(old_port).start()
        group.wait_synced()
        failover["replica_back"] = time.monotonic()

    fault = threading.Thread(target=fail_over)
    try:
        with _producer(group) as producer:
            for n, rid in enumerate(ids):
                if n == len(ids) // 3:
                    fault.start()
                while True:
                    try:
                        producer.enqueue("encode", meta={"profile": "hd"}, request_id=rid)
                        break
                    except (redis.RedisError, NotReplicated) as err:
                        errors[type(err).__name__] += 1
                        time.sleep(0.1)
            fault.join()
            accounting = Accounting.of(stack, producer, ids, timeout=90 + REDELIVERY)
    finally:
        for worker in workers:
            worker.stop()
    stack.report(
        "Sentinel failover during enqueues",
        requests=len(ids),
        faults="primary SIGKILLed a third of the way through, back as a replica later",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"promoted {failover['promoted'] - failover['killed']:.1f} s after the kill; "
        f"errors the callers retried: {dict(errors) or 'none'}",
    )
    assert "replica_back" in failover
    accounting.assert_each_succeeded_once(ids)
