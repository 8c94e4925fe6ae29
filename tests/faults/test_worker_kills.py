"""Workers SIGKILLed mid-flight: every request still ends with one outcome and one child."""

from __future__ import annotations

import time

import pytest
import redis

from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.batch import request_id_for
from dispatchq.producer.enqueue import NewRequest
from dispatchq.store import keys, lanes
from tests.support.faults import (
    REDELIVERY,
    Accounting,
    Dispatches,
    FaultStack,
    deliveries,
    set_latency,
    states,
    token,
    wait_until,
)
from tests.support.nomad_jobs import add_fault
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BATCH = 1000
MAX_KILLS = 8


class KillsInTurn:
    """Two workers; `until_mostly_done` SIGKILLs one of them every 1.5 s, alternately, and
    starts a new one in its place. Every worker is stopped on leaving."""

    def __init__(self, stack: FaultStack, prefix: str) -> None:
        self.stack, self.prefix = stack, prefix
        self.started = self.kills = 0
        self.workers = [self._spawn(1), self._spawn(2)]

    def _spawn(self, slot: int) -> WorkerProcess:
        self.started += 1
        return self.stack.worker(f"{self.prefix}{slot}-{self.started}").start()

    def until_mostly_done(self, client: redis.Redis, ids: list[str], max_kills: int) -> None:
        """Kill in turn until `max_kills` or nine in ten of `ids` are done."""
        while self.kills < max_kills and states(client, ids)["done"] < len(ids) * 0.9:
            time.sleep(1.5)
            slot = self.kills % 2
            self.workers[slot].kill()
            self.kills += 1
            self.workers[slot] = self._spawn(slot + 1)

    def __enter__(self) -> KillsInTurn:
        return self

    def __exit__(self, *_: object) -> None:
        for worker in self.workers:
            worker.stop()


def test_sigkill_workers_again_and_again_during_a_1000_request_batch(
    fault_stack: FaultStack,
) -> None:
    """Two workers serve a 1,000-request batch; one of them is SIGKILLed every couple of
    seconds (alternately) and replaced. Killed workers' messages come back once their
    lease lapses and resume from the write-ahead record or Nomad's idempotency."""
    stack = fault_stack
    # Every Nomad call takes a while, so kills land on workers mid-request.
    set_latency(stack.sim.address, 60)
    with KillsInTurn(stack, "w") as killer, stack.producer() as producer:
        items = [
            NewRequest("encode", payload=b'{"clip": %d}' % n, meta={"profile": "hd"})
            for n in range(BATCH)
        ]
        ids = [rid for rid, _ in producer.enqueuer.enqueue(items)]
        killer.until_mostly_done(producer.redis, ids, MAX_KILLS)
        accounting = Accounting.of(stack, producer, ids, timeout=90 + REDELIVERY)
        redelivered = sum(n for k, n in deliveries(producer.redis, ids).items() if k > 1)
    kills = killer.kills
    stack.report(
        "SIGKILL workers, 1,000 requests",
        requests=BATCH,
        faults=f"{kills} SIGKILLs of 2 workers",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"{redelivered} requests delivered more than once; "
        f"{sum(accounting.dispatches.repeats[token(r)] for r in ids)} idempotent repeats",
    )
    assert kills >= 1
    accounting.assert_each_succeeded_once(ids)


def test_worker_killed_while_monitoring_resumes_without_a_second_dispatch(
    fault_stack: FaultStack,
) -> None:
    """Twenty requests are dispatched and (most) being monitored when their worker is
    SIGKILLed; a rescuer gets those again and follows the recorded job and evaluation,
    without calling dispatch."""
    # Monitoring by blocking queries, the first of which hangs for each evaluation, so the
    # requests stay in `monitoring`.
    stack = fault_stack.with_env(DISPATCHQ_EVENT_FEED="false", DISPATCHQ_TASK_TIME_LIMIT="10")
    count = 20
    add_fault(
        stack.sim.address, {"kind": "slow", "route": "evaluation", "delay_ms": 9000, "count": count}
    )
    victim = stack.worker("victim", concurrency=count).start()
    try:
        with stack.producer() as producer:
            ids = [producer.enqueue("encode", meta={"profile": "sd"}) for _ in range(count)]
            # Every request dispatched (most still monitoring) before the kill.
            wait_until(
                lambda: states(producer.redis, ids).keys() <= {"monitoring", "done"},
                30,
                "every request dispatched",
            )
            victim.kill()
            at_kill = states(producer.redis, ids)
            with stack.worker("rescuer", concurrency=count):
                accounting = Accounting.of(stack, producer, ids, timeout=35 + REDELIVERY)
            delivered = deliveries(producer.redis, ids)
    finally:
        victim.kill()
    calls = Dispatches.read(stack.sim.address)
    stack.report(
        "SIGKILL while monitoring",
        requests=count,
        faults=f"1 SIGKILL with {at_kill['monitoring']} requests monitoring",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"dispatch calls after the kill: {sum(calls.repeats[token(r)] for r in ids)}",
    )
    accounting.assert_each_succeeded_once(ids)
    assert all(calls.repeats[token(rid)] == 0 for rid in ids), "dispatch was called again"
    assert at_kill["monitoring"] > 0
    # Each monitored request came back (and maybe a finished one whose ack the kill beat).
    assert delivered[2] >= at_kill["monitoring"]
    rescuer_log = (stack.log_dir / "rescuer.log").read_text()
    assert rescuer_log.count('"request.resumed"') >= at_kill["monitoring"]
    assert '"request.dispatched"' not in rescuer_log


def test_sigkill_workers_while_batch_lanes_and_the_interactive_lane_drain(
    fault_stack: FaultStack,
) -> None:
    """Fair queueing under SIGKILL: two tenants' batches (in their lanes) and requests in
    no batch (the queue), two workers, one SIGKILLed every couple of seconds. A killed
    worker's lane messages, held wrapped in its in-flight list, go back to their own lanes:
    every request ends with one outcome and one child, and every lane drains."""
    stack = fault_stack
    set_latency(stack.sim.address, 60)
    per_batch = 300
    with KillsInTurn(stack, "l") as killer, stack.producer() as producer:
        ids: list[str] = []
        for batch_id, tenant in (("lane-a", "ta"), ("lane-b", "tb")):
            items = [{"meta": {"profile": "hd"}} for _ in range(per_batch)]
            producer.dispatch_batch(
                "encode", items, batch_id=batch_id, preflight=False, tenant=tenant
            )
            ids += [request_id_for(batch_id, n) for n in range(1, per_batch + 1)]
        ids += [producer.enqueue("encode", meta={"profile": "sd"}) for _ in range(100)]
        total = len(ids)
        killer.until_mostly_done(producer.redis, ids, MAX_KILLS // 2)
        accounting = Accounting.of(stack, producer, ids, timeout=90 + REDELIVERY)
        backlog = lanes.backlog(producer.redis, QUEUE)
        registered = producer.redis.exists(keys.lanes(QUEUE), keys.tenants(QUEUE))
    kills = killer.kills
    stack.report(
        "SIGKILL workers, 2 tenants' lanes and the interactive lane",
        requests=total,
        faults=f"{kills} SIGKILLs of 2 workers",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes="batch items in lanes of two tenants, 100 requests in no batch",
    )
    assert kills >= 1
    accounting.assert_each_succeeded_once(ids)
    assert backlog.total == 0
    assert registered == 0
