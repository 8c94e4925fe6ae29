"""Webhooks through faults: the receiver answers 500 for 30 s while dispatchq workers are
SIGKILLed and restarted (and the notifier once too): every completion event is still
delivered, at least once, none lost."""

from __future__ import annotations

import time

import pytest

from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.enqueue import NewRequest
from tests.notifier.test_notifier_e2e import SECRET, Receiver
from tests.support.faults import FaultStack, set_latency, states, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REQUESTS = 400
BATCH = 100
FAILING_FOR = 30.0
"""Seconds the receiver answers 500 to every POST, from the first request's enqueue."""


def test_webhooks_failing_for_30s_while_workers_are_sigkilled_lose_no_event(
    fault_stack: FaultStack,
) -> None:
    stack = fault_stack
    set_latency(stack.sim.address, 60)  # Nomad calls take a while: kills land mid-request
    failing_until = time.monotonic() + FAILING_FOR + 3600  # set for real at the enqueue
    receiver = Receiver(lambda _: 500 if time.monotonic() < failing_until else 200)
    env = {**stack.env, "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{receiver.port}",
           "DISPATCHQ_NOTIFY_SECRET": SECRET}  # fmt: skip
    incarnation, kills = 0, 0

    def spawn(slot: int) -> WorkerProcess:
        nonlocal incarnation
        incarnation += 1
        return stack.worker(f"hw{slot}-{incarnation}").start()

    workers = [spawn(1), spawn(2)]
    notifier = NotifierProcess(env=env, log_path=stack.log_dir / "notifier.log", claim_idle=1)
    notifier.start()
    try:
        with stack.producer() as producer:
            failing_until = time.monotonic() + FAILING_FOR
            url = receiver.url()
            ids = [rid for rid, _ in producer.enqueuer.enqueue(
                NewRequest("plain", meta={}, notify_url=url) for _ in range(REQUESTS)
            )]  # fmt: skip
            batch = producer.dispatch_batch(
                "plain", [{"meta": {}}] * BATCH, preflight=False, notify_url=url
            )
            while kills < 2 or (states(producer.redis, ids)["done"] < REQUESTS and kills < 6):
                time.sleep(1.0)
                workers[kills % 2].kill()
                workers[kills % 2] = spawn(kills % 2 + 1)
                kills += 1
            notifier.kill()  # the notifier too, once, with deliveries pending
            notifier = NotifierProcess(env=env, log_path=stack.log_dir / "notifier2.log",
                                       claim_idle=1).start()  # fmt: skip
            expected = {f"request:{rid}:1" for rid in ids} | {f"batch:{batch}"}
            wait_until(lambda: expected <= receiver.delivered(), 240, "every webhook")
        with receiver.lock:
            failed = sum(1 for status, *_ in receiver.posts if status == 500)
            ok = [event_id for status, event_id, _, _ in receiver.posts if status == 200]
            unsigned = [event_id for _, event_id, _, signed in receiver.posts if not signed]
        lost = len(expected - set(ok))
        stack.report(
            "webhooks: 500 for 30s + SIGKILLs", requests=len(expected),
            faults=f"{kills} worker SIGKILLs, 1 notifier SIGKILL, {failed} POSTs answered 500",
            lost=lost, doubled=len(ok) - len(set(ok)),
            notes=f"deliveries {len(ok)} for {len(expected)} events",
        )  # fmt: skip
        assert lost == 0 and not unsigned
        assert failed > 0 and kills > 0
        assert set(ok) == expected  # nothing else was posted (no event twice over)
    finally:
        notifier.kill()
        for worker in workers:
            worker.kill()
        receiver.close()
