"""Batch fan-out: preflight against the job's rules, then a pipelined enqueue.

`Producer.dispatch_batch` reads every item first, checks it against the parameterized
job (read once from Nomad) and rejects the whole batch, naming the offending lines, before
anything is enqueued. Request IDs are derived from the batch ID and the item's position
(unless an item brings its own), so submitting the same items with the same batch ID again
enqueues only what was not enqueued before: a resumed batch dispatches nothing twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dispatchq.errors import DispatchqError
from dispatchq.payload.resolve import PAYLOAD_LIMIT
from dispatchq.producer.batch_input import BatchInputError, BatchItem, summarise
from dispatchq.producer.enqueue import ALL, CONFLICT, Enqueuer, NewRequest, Prepared, prepare
from dispatchq.store import keys
from dispatchq.store.batches import BatchStore
from dispatchq.store.results import outcome_from_meta


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def request_id_for(batch_id: str, ordinal: int) -> str:
    """The request ID of the ordinal-th item (1-based) of a batch."""
    return f"{batch_id}-{ordinal:06d}"


def preflight(job: dict[str, Any], items: list[BatchItem]) -> None:
    """Raise BatchInputError listing every item the job would refuse (its payload and meta
    rules, as Nomad's dispatch endpoint checks them)."""
    job_id = job.get("ID", "?")
    rules = job.get("ParameterizedJob")
    if not rules or job.get("Dispatched"):
        raise BatchInputError(f'Specified job "{job_id}" is not a parameterized job')
    if job.get("Stop"):
        raise BatchInputError(f'Specified job "{job_id}" is stopped')
    required = set(rules.get("MetaRequired") or [])
    allowed = required | set(rules.get("MetaOptional") or [])
    payload_rule = rules.get("Payload") or "optional"
    problems = []
    for item in items:
        where = f"line {item.line}" if item.line else f"item {items.index(item) + 1}"
        has_payload = bool(item.payload) or bool(item.payload_ref)
        if payload_rule == "required" and not has_payload:
            problems.append(f"{where}: payload is required by {job_id}")
        elif payload_rule == "forbidden" and has_payload:
            problems.append(f"{where}: payload is forbidden by {job_id}")
        if item.payload is not None and len(item.payload) > PAYLOAD_LIMIT:
            problems.append(
                f"{where}: payload exceeds maximum size; {len(item.payload)} > {PAYLOAD_LIMIT}"
            )
        unpermitted = sorted(set(item.meta) - allowed)
        if unpermitted:
            problems.append(f"{where}: meta keys not permitted by {job_id}: {unpermitted}")
        missing = sorted(required - set(item.meta))
        if missing:
            problems.append(f"{where}: required meta keys missing: {missing}")
    if problems:
        raise BatchInputError(summarise(problems))


@dataclass(frozen=True)
class BatchPlan:
    """What submitting a batch writes, worked out before anything is: its checked items and
    the batch record's fields. `BatchSubmitter` and its asyncio twin
    (`dispatchq.producer.aio`) carry it out the same way."""

    job_id: str
    batch_id: str
    listed: list[Prepared]
    total: int
    record: dict[str, Any]
    """`BatchStore.create`'s keyword arguments."""

    @classmethod
    def of(
        cls,
        job_id: str,
        items: list[BatchItem],
        *,
        batch_id: str,
        namespace: str | None = None,
        detach: bool = False,
        notify_url: str | None = None,
        tenant: str | None = None,
        until: str = "scheduled",
        max_attempts: int | None = None,
    ) -> BatchPlan:
        """Raises BatchInputError for a batch ID only dispatchq may make, InvalidRequest for
        an item that can be known bad without Nomad."""
        if keys.is_reserved_id(batch_id):
            raise BatchInputError(
                f"batch ID {batch_id!r} ends in '~' and digits, which dispatchq keeps for "
                "its own: choose another"
            )
        requests = [
            NewRequest(
                job_id,
                payload=item.payload,
                payload_ref=item.payload_ref,
                meta=item.meta,
                request_id=item.request_id or request_id_for(batch_id, n),
                line=item.line or n,
                namespace=namespace,
                detach=detach,
                batch_id=batch_id,
                tenant=tenant,
                until=until,
            )
            for n, item in enumerate(items, start=1)
        ]
        record = {"namespace": namespace, "notify_url": notify_url, "tenant": tenant,
                  "until": until, "detach": detach, "max_attempts": max_attempts}  # fmt: skip
        return cls(job_id, batch_id, prepare(requests), len(items), record)

    def refuse_clashes(self, positions: list[int]) -> None:
        """Raise BatchInputError naming the lines whose request ID names another request."""
        if positions:
            raise BatchInputError(_clash_text(self.listed, positions))

    def counted(self, flags: list[tuple[str, int]]) -> dict[int, int]:
        """How many items were new (1), enqueued again (2) or skipped (0); raises
        DispatchqError when IDs were taken by another request between the check and the
        write (the chunks with a clash wrote nothing, the others are enqueued)."""
        counts = {0: 0, 1: 0, 2: 0, 3: 0}
        for _, flag in flags:
            counts[flag] += 1
        if counts[CONFLICT]:
            raced = [n for n, (_, flag) in enumerate(flags) if flag == CONFLICT]
            first = self.listed[raced[0]]
            raise DispatchqError(
                f"{len(raced)} request ID(s) were taken by another request while batch "
                f"{self.batch_id} was submitted (first: line {first[2]}, "
                f"{first[0].request_id!r}); {counts[1] + counts[2]} items were enqueued: "
                "cancel the batch, or submit it again with other IDs for those items"
            )
        return counts


class BatchSubmitter:
    """Creates the batch record and enqueues its items in pipelined chunks."""

    def __init__(self, enqueuer: Enqueuer, batches: BatchStore) -> None:
        self.enqueuer = enqueuer
        self.batches = batches

    def submit(self, plan: BatchPlan) -> dict[int, int]:
        """Enqueue all items or none; returns how many items were new (1), enqueued again
        (2) or skipped because they were enqueued before (0: a resumed batch). Raises
        BatchInputError, before anything is written, naming the lines whose request ID
        names another request already (3)."""
        plan.refuse_clashes(self.enqueuer.clashes(plan.listed))
        pipe = self.batches.client.pipeline(transaction=False)
        self.batches.create(pipe, plan.batch_id, plan.job_id, total=plan.total, **plan.record)
        pipe.execute()
        return plan.counted(self.enqueuer.send(plan.listed, ALL))


def _clash_text(listed: list[Prepared], positions: list[int]) -> str:
    lines = [
        f"line {listed[n][2]}: request ID {listed[n][0].request_id!r} already names another "
        "request (another job, payload or meta)"
        for n in positions
    ]
    return summarise(lines) + "\ngive those items other request IDs"


def stream_results(
    batches: BatchStore, batch_id: str, chunk: int = 500, *, failed_only: bool = False
) -> Iterator[str]:
    """One JSON line per item of the batch, in item order, of its latest attempt (its
    `request_id` and `attempt`: `keys.attempt_id`): the outcome when done, the state
    otherwise. Reads results in chunks (one MGET per chunk). With `failed_only`, only
    the items whose outcome's exit code is not 0, each with what re-running it needs: its
    line (or position), payload reference (an inline payload's blob: it lasts
    DISPATCHQ_BLOB_TTL) and meta, as kept at enqueue (`keys.batch_items`)."""
    client = batches.client
    ids: list[str] = []

    def flush() -> Iterator[str]:
        raw = client.hmget(keys.batch_attempts(batch_id), ids)
        attempts = [int(n) if n else 1 for n in raw]
        latest = [keys.attempt_id(rid, n) for rid, n in zip(ids, attempts, strict=True)]
        pipe = client.pipeline(transaction=False)
        pipe.mget([keys.celery_result(rid) for rid in latest])
        if failed_only:
            pipe.hmget(keys.batch_items(batch_id), ids)
        else:
            for rid in latest:
                pipe.hget(keys.request(rid), "state")
        metas, *rest = pipe.execute()
        if failed_only:
            yield from _failed_lines(latest, attempts, metas, rest[0])
            return
        for rid, n, meta, state in zip(latest, attempts, metas, rest, strict=True):
            line: dict[str, Any] = {"request_id": rid, "attempt": n}
            outcome = outcome_from_meta(json.loads(meta)) if meta else None
            if outcome is not None:
                line.update(state="done", outcome=outcome.to_stored())
            else:
                line["state"] = state.decode() if state else "unknown"
            yield json.dumps(line)

    for rid in batches.request_ids(batch_id, chunk):
        ids.append(rid)
        if len(ids) >= chunk:
            yield from flush()
            ids = []
    if ids:
        yield from flush()


def _failed_lines(
    ids: list[str], attempts: list[int], metas: list[bytes | None], items: list[bytes | None]
) -> Iterator[str]:
    for rid, n, meta, item in zip(ids, attempts, metas, items, strict=True):
        outcome = outcome_from_meta(json.loads(meta)) if meta else None
        if outcome is None or outcome.exit_code == 0:
            continue
        line: dict[str, Any] = {
            "request_id": rid, "attempt": n, "line": None, "payload_ref": None, "meta": {}
        }  # fmt: skip
        line.update(json.loads(item) if item else {})
        line.update(exit_code=outcome.exit_code, outcome=outcome.to_stored())
        yield json.dumps(line)


def as_items(items: Iterable[BatchItem | dict[str, Any]]) -> list[BatchItem]:
    """Accept BatchItems or plain dicts with BatchItem's fields."""
    out = []
    problems = []
    for n, item in enumerate(items, start=1):
        if isinstance(item, BatchItem):
            out.append(item)
            continue
        try:
            out.append(BatchItem(**item))
        except TypeError as err:
            problems.append(f"item {n}: {err}")
    if problems:
        raise BatchInputError(summarise(problems))
    return out

