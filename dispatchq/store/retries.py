"""Re-run a batch's items that did not succeed: `dispatchq batch retry`, and the automatic
retries of `--max-attempts` (drained by the leading tracker).

Each item keeps its first request ID (`<batch id>-<line>`, or its own); attempt n > 1 is
the request `<first request ID>~<n>` (`keys.attempt_id`), with the same payload reference,
meta, job, namespace, tenant and `until` as the item (its payload reference and meta are
what the batch kept at submit, `keys.batch_items`), a new request (a new record, outcome,
completion event and Nomad idempotency token) in the same batch. The batch's attempts hash
(`keys.batch_attempts`) says which attempt is an item's latest; its counts and results are
of that attempt.

Claiming is one script per chunk (`dispatchq/store/lua/retry.lua`): an item is claimed only if its
attempt is still the one read here and that attempt ended without success, so running a
retry twice, at once, or while a retry is in flight dispatches nothing twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, cast

import redis
import structlog

from dispatchq.core.request import DispatchRequest, is_request_id, request_digest
from dispatchq.store import keys
from dispatchq.store.messages import celery_message
from dispatchq.store.scripts import SCRIPTS

log = structlog.get_logger(__name__)

CHUNK = 500
"""Items per claim: one script call each, like an enqueue chunk."""


@dataclass
class RetryReport:
    """What `retry_batch` did: items re-dispatched (`retried`), and those left alone: still
    running an attempt (`in_flight`), succeeded, or not retryable (`missing`: what the batch
    kept of the item expired, or its next attempt's ID would exceed 200 characters;
    `taken`: a record of its next attempt's ID exists that no retry made)."""

    retried: int = 0
    in_flight: int = 0
    succeeded: int = 0
    missing: int = 0
    taken: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class BatchRetrier:
    """Claims the next attempt of batch items and enqueues it (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, queue: str, ttl: int) -> None:
        self.client = client
        self.queue = queue
        self.ttl = ttl
        self._claim = client.register_script(SCRIPTS["retry"])

    def retry_batch(self, batch_id: str, chunk: int = CHUNK) -> RetryReport:
        """Re-dispatch every item of the batch whose latest attempt ended without success."""
        report = RetryReport()
        key = keys.batch_requests(batch_id)
        start = 0
        while True:
            part = cast(list[bytes], self.client.lrange(key, start, start + chunk - 1))
            ids = [raw.decode() for raw in part]
            if not ids:
                return report
            start += chunk
            attempts = self._attempts(batch_id, ids)
            pipe = self.client.pipeline(transaction=False)
            for item, n in zip(ids, attempts, strict=True):
                pipe.hmget(keys.request(keys.attempt_id(item, n)), "state", "exit_code")
            todo = []
            for item, n, (state, code) in zip(ids, attempts, pipe.execute(), strict=True):
                if state != b"done":
                    report.in_flight += 1
                elif code == b"0":
                    report.succeeded += 1
                else:
                    todo.append((item, n))
            claimed, missing, taken = self._claim_items(batch_id, todo, "all")
            report.retried += claimed
            report.missing += missing
            report.taken += taken
            report.in_flight += len(todo) - claimed - missing - taken

    def drain_due(self, limit: int = CHUNK) -> int:
        """Claim the next attempt of the items waiting in the retry set (`keys.RETRY_DUE`);
        returns how many were enqueued."""
        members = cast(list[bytes], self.client.zrange(keys.RETRY_DUE, 0, limit - 1))
        by_batch: dict[str, list[str]] = defaultdict(list)
        for member in members:
            batch_id, _, item = member.decode().partition("\x1f")
            by_batch[batch_id].append(item)
        done = 0
        for batch_id, items in by_batch.items():
            attempts = self._attempts(batch_id, items)
            todo = list(zip(items, attempts, strict=True))
            claimed, _, _ = self._claim_items(batch_id, todo, "auto")
            done += claimed
        return done

    def _attempts(self, batch_id: str, items: list[str]) -> list[int]:
        raw = cast(list[bytes | None], self.client.hmget(keys.batch_attempts(batch_id), items))
        return [int(n) if n else 1 for n in raw]

    def _claim_items(
        self, batch_id: str, todo: list[tuple[str, int]], mode: str
    ) -> tuple[int, int, int]:
        """(claimed, missing, taken) for items at the given attempts."""
        if not todo:
            return 0, 0, 0
        batch = {
            k.decode(): v.decode()
            for k, v in cast(dict[bytes, bytes], self.client.hgetall(keys.batch(batch_id))).items()
        }
        kept = cast(
            list[bytes | None],
            self.client.hmget(keys.batch_items(batch_id), [item for item, _ in todo]),
        )
        args: list[Any] = [self.ttl, keys.request(""), batch_id, batch.get("tenant", ""), mode]
        args += keys.lane_keys(self.queue)
        missing, stale = 0, []
        for (item, n), raw in zip(todo, kept, strict=True):
            next_id = keys.attempt_id(item, n + 1)
            if raw is None or not batch or not is_request_id(next_id):
                missing += 1
                stale.append(f"{batch_id}\x1f{item}")
                log.warning("batch.retry_impossible", batch_id=batch_id, request_id=item)
                continue
            message, digest = self._message(batch, batch_id, next_id, json.loads(raw))
            args += [item, n, keys.attempt_id(item, n), next_id, digest, message]
        if stale and mode == "auto":
            self.client.zrem(keys.RETRY_DUE, *stale)
        if len(args) == 11:
            return 0, missing, 0
        claim_keys = [keys.batch(batch_id), keys.batch_attempts(batch_id), keys.RETRY_DUE]
        flags = cast(list[int], self._claim(keys=claim_keys, args=args))
        taken = flags.count(2)
        if taken:
            log.error("batch.retry_taken", batch_id=batch_id, items=taken)
        return flags.count(1), missing, taken

    def _message(
        self, batch: dict[str, str], batch_id: str, request_id: str, kept: dict[str, Any]
    ) -> tuple[str, str]:
        """The next attempt's queue message and digest."""
        fields: dict[str, Any] = {
            "job_id": batch.get("job_id", ""),
            "request_id": request_id,
            "payload_ref": kept.get("payload_ref"),
            "meta": kept.get("meta") or {},
            "namespace": batch.get("namespace") or None,
            "detach": batch.get("detach") == "1",
            "batch_id": batch_id,
            "tenant": batch.get("tenant") or None,
            "until": batch.get("until") or "scheduled",
        }
        [request] = DispatchRequest.all_from_producer([fields])
        message = request.to_message()
        return celery_message(message, self.queue), request_digest(message)
