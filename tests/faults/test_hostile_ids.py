"""One hostile producer cannot take the fleet down or alter another's work: IDs in a key
space of their own, attempt IDs that only dispatchq makes, and any Redis error about one
message ending in a dead letter while the worker goes on (real redis-server, nomadsim and
a worker process)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatchq.store import dlq, keys
from tests.support.faults import FaultStack, raw_message, wait_until
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _body(**kwargs: Any) -> bytes:
    return json.dumps([[], {"v": 1, "job_id": "encode", **kwargs}, {}]).encode()


def _message(request_id: str, **kwargs: Any) -> str:
    return raw_message(_body(request_id=request_id, **kwargs), request_id=request_id)


def test_poison_between_good_requests_every_good_one_done_every_poison_dead_lettered(
    fault_stack: FaultStack,
) -> None:
    client = fault_stack.client()
    with fault_stack.worker("w1") as worker, fault_stack.producer() as producer:
        pid = worker.process.pid if worker.process else 0
        first = producer.enqueue("encode", meta={"profile": "hd"}, request_id="good-0")
        producer.wait([first], timeout=30)
        # A key of another type where a request record would be (what an ID reaching
        # another object's key used to make): the fetch cannot count its deliveries.
        client.set(keys.request("clash-1"), "not a hash", ex=600)
        poison: dict[str, tuple[str, str]] = {
            "clash-1": (_message("clash-1", meta={"profile": "hd"}), "store"),
            # what killed every worker: `<existing ID>:partial`, now a request of its own
            "good-0:partial": (_message("good-0:partial", meta={"profile": "hd"}), ""),
            # an attempt ID nobody made: refused, never adopted
            "good-0~2": (_message("good-0~2", meta={"profile": "hd"}), "conflict"),
            # 20,000 meta keys: refused as invalid, its outcome stays small
            "huge-meta": (
                _message("huge-meta", meta={f"k{n}": "v" for n in range(20_000)}),
                "invalid_request",
            ),
        }
        good = []
        for n, (message, _) in enumerate(poison.values(), start=1):
            good.append(producer.enqueue("encode", meta={"profile": "hd"}, request_id=f"g-{n}a"))
            client.lpush(QUEUE, message)
            good.append(producer.enqueue("encode", meta={"profile": "hd"}, request_id=f"g-{n}b"))
        done = producer.wait(good, timeout=60)
        assert all(s.outcome is not None and s.outcome.exit_code == 0 for s in done.values())
        dead = {"store", "conflict", "invalid_request"}
        wait_until(lambda: len(dlq.entries(client)) >= len(dead), 30, "dead letters")
        entries = {e.task_id: e for e in dlq.entries(client)}
        for rid, (_, kind) in poison.items():
            if kind:
                assert entries[rid].kind == kind, (rid, entries[rid])
        # the request named `good-0:partial` ran on its own; good-0 kept its outcome
        own = producer.wait(["good-0:partial", "good-0"], timeout=30)
        assert all(s.outcome is not None and s.outcome.exit_code == 0 for s in own.values())
        # refused before any write (its fetch counted a delivery: nothing else)
        assert client.hmget(keys.request("good-0~2"), "state", "digest") == [None, None]
        huge = producer.wait(["huge-meta"], timeout=30)["huge-meta"].outcome
        assert huge is not None and huge.exit_code == 1
        raw = client.get(keys.celery_result("huge-meta"))
        assert raw is not None and len(raw) < 8 * 1024, len(raw or b"")
        assert worker.process is not None and worker.process.poll() is None
        assert worker.process.pid == pid, "the worker restarted"
    client.close()
    output = fault_stack.worker_output()
    fault_stack.report(
        "hostile IDs and poison between good requests",
        requests=len(good) + len(poison),
        faults=f"{len(poison)} hostile messages",
        lost=0,
        doubled=0,
        notes="every good request done, every poison dead-lettered, the worker never exited",
    )
    assert "Unrecoverable error" not in output
