"""The fault suite's stack and book-keeping: a private redis-server per scenario (so it can
be killed), one nomadsim for the session, worker processes, and the figures each scenario
reports (requests, faults injected, lost, doubled), printed at the end of the run.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import requests

from dispatchq.broker.fetch import RENEW_EVERY
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.api import Producer, RequestStatus
from dispatchq.store import keys, lanes
from tests.support.nomad_jobs import (
    sim_dispatches,
)
from tests.support.stack import QUEUE, Stack

WORKER_ENV = {
    # A small time limit and short retries: no scenario waits long for a stuck request.
    "DISPATCHQ_TASK_TIME_LIMIT": "6",
    "DISPATCHQ_RETRY_MAX": "4",
    "DISPATCHQ_RETRY_FLOOR": "0.05",
    "DISPATCHQ_RETRY_CAP": "0.2",
    "DISPATCHQ_LOG_FORMAT": "json",
    "DISPATCHQ_QUEUE": QUEUE,
}
REDELIVERY = keys.LEASE_TTL + RENEW_EVERY
"""Seconds after which a dead worker's messages are given to another, at most (its lease
lapses, then a live consumer's next sweep finds it gone: `dispatchq.broker.fetch`)."""


@dataclass
class Figure:
    scenario: str
    requests: int
    faults: str
    lost: int
    doubled: int
    seconds: float
    notes: str = ""


FIGURES: list[Figure] = []
"""What each scenario reported, in run order (printed by tests/faults/conftest.py)."""


@dataclass
class FaultStack(Stack):
    """`Stack` with its own redis-server (killable) and worker environment overrides."""

    started: float = field(default_factory=time.monotonic)

    def with_env(self, **overrides: str) -> FaultStack:
        return dataclasses.replace(self, env={**self.env, **overrides})

    def workers(self, count: int, prefix: str = "w", **kwargs: Any) -> list[WorkerProcess]:
        return [self.worker(f"{prefix}{n + 1}", **kwargs) for n in range(count)]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def report(
        self, scenario: str, *, requests: int, faults: str, lost: int, doubled: int, notes: str = ""
    ) -> None:
        seconds = time.monotonic() - self.started
        FIGURES.append(Figure(scenario, requests, faults, lost, doubled, seconds, notes))

    def worker_output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def token(request_id: str) -> str:
    """The idempotency token dispatchq sends for a request."""
    return f"dispatchq-{request_id}"


@dataclass
class Dispatches:
    """nomadsim's record of dispatch calls, per idempotency token."""

    children: Counter[str]
    repeats: Counter[str]
    child_of: dict[str, str]

    @classmethod
    def read(cls, address: str) -> Dispatches:
        children: Counter[str] = Counter()
        repeats: Counter[str] = Counter()
        child_of: dict[str, str] = {}
        for record in sim_dispatches(address):
            tok = str(record.get("idempotency_token") or "")
            if record.get("repeat"):
                repeats[tok] += 1
            else:
                children[tok] += 1
                child_of[tok] = str(record["child_id"])
        return cls(children, repeats, child_of)


@dataclass
class Accounting:
    """Where every request of a scenario ended: the evidence for "nothing lost or doubled"."""

    statuses: dict[str, RequestStatus]
    dispatches: Dispatches
    lost: list[str]
    doubled: list[str]
    exit_codes: Counter[int]
    mismatched: list[str]
    """Requests whose outcome names another child than the one nomadsim created."""

    @classmethod
    def of(cls, stack: Stack, producer: Producer, ids: list[str], timeout: float) -> Accounting:
        statuses = producer.wait(ids, timeout=timeout)
        dispatches = Dispatches.read(stack.sim.address)
        lost = [rid for rid in ids if not statuses[rid].done]
        doubled = [rid for rid in ids if dispatches.children[token(rid)] > 1]
        codes: Counter[int] = Counter()
        mismatched = []
        for rid in ids:
            outcome = statuses[rid].outcome
            if outcome is None:
                continue
            codes[outcome.exit_code] += 1
            child = dispatches.child_of.get(token(rid))
            if outcome.dispatched_job_id and outcome.dispatched_job_id != child:
                mismatched.append(rid)
        return cls(statuses, dispatches, lost, doubled, codes, mismatched)

    def children_of(self, ids: Iterable[str]) -> Counter[int]:
        """How many requests got 0, 1, 2... children."""
        return Counter(self.dispatches.children[token(rid)] for rid in ids)

    def assert_each_succeeded_once(self, ids: list[str]) -> None:
        assert self.lost == [], f"{len(self.lost)} lost, e.g. {self.statuses[self.lost[0]]}"
        assert self.doubled == [], f"{len(self.doubled)} with more than one child"
        assert self.mismatched == []
        failed = [self.statuses[r].outcome for r in ids if not _ok(self, r)]
        errors = Counter(f"{o.error_kind}: {o.error_message}"[:300] for o in failed if o)
        assert failed == [], f"{len(failed)} did not succeed: {dict(errors)}"
        assert self.children_of(ids) == Counter({1: len(ids)})


def _ok(accounting: Accounting, request_id: str) -> bool:
    outcome = accounting.statuses[request_id].outcome
    return outcome is not None and outcome.exit_code == 0


def set_latency(address: str, milliseconds: float) -> None:
    """Delay every Nomad request nomadsim answers (concurrently, unlike scheduling)."""
    requests.put(
        f"{address}/_sim/faults", json={"latency_ms": milliseconds}, timeout=10
    ).raise_for_status()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def drained(client: redis.Redis, queue: str = QUEUE) -> bool:
    """Nothing waiting (in the queue or a batch's lane) or in flight (unacknowledged:
    `dispatchq.broker.fetch`): every message taken."""
    members = [m.decode() for m in client.smembers(keys.INFLIGHT)]  # type: ignore[union-attr]
    inflight = [keys.inflight(*m.split(":", 1)) for m in members]
    pipe = client.pipeline(transaction=False)
    for key in (queue, *inflight):
        pipe.llen(key)
    return not any(pipe.execute()) and lanes.backlog(client, queue).total == 0


def states(client: redis.Redis, ids: list[str]) -> Counter[str]:
    """How many of the requests are in each state (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(keys.request(rid), "state")
    return Counter((s or b"unknown").decode() for s in pipe.execute())


def deliveries(client: redis.Redis, ids: list[str]) -> Counter[int]:
    """How many requests were delivered once, twice... (the consumer counts deliveries)."""
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(keys.request(rid), "deliveries")
    return Counter(int(n or 0) for n in pipe.execute())


def raw_message(
    body: bytes,
    *,
    task: str = "dispatchq.dispatch",
    content_type: str = "application/json",
    request_id: str | None = None,
) -> str:
    """A kombu envelope around `body`, the way any Celery client would push it."""
    rid = request_id or str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": rid, "root_id": rid, "retries": 0},
            "properties": {
                "correlation_id": rid,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def keys_without_ttl(client: redis.Redis, queue: str = QUEUE) -> list[str]:
    """Every key dispatchq (not kombu) wrote that would live forever."""
    return [
        key.decode()
        for key in client.scan_iter(count=1000)
        if client.ttl(key) < 0 and not keys.is_broker_key(key.decode(), queue)
        and key.decode() not in keys.CAPPED  # the event stream: MAXLEN ~, no TTL
    ]
