"""The callers' Python API: enqueue dispatch requests, read and await their outcomes.

    from dispatchq.producer import enqueue, result, wait
    rid = enqueue("video-encode", payload=b"...", meta={"profile": "hd"})
    print(wait([rid], timeout=60)[rid].outcome)

`result()` never blocks; `wait()` is woken by the result backend's pub/sub channel for each
request, not by a sleep loop.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult, ResultSet

from dispatchq.broker.app import make_app
from dispatchq.config.settings import Settings, load_settings
from dispatchq.core.cancel import cancel_batch
from dispatchq.core.outcome import Outcome
from dispatchq.core.request import TENANT_PATTERN, TENANT_TEXT, check_notify_url, is_request_id
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.producer.batch import (
    BatchPlan,
    BatchSubmitter,
    as_items,
    new_batch_id,
    stream_results,
)
from dispatchq.producer.batch import preflight as check_items
from dispatchq.producer.batch_input import BatchItem
from dispatchq.producer.enqueue import CONFLICT, Enqueuer, InvalidRequest, NewRequest, conflict
from dispatchq.producer.events import follow_events
from dispatchq.store import keys
from dispatchq.store.batches import CANCELLED, BatchStatus, BatchStore
from dispatchq.store.records import RecordStore, RequestRecord
from dispatchq.store.results import outcome_from_meta
from dispatchq.store.retries import BatchRetrier, RetryReport

MAX_ATTEMPTS = 100
"""The most attempts `max_attempts` may ask for per item."""


def check_max_attempts(max_attempts: int | None, until: str) -> None:
    """`max_attempts` is an integer 1-100, for a batch followed `until` finished (the
    only one whose exit code 2 is a failure of the item's own run: a placement failure
    of `until` scheduled leaves a blocked evaluation that may still place the child)."""
    if max_attempts is None:
        return
    if type(max_attempts) is not int or not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise InvalidRequest(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}")
    if until != "finished":
        raise InvalidRequest('max_attempts needs until "finished" (retries follow a failed run)')


UNKNOWN = "unknown"
DONE = "done"


@dataclass(frozen=True)
class RequestStatus:
    """Where a request is: `unknown`, `queued`, `dispatching`, `monitoring` or `done`."""

    request_id: str
    state: str
    record: RequestRecord | None = None
    outcome: Outcome | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"request_id": self.request_id, "state": self.state}
        if self.record is not None:
            data.update({k: v for k, v in self.record.to_json().items() if k != "state"})
        if self.outcome is not None:  # as stored: the outcome format of docs/formats.md
            data["outcome"] = self.outcome.to_stored()
        return data


def status_of(
    request_id: str, raw_meta: bytes | None, raw_record: dict[bytes, bytes]
) -> RequestStatus:
    """A request's status from its result key's value and its record's fields (`result`;
    the asyncio client's too)."""
    record = RequestRecord.from_hash(request_id, raw_record) if raw_record else None
    if raw_meta:
        outcome = outcome_from_meta(json.loads(raw_meta), record.job_id if record else "")
        if outcome is not None:
            return RequestStatus(request_id, DONE, record, outcome)
    if record is None:
        return RequestStatus(request_id, UNKNOWN)
    return RequestStatus(request_id, record.state.value, record)


class Producer:
    """A connection to dispatchq's Redis: enqueue, result, wait. Thread-safe for enqueue."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis = self.settings.redis.client()
        self.records = RecordStore(self.redis, self.settings.result_ttl, self.settings.event_stream)
        self.batches = BatchStore(self.redis, self.settings.result_ttl)
        self.enqueuer = Enqueuer(
            self.redis,
            queue=self.settings.queue,
            result_ttl=self.settings.result_ttl,
            blob_ttl=self.settings.blob_ttl,
            min_replicas=self.settings.redis_min_replicas,
            replica_timeout=self.settings.redis_replica_timeout,
        )

    @cached_property
    def _celery(self) -> Any:
        return make_app(self.settings, name="dispatchq-producer")

    def close(self) -> None:
        if "_celery" in self.__dict__:
            # The result backend's connections (the pub/sub one `wait` used, the pool) live
            # in reference cycles: close them now rather than whenever GC gets to them.
            backend = self._celery.backend
            backend.result_consumer.stop()
            backend.client.connection_pool.disconnect()
            self._celery.close()
        if "nomad" in self.__dict__:
            self.nomad.close()
        self.redis.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(
        self,
        job_id: str,
        *,
        payload: bytes | None = None,
        payload_ref: str | None = None,
        meta: Mapping[str, str] | None = None,
        request_id: str | None = None,
        namespace: str | None = None,
        detach: bool = False,
        id_prefix_template: str = "",
        priority: int = 0,
        notify_url: str | None = None,
        tenant: str | None = None,
        until: str = "scheduled",
        wait_timeout: float | None = None,
    ) -> str:
        """Validate locally and enqueue one request; returns its request ID. A request in
        no batch is taken before any batch's (the interactive lane), whatever its tenant. With
        `notify_url`, the notifier POSTs its completion event there when it ends.

        Raises `InvalidRequest` for what can be known bad without Nomad. Enqueueing an ID
        that already exists does nothing and returns the ID (safe to retry); an ID that
        names another request (another job, payload or meta) raises `InvalidRequest`.
        `until` "finished" makes the request done when its child job is, not when its
        evaluation is; `wait_timeout` (seconds) bounds that wait.
        """
        request = NewRequest(
            job_id,
            payload=payload,
            payload_ref=payload_ref,
            meta=meta,
            request_id=request_id,
            namespace=namespace,
            detach=detach,
            id_prefix_template=id_prefix_template,
            priority=priority,
            notify_url=notify_url,
            tenant=tenant,
            until=until,
            wait_timeout=wait_timeout,
        )
        [(rid, flag)] = self.enqueuer.enqueue([request])
        if flag == CONFLICT:
            raise conflict(rid)
        return rid

    @cached_property
    def nomad(self) -> NomadClient:
        """A Nomad client from NOMAD_* (batch preflight and cancellation)."""
        return NomadClient(NomadConfig.from_env())

    def dispatch_batch(
        self,
        job_id: str,
        items: Iterable[BatchItem | dict[str, Any]],
        *,
        batch_id: str | None = None,
        namespace: str | None = None,
        detach: bool = False,
        preflight: bool = True,
        notify_url: str | None = None,
        tenant: str | None = None,
        until: str = "scheduled",
        max_attempts: int | None = None,
    ) -> str:
        """Enqueue a batch; returns its ID. With `max_attempts` (1-100; `until` "finished"
        only), an item whose own run failed (exit code 2) is dispatched again, as its next
        attempt, until it succeeds or has had that many (never for exit code 1: a bad
        request stays bad); see `retry_batch`. With `notify_url`, the notifier POSTs the
        batch's completion event there once, when its last item ends. With `preflight`,
        the job is read once from Nomad and a batch with any item it would refuse is rejected whole
        (BatchInputError, naming the lines) before anything is enqueued. Submitting the
        same items with the same batch ID again enqueues only what was not enqueued.
        Batches take turns with other batches, grouped by `tenant` (`dispatchq.broker.fetch`)."""
        if tenant is not None and not re.fullmatch(TENANT_PATTERN, tenant):
            raise InvalidRequest(TENANT_TEXT)
        check_max_attempts(max_attempts, until)
        listed = as_items(items)
        if notify_url is not None:
            check_notify_url(notify_url)
        if preflight:
            job, _ = self.nomad.read_job(job_id, namespace=namespace)
            check_items(job, listed)
        batch_id = batch_id or new_batch_id()
        plan = BatchPlan.of(
            job_id,
            listed,
            batch_id=batch_id,
            namespace=namespace,
            detach=detach,
            notify_url=notify_url,
            tenant=tenant,
            until=until,
            max_attempts=max_attempts,
        )
        BatchSubmitter(self.enqueuer, self.batches).submit(plan)
        return batch_id

    def retry_batch(self, batch_id: str) -> RetryReport:
        """Dispatch again every item of the batch whose latest attempt ended without
        success (exit code 1 or 2), with the same payload reference and meta, as its next
        attempt in the same batch: request `<first request ID>~<attempt>`. Idempotent: an
        item is claimed once per attempt, so a second call, or one while a retry is in
        flight, dispatches nothing twice. Raises KeyError for no such batch."""
        status = self.batches.status(batch_id)
        if status is None:
            raise KeyError(batch_id)
        if status.state == CANCELLED:
            raise InvalidRequest(f"batch {batch_id} was cancelled: nothing to retry")
        retrier = BatchRetrier(self.redis, queue=self.settings.queue, ttl=self.settings.result_ttl)
        return retrier.retry_batch(batch_id)

    def batch_status(self, batch_id: str) -> BatchStatus | None:
        """Counts per state and exit code: one read, whatever the batch's size."""
        return self.batches.status(batch_id)

    def batch_results(self, batch_id: str, *, failed_only: bool = False) -> Iterator[str]:
        """Every request of the batch as a JSON line, in item order; with `failed_only`,
        only those whose outcome's exit code is not 0, each with its item's line, payload
        reference and meta (what re-running it needs)."""
        return stream_results(self.batches, batch_id, failed_only=failed_only)

    def events(
        self, *, group: str, consumer: str, block: float = 5.0, start: str = "$"
    ) -> Iterator[dict[str, Any]]:
        """Completion events (`dispatchq.store.completion`), parsed, as a member `consumer` of the
        consumer group `group` on the event stream (created at `start`: "$" for new events
        only, "0" for all kept). Each event is acknowledged when the loop asks for the next
        one, so one whose handling raised is delivered again (its entry stays pending:
        `XAUTOCLAIM` it). Each event also carries `stream_id`, its stream entry ID.
        Endless: break out of the loop to stop."""
        return follow_events(
            self.redis, self.settings.event_stream.key, group, consumer, block=block, start=start
        )

    def cancel_batch(
        self, batch_id: str, *, stop_dispatched: bool = False
    ) -> tuple[int, list[str]]:
        """Stop what is not yet dispatched; with `stop_dispatched`, also stop (DELETE) the
        children already dispatched. Returns (children stopped, errors)."""
        cancelled = cancel_batch(
            self.batches, self.nomad, batch_id, stop_dispatched=stop_dispatched
        )
        if cancelled is None:
            raise KeyError(batch_id)
        return cancelled.stopped, cancelled.errors

    def result(self, request_id: str) -> RequestStatus:
        """The request's state now; its outcome once terminal. Never blocks."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.celery_result(request_id))
        pipe.hgetall(keys.request(request_id))
        raw_meta, raw_record = pipe.execute()
        return status_of(request_id, raw_meta, raw_record)

    def wait(
        self,
        request_ids: Iterable[str],
        timeout: float | None = None,
        on_done: Callable[[RequestStatus], None] | None = None,
    ) -> dict[str, RequestStatus]:
        """Block until every request is done or `timeout` seconds pass.

        Returns the status of each request, done or not; `on_done` is called once per
        request as it finishes (or is found finished). An ID with no record and no outcome
        yet (`unknown`: a message a foreign producer pushed that no worker has taken, or no
        such request at all) is waited for like a queued one: it cannot be told apart from
        a request still in the queue, so only `timeout` ends that wait. A text that cannot
        be a request ID (empty, over 200 characters, control characters) is not waited for.
        Redis going away (a restart, a failover) is waited out too, within `timeout`.
        """
        ids = list(dict.fromkeys(request_ids))
        deadline = None if timeout is None else time.monotonic() + timeout
        reported: set[str] = set()
        pause = 0.1
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._wait(ids, left, on_done, reported)
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis restarting or failing over: waited out, up to `timeout`.
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _wait(
        self,
        ids: list[str],
        timeout: float | None,
        on_done: Callable[[RequestStatus], None] | None,
        reported: set[str],
    ) -> dict[str, RequestStatus]:
        """`wait`, once: raises a connection error when Redis goes away. `reported`: the
        requests `on_done` was called for (by an earlier try)."""

        def done(status: RequestStatus) -> None:
            if on_done is not None and status.request_id not in reported:
                reported.add(status.request_id)
                on_done(status)

        statuses = {rid: self.result(rid) for rid in ids}
        for status in statuses.values():
            if status.done:
                done(status)
        # (A text that cannot be a request ID, "" say, names nothing that could come.)
        pending = [rid for rid, st in statuses.items() if not st.done and is_request_id(rid)]
        if not pending:
            return statuses
        backend = self._celery.backend
        results = ResultSet([AsyncResult(rid, app=self._celery) for rid in pending])
        try:
            for rid, meta in backend.iter_native(results, timeout=timeout, no_ack=True):
                outcome = outcome_from_meta(meta) if isinstance(meta, dict) else None
                if outcome is not None:
                    statuses[rid] = RequestStatus(rid, DONE, statuses[rid].record, outcome)
                    done(statuses[rid])
        except (CeleryTimeout, TimeoutError):
            for rid in pending:
                if not statuses[rid].done:
                    statuses[rid] = self.result(rid)
        finally:
            for res in results.results or []:
                backend.remove_pending_result(res)
        return statuses
