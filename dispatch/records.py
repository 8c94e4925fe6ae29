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

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import redis

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


_DISPATCHED_LUA = """
local first = redis.call('HGET', KEYS[1], 'dispatched_job_id')
redis.call('HSET', KEYS[1], 'state', 'monitoring', 'dispatched_job_id', ARGV[2], 'eval_id', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
if (not first or first == '') and ARGV[4] ~= '' then
  redis.call('HINCRBY', ARGV[4], 'dispatched', 1)
  redis.call('EXPIRE', ARGV[4], ARGV[1])
end
"""

# Counts a request in its batch once, however often it is finished (a redelivery after
# the outcome was stored runs the task again), and stores its outcome (KEYS[2], published
# on the channel of the same name, as Celery's Redis backend does) in the same step: the
# first finish wins, so a late duplicate cannot replace an outcome already stored.
_DONE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('EXPIRE', KEYS[1], ARGV[1])
if state == 'done' then return end
redis.call('HSET', KEYS[1], 'state', 'done', 'exit_code', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HINCRBY', ARGV[3], 'done', 1)
  redis.call('EXPIRE', ARGV[3], ARGV[1])
  redis.call('HINCRBY', ARGV[3], 'exit:' .. ARGV[2], 1)
  local child = redis.call('HGET', KEYS[1], 'dispatched_job_id')
  if child and child ~= '' then redis.call('HINCRBY', ARGV[3], 'done_dispatched', 1) end
  if ARGV[4] ~= '' and redis.call('LLEN', ARGV[5]) < tonumber(ARGV[6]) then
    redis.call('RPUSH', ARGV[5], ARGV[4])
    redis.call('EXPIRE', ARGV[5], ARGV[1])
  end
end
if KEYS[2] then
  if tonumber(ARGV[8]) > 0 then
    redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[8])
  else
    redis.call('SET', KEYS[2], ARGV[7])
  end
  redis.call('PUBLISH', KEYS[2], ARGV[7])
end
"""

# A worker taking a request: the child and evaluation it names (a redelivered request that
# was dispatched), whether its batch was cancelled, and (unless the request is already
# dispatched, or cancelled) the record marked dispatching; and the value of KEYS[2], if
# given (the payload blob the request will need). One round trip where four separate reads
# and writes cost a third of a request's time; only the fields the worker needs come back.
_BEGIN_LUA = """
local ids = redis.call('HMGET', KEYS[1], 'dispatched_job_id', 'eval_id')
local cancelled = 0
if ARGV[3] ~= '' and redis.call('HGET', ARGV[5], 'state') == 'cancelled' then cancelled = 1 end
local child = ids[1]
if (not child or child == '') and cancelled == 0 then
  redis.call('HSET', KEYS[1], 'state', 'dispatching', 'job_id', ARGV[2], 'started_at', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'batch_id', ARGV[3]) end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
local value = false
if KEYS[2] then value = redis.call('GET', KEYS[2]) end
return {child, ids[2], cancelled, value}
"""


class Begun(NamedTuple):
    """What `RecordStore.begin` found."""

    dispatched_job_id: str  # "" unless a previous delivery dispatched the request
    eval_id: str
    cancelled: bool
    value: bytes | None


@dataclass(frozen=True)
class StoredResult:
    """An outcome as the result backend stores it: under `key`, for `ttl` seconds (0: no
    expiry), encoded as its readers expect (`value`)."""

    key: str
    value: bytes | str
    ttl: int


MAX_BATCH_ERRORS = 50
"""A batch keeps the first errors only: enough to see what went wrong, bounded memory."""


class RecordStore:
    """Reads and writes request records with their TTL, and their batches' counters."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._dispatched = client.register_script(_DISPATCHED_LUA)
        self._done = client.register_script(_DONE_LUA)
        self._begin = client.register_script(_BEGIN_LUA)

    def load(self, request_id: str) -> RequestRecord | None:
        raw = self.client.hgetall(keys.request(request_id))
        return RequestRecord.from_hash(request_id, raw) if raw else None  # type: ignore[arg-type]

    def begin(
        self, request_id: str, job_id: str, batch_id: str | None, read: str | None = None
    ) -> Begun:
        """Take a request: the child and evaluation it names if it was dispatched before,
        whether its batch is cancelled, and the value of the key `read` (None if absent or
        not asked). Unless it was already dispatched or is cancelled, the record now says
        `dispatching` (and exists, for a message pushed without one by a foreign producer)."""
        batch = keys.batch(batch_id) if batch_id else ""
        child, eval_id, cancelled, value = self._begin(
            keys=[keys.request(request_id), *([read] if read else [])],
            args=[self.ttl, job_id, batch_id or "", time.time(), batch],
        )
        return Begun((child or b"").decode(), (eval_id or b"").decode(), bool(cancelled), value)

    def mark_dispatched(
        self, request_id: str, dispatched_job_id: str, eval_id: str, batch_id: str | None
    ) -> None:
        """The write-ahead record: from here on a redelivery resumes monitoring."""
        batch = keys.batch(batch_id) if batch_id else ""
        self._dispatched(
            keys=[keys.request(request_id)], args=[self.ttl, dispatched_job_id, eval_id, batch]
        )

    def mark_done(
        self,
        request_id: str,
        exit_code: int,
        batch_id: str | None,
        error: str = "",
        result: StoredResult | None = None,
    ) -> None:
        """Final state; counted once in the batch, with the error among its first ones, and
        `result` stored, all in one step; a request already done keeps what it stored."""
        batch = keys.batch(batch_id) if batch_id else ""
        errors = keys.batch_errors(batch_id) if batch_id else ""
        entry = json.dumps({"request_id": request_id, "error": error}) if error else ""
        script_keys = [keys.request(request_id)]
        args: list[Any] = [self.ttl, exit_code, batch, entry, errors, MAX_BATCH_ERRORS]
        if result is not None:
            script_keys.append(result.key)
            args += [result.value, result.ttl]
        self._done(keys=script_keys, args=args)

    def batch_cancelled(self, batch_id: str) -> bool:
        """Whether the batch has been cancelled (for a request that waited its turn)."""
        return bool(self.client.hget(keys.batch(batch_id), "state") == b"cancelled")
