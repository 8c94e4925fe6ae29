"""Batches: a record per batch with O(1) progress, kept current by the workers.

`dispatchq:batch:<id>` holds `job_id`, `namespace`, `tenant` ('' for none), `total`,
`state` (open | cancelled), `created_at`, `until` and `detach` (what its requests were
enqueued with, for their retries), `max_attempts` (optional, `--max-attempts`),
`notify_url` (optional), `finished_at` (set with the batch's completion event,
`dispatchq.store.completion`; cleared when a retry re-opens it), `finishes` (how many times
it finished), `webhook` (how that event's webhook went, `dispatchq.store.webhook_status`),
`rt:<bucket>` (its run-time histogram, `dispatchq.store.runtimes`), and counters the
workers bump atomically and exactly once per request (see
`records`): `done`, `exit:0`, `exit:1`, `exit:2`, the
requests in each state between queued and done (`st:dispatching` for a request taken by a
worker, dispatching or monitoring, `st:scheduled`, `st:running`: moved in the same step as
the record's state, `lua/_batch.lua`; `st:monitoring` is read as `st:dispatching`, for the
requests of a batch that a worker before this one moved there)
and `retries` (attempts claimed after the first, `lua/retry.lua`). Counts are of each
item's latest attempt: a retried item leaves `done` and `exit:<code>` when its next attempt
is claimed. Reading progress is one HGETALL, whatever the batch's size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from dispatchq.store import keys, runtimes, webhook_status
from dispatchq.store.scripts import SCRIPTS

OPEN = "open"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class BatchStatus:
    batch_id: str
    job_id: str
    namespace: str
    total: int
    state: str
    created_at: float
    done: int = 0
    exit_codes: dict[int, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    """Requests per state between queued and done (`st:<state>` counters)."""
    retries: int = 0
    max_attempts: int = 1
    until: str = "scheduled"
    tenant: str = ""
    run_times: list[int] = field(default_factory=list)
    """Runs per run-time bucket (`dispatchq.store.runtimes`)."""
    finished_at: float | None = None
    """When its completion event was appended (its last finish)."""
    finishes: int = 0
    has_webhook: bool = False
    """Whether its completion event is POSTed somewhere (`notify_url`, never shown)."""
    webhook: dict[str, Any] = field(default_factory=dict)
    """How its completion event's webhook went (`dispatchq.store.webhook_status`)."""

    @classmethod
    def from_hash(cls, batch_id: str, raw: dict[bytes, bytes]) -> BatchStatus:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        codes = {
            int(name[len("exit:") :]): int(value)
            for name, value in data.items()
            if name.startswith("exit:") and int(value) > 0
        }
        return cls(
            batch_id=batch_id,
            job_id=data.get("job_id", ""),
            namespace=data.get("namespace", ""),
            total=int(data.get("total", 0)),
            state=data.get("state", OPEN),
            created_at=float(data.get("created_at", 0)),
            tenant=data.get("tenant", ""),
            done=int(data.get("done", 0)),
            exit_codes=codes,
            states={
                name[len("st:") :]: max(0, int(value))
                for name, value in data.items()
                if name.startswith("st:")
            },
            retries=int(data.get("retries", 0)),
            max_attempts=int(data.get("max_attempts") or 1),
            until=data.get("until") or "scheduled",
            run_times=runtimes.histogram(data),
            finished_at=float(data["finished_at"]) if data.get("finished_at") else None,
            finishes=int(data.get("finishes", 0)),
            has_webhook=bool(data.get("notify_url")),
            webhook=webhook_status.parse(data.get(webhook_status.FIELD, "")),
        )

    @property
    def monitoring(self) -> int:
        """Taken and not done: at a worker (dispatched and its evaluation followed, or being
        dispatched: one count, `lua/_batch.lua`), or its child followed (`until` finished)."""
        return self.dispatching + self.waiting + self.running

    @property
    def dispatching(self) -> int:
        """Taken by a worker: being dispatched, or its evaluation followed."""
        return self.states.get("dispatching", 0) + self.states.get("monitoring", 0)

    @property
    def waiting(self) -> int:
        """`until` finished: handed to the tracker, no allocation running yet (waiting for
        capacity, a blocked evaluation, or to start; a rescheduled child too)."""
        return self.states.get("scheduled", 0)

    @property
    def running(self) -> int:
        """`until` finished: the child's allocation runs."""
        return self.states.get("running", 0)

    @property
    def queued(self) -> int:
        """Waiting in the queue (for its first attempt or its next)."""
        return max(0, self.total - self.done - self.dispatching - self.waiting - self.running)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def event_id(self) -> str:
        """The `event_id` of its last completion event ("" before its first)."""
        if not self.finishes:
            return ""
        return f"batch:{self.batch_id}" + (f"~{self.finishes}" if self.finishes > 1 else "")

    @property
    def progress(self) -> str:
        """Where the batch is, in a word for people: cancelled, finished or in progress
        (`state` stays open until a cancel; a retry makes a finished batch in progress)."""
        if self.state == CANCELLED:
            return CANCELLED
        return "finished" if self.finished else "in progress"

    def worst_exit_code(self) -> int:
        """1 beats 2 beats 0; a batch that is not finished counts as 1."""
        if not self.finished or self.exit_codes.get(1):
            return 1
        return 2 if self.exit_codes.get(2) else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "job_id": self.job_id,
            "namespace": self.namespace or None,
            "state": self.state,
            "finished": self.finished,
            "total": self.total,
            "until": self.until,
            "queued": self.queued,
            "dispatching": self.dispatching,
            "waiting": self.waiting,
            "running": self.running,
            "monitoring": self.monitoring,
            "done": self.done,
            "succeeded": self.exit_codes.get(0, 0),
            "failed": self.exit_codes.get(2, 0),
            "errors": self.exit_codes.get(1, 0),
            "exit_codes": {str(k): v for k, v in sorted(self.exit_codes.items()) if v},
            "retries": self.retries,
            "max_attempts": self.max_attempts,
            "run_times": self.run_times,
            "finished_at": self.finished_at,
            "webhook": self.webhook or None,
        }


class BatchStore:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    def create(self, pipe: Any, batch_id: str, job_id: str, **fields: Any) -> None:
        """`queue_creation` with this store's TTL."""
        queue_creation(pipe, self.ttl, batch_id, job_id, **fields)

    def recent(self, count: int = 50) -> list[BatchStatus]:
        """The `count` batches created last, newest first: one ZREVRANGE and one HGETALL
        per batch, however many items they hold."""
        found = cast(list[bytes], self.client.zrevrange(keys.BATCHES, 0, count - 1))
        ids = [i.decode() for i in found]
        pipe = self.client.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(keys.batch(batch_id))
        return [BatchStatus.from_hash(b, raw) for b, raw in zip(ids, pipe.execute(), strict=True)
                if raw]  # fmt: skip

    def status(self, batch_id: str) -> BatchStatus | None:
        raw = self.client.hgetall(keys.batch(batch_id))
        return BatchStatus.from_hash(batch_id, raw) if raw else None  # type: ignore[arg-type]

    def cancel(self, batch_id: str) -> bool:
        """Mark the batch cancelled; False when there is no such batch."""
        key = keys.batch(batch_id)
        if not self.client.exists(key):
            return False
        self.client.hset(key, "state", CANCELLED)
        return True

    def request_ids(self, batch_id: str, chunk: int = 1000) -> Iterator[str]:
        """Every request ID of the batch, in item order, read in chunks."""
        key = keys.batch_requests(batch_id)
        start = 0
        while True:
            part = self.client.lrange(key, start, start + chunk - 1)
            if not part:
                return
            for raw in part:
                yield raw.decode() if isinstance(raw, bytes) else str(raw)
            start += chunk

    def errors(self, batch_id: str, limit: int = 0) -> list[dict[str, Any]]:
        """The batch's first errors and failures (at most `records.MAX_BATCH_ERRORS`, or
        `limit`): `request_id`, `exit_code` and `error` (a failed child's: its tasks' exit
        codes and messages), oldest first."""
        entries = self.client.lrange(keys.batch_errors(batch_id), 0, limit - 1)
        return [json.loads(e) for e in entries]


def queue_creation(
    pipe: Any,
    ttl: int,
    batch_id: str,
    job_id: str,
    *,
    namespace: str | None,
    total: int,
    notify_url: str | None = None,
    tenant: str | None = None,
    until: str = "scheduled",
    detach: bool = False,
    max_attempts: int | None = None,
) -> None:
    """Queue the batch record's creation on `pipe` (a pipeline, redis-py's or its asyncio
    twin's); a resubmission keeps its counters and raises `total` if the new submission
    is longer. `notify_url`: where the notifier POSTs the batch's completion event (a
    resubmission may set another); `max_attempts`: attempts per item when its own run
    fails (a resubmission may set another)."""
    key = keys.batch(batch_id)
    now = time.time()
    pipe.zadd(keys.BATCHES, {batch_id: now}, nx=True)
    pipe.zremrangebyscore(keys.BATCHES, "-inf", now - ttl)
    pipe.hsetnx(key, "job_id", job_id)
    pipe.hsetnx(key, "namespace", namespace or "")
    pipe.hsetnx(key, "tenant", tenant or "")
    pipe.hsetnx(key, "state", OPEN)
    pipe.hsetnx(key, "created_at", now)
    pipe.hsetnx(key, "total", 0)
    pipe.hsetnx(key, "until", until)
    pipe.hsetnx(key, "detach", int(detach))
    pipe.eval(SCRIPTS["batch_total"], 1, key, total)
    if notify_url:
        pipe.hset(key, "notify_url", notify_url)
    if max_attempts is not None:
        pipe.hset(key, "max_attempts", max_attempts)
    pipe.expire(key, ttl)
