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
from typing import Any

from dispatch import keys
from dispatch.batches import BatchStore
from dispatch.errors import DispatchqError
from dispatch.nomad import NomadClient
from dispatch.payload import PAYLOAD_LIMIT
from producer.batch_input import BatchInputError, BatchItem, summarise
from producer.enqueue import Enqueuer, NewRequest
from producer.results import outcome_from_meta


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def request_id_for(batch_id: str, ordinal: int) -> str:
    """The request ID of the ordinal-th item (1-based) of a batch."""
    return f"{batch_id}-{ordinal:06d}"


def preflight(job: dict[str, Any], items: list[BatchItem]) -> None:
    """Raise BatchInputError listing every item the job would refuse (NOMAD_API.md §3)."""
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


class BatchSubmitter:
    """Creates the batch record and enqueues its items in pipelined chunks."""

    def __init__(self, enqueuer: Enqueuer, batches: BatchStore) -> None:
        self.enqueuer = enqueuer
        self.batches = batches

    def submit(
        self,
        job_id: str,
        items: list[BatchItem],
        *,
        batch_id: str,
        namespace: str | None = None,
        detach: bool = False,
        notify_url: str | None = None,
        tenant: str | None = None,
        until: str = "scheduled",
    ) -> dict[int, int]:
        """Enqueue; returns how many items were new (1), enqueued again (2), skipped (0),
        skipped because their ID names another request (3: a resumed batch keeps what was
        enqueued first)."""
        pipe = self.batches.client.pipeline(transaction=False)
        self.batches.create(
            pipe, batch_id, job_id, namespace, len(items), notify_url=notify_url, tenant=tenant
        )
        pipe.execute()
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
        counts = {0: 0, 1: 0, 2: 0, 3: 0}
        for _, flag in self.enqueuer.enqueue(requests):
            counts[flag] += 1
        return counts


def stream_results(
    batches: BatchStore, batch_id: str, chunk: int = 500, *, failed_only: bool = False
) -> Iterator[str]:
    """One JSON line per request of the batch, in item order: the outcome when done, the
    state otherwise. Reads results in chunks (one MGET per chunk). With `failed_only`, only
    the items whose outcome's exit code is not 0, each with what re-running it needs: its
    line (or position), payload reference (an inline payload's blob: it lasts
    DISPATCHQ_BLOB_TTL) and meta, as kept at enqueue (`keys.batch_items`)."""
    client = batches.client
    ids: list[str] = []

    def flush() -> Iterator[str]:
        pipe = client.pipeline(transaction=False)
        pipe.mget([keys.celery_result(rid) for rid in ids])
        if failed_only:
            pipe.hmget(keys.batch_items(batch_id), ids)
        else:
            for rid in ids:
                pipe.hget(keys.request(rid), "state")
        metas, *rest = pipe.execute()
        if failed_only:
            yield from _failed_lines(ids, metas, rest[0])
            return
        for rid, meta, state in zip(ids, metas, rest, strict=True):
            line: dict[str, Any] = {"request_id": rid}
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
    ids: list[str], metas: list[bytes | None], items: list[bytes | None]
) -> Iterator[str]:
    for rid, meta, item in zip(ids, metas, items, strict=True):
        outcome = outcome_from_meta(json.loads(meta)) if meta else None
        if outcome is None or outcome.exit_code == 0:
            continue
        line: dict[str, Any] = {"request_id": rid, "line": None, "payload_ref": None, "meta": {}}
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


def stop_children(
    batches: BatchStore, client: NomadClient, batch_id: str, namespace: str | None
) -> tuple[int, list[str]]:
    """DELETE every child the batch dispatched; (stopped, errors)."""
    stopped, errors = 0, []
    ids = list(batches.request_ids(batch_id))
    pipe = batches.client.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(keys.request(rid), "dispatched_job_id")
    for raw in pipe.execute():
        if not raw:
            continue
        child = raw.decode()
        try:
            client.stop_job(child, namespace=namespace)
            stopped += 1
        except DispatchqError as err:
            errors.append(f"{child}: {err}")
    return stopped, errors
