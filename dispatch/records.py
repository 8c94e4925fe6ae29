"""The request record: caller-visible state and the worker's write-ahead log, one hash each.

`dispatchq:request:<id>` (see `keys`) holds:
- `state`: queued -> dispatching -> monitoring -> done;
- `job_id`, `enqueued_at` (producer), `batch_id` when part of a batch;
- `dispatched_job_id`, `eval_id` (worker, written the moment Nomad answers: a redelivered
  request that finds them resumes monitoring and never dispatches again);
- `exit_code` once done.
Every write renews the TTL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from dispatch import keys


class RequestState(StrEnum):
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    MONITORING = "monitoring"
    DONE = "done"


_STATES = frozenset(s.value for s in RequestState)


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    state: RequestState
    job_id: str = ""
    batch_id: str = ""
    enqueued_at: float | None = None
    dispatched_job_id: str = ""
    eval_id: str = ""
    exit_code: int | None = None

    @classmethod
    def from_hash(cls, request_id: str, raw: dict[bytes, bytes]) -> RequestRecord:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        state = data.get("state", RequestState.QUEUED.value)
        return cls(
            request_id=request_id,
            state=RequestState(state) if state in _STATES else RequestState.QUEUED,
            job_id=data.get("job_id", ""),
            batch_id=data.get("batch_id", ""),
            enqueued_at=float(data["enqueued_at"]) if "enqueued_at" in data else None,
            dispatched_job_id=data.get("dispatched_job_id", ""),
            eval_id=data.get("eval_id", ""),
            exit_code=int(data["exit_code"]) if "exit_code" in data else None,
        )

    @property
    def dispatched(self) -> bool:
        return bool(self.dispatched_job_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "state": self.state.value,
            "job_id": self.job_id,
            "batch_id": self.batch_id or None,
            "dispatched_job_id": self.dispatched_job_id or None,
            "eval_id": self.eval_id or None,
        }


class RecordStore:
    """Reads and writes request records with their TTL."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    def load(self, request_id: str) -> RequestRecord | None:
        raw = self.client.hgetall(keys.request(request_id))
        return RequestRecord.from_hash(request_id, raw) if raw else None  # type: ignore[arg-type]

    def _write(self, request_id: str, fields: dict[FieldT, EncodableT]) -> None:
        key = keys.request(request_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.ttl)
        pipe.execute()

    def mark_dispatching(self, request_id: str, job_id: str, batch_id: str | None) -> None:
        """Also creates the record for a message pushed without one (a foreign producer)."""
        fields: dict[FieldT, EncodableT] = {
            "state": RequestState.DISPATCHING.value,
            "job_id": job_id,
            "started_at": time.time(),
        }
        if batch_id:
            fields["batch_id"] = batch_id
        self._write(request_id, fields)

    def mark_dispatched(self, request_id: str, dispatched_job_id: str, eval_id: str) -> None:
        """The write-ahead record: from here on a redelivery resumes monitoring."""
        self._write(
            request_id,
            {
                "state": RequestState.MONITORING.value,
                "dispatched_job_id": dispatched_job_id,
                "eval_id": eval_id,
            },
        )

    def mark_done(self, request_id: str, exit_code: int) -> None:
        self._write(request_id, {"state": RequestState.DONE.value, "exit_code": exit_code})
