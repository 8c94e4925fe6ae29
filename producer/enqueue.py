"""Enqueue dispatch requests: local validation, payload blobs, one pipelined write.

For every request, one server-side script creates the request record (state `queued`) and
pushes the Celery message, unless a record with that request ID already exists: enqueueing
the same request ID twice is a no-op, which makes producers safe to retry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from dispatch import keys
from dispatch.payload import PAYLOAD_LIMIT, blob_digest
from producer.messages import celery_message, new_request_id, request_body

# Per request (8 arguments): request ID, record key, result key, batch key or '', batch
# request list or '', job, batch ID or '', message. Returns per request 1 (new), 2
# (enqueued again: its earlier run ended without dispatching anything, e.g. it gave up
# while Nomad was down) or 0 (exists: skipped). New batch members join the batch's list.
_ENQUEUE_LUA = """
local queue, ttl, now = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local out = {}
for i = 3, #ARGV, 8 do
  local rid, key, result, batch, list = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local job, batch_id, message = ARGV[i+5], ARGV[i+6], ARGV[i+7]
  local flag = 1
  if redis.call('EXISTS', key) == 1 then
    flag = 0
    local f = redis.call('HMGET', key, 'state', 'dispatched_job_id', 'exit_code')
    if f[1] == 'done' and (not f[2] or f[2] == '') then
      flag = 2
      if batch ~= '' and f[3] then
        redis.call('HINCRBY', batch, 'done', -1)
        redis.call('HINCRBY', batch, 'exit:' .. f[3], -1)
      end
      redis.call('DEL', key, result)
    end
  end
  if flag > 0 then
    redis.call('HSET', key, 'state', 'queued', 'job_id', job, 'enqueued_at', now)
    if batch_id ~= '' then redis.call('HSET', key, 'batch_id', batch_id) end
    redis.call('EXPIRE', key, ttl)
    redis.call('LPUSH', queue, message)
    if flag == 1 and list ~= '' then
      redis.call('RPUSH', list, rid)
      redis.call('EXPIRE', list, ttl)
    end
  end
  out[#out + 1] = flag
end
return out
"""

NEW, AGAIN, SKIPPED = 1, 2, 0

CHUNK = 500
"""Requests per script call: large enough to amortise the round trip, small enough not to
hold Redis for more than a few milliseconds."""


class InvalidRequest(ValueError):
    """A request rejected before anything was enqueued; the message says why."""


@dataclass
class NewRequest:
    """One dispatch request as a producer states it."""

    job_id: str
    payload: bytes | None = None
    payload_ref: str | None = None
    meta: Mapping[str, str] | None = None
    request_id: str | None = None
    namespace: str | None = None
    detach: bool = False
    id_prefix_template: str = ""
    priority: int = 0
    batch_id: str | None = None


def validate(req: NewRequest) -> None:
    """What can be checked without Nomad: types, the 16 KiB limit, the meta format."""
    if not isinstance(req.job_id, str) or not req.job_id.strip():
        raise InvalidRequest("job ID must be a non-empty string")
    if req.payload is not None and req.payload_ref is not None:
        raise InvalidRequest("give either payload or payload_ref, not both")
    if req.payload is not None:
        if not isinstance(req.payload, bytes | bytearray):
            raise InvalidRequest(f"payload must be bytes, not {type(req.payload).__name__}")
        if len(req.payload) > PAYLOAD_LIMIT:
            raise InvalidRequest(
                f"Payload exceeds maximum size; {len(req.payload)} > {PAYLOAD_LIMIT}"
            )
    if req.payload_ref is not None and not (isinstance(req.payload_ref, str) and req.payload_ref):
        raise InvalidRequest("payload_ref must be a non-empty string")
    if req.meta is not None:
        if not isinstance(req.meta, Mapping):
            raise InvalidRequest(f"meta must be a mapping, not {type(req.meta).__name__}")
        for key, value in req.meta.items():
            if not isinstance(key, str) or not key:
                raise InvalidRequest(f"meta keys must be non-empty strings, got {key!r}")
            if not isinstance(value, str):
                raise InvalidRequest(
                    f"meta value for {key!r} must be a string, not {type(value).__name__}"
                )
    if req.request_id is not None and (
        not isinstance(req.request_id, str) or not 0 < len(req.request_id) <= 200
    ):
        raise InvalidRequest("request_id must be a string of 1 to 200 characters")
    if not isinstance(req.priority, int) or not 0 <= req.priority <= 100:
        raise InvalidRequest("priority must be an integer from 0 (inherit) to 100")


class Enqueuer:
    """Writes requests to Redis: blobs first, then records and messages, in chunks."""

    def __init__(self, client: redis.Redis, *, queue: str, result_ttl: int, blob_ttl: int):
        self.client = client
        self.queue = queue
        self.result_ttl = result_ttl
        self.blob_ttl = blob_ttl
        self._script = client.register_script(_ENQUEUE_LUA)

    def enqueue(self, requests: Iterable[NewRequest]) -> list[tuple[str, int]]:
        """(request ID, NEW | AGAIN | SKIPPED) per request, in order. Validates each first.

        A request ID that exists is skipped, unless its earlier run ended without
        dispatching anything: then it is enqueued again (AGAIN)."""
        out: list[tuple[str, int]] = []
        chunk: list[NewRequest] = []
        for req in requests:
            validate(req)
            chunk.append(req)
            if len(chunk) >= CHUNK:
                out += self._write(chunk)
                chunk = []
        if chunk:
            out += self._write(chunk)
        return out

    def _write(self, chunk: list[NewRequest]) -> list[tuple[str, int]]:
        pipe = self.client.pipeline(transaction=False)
        stored: set[str] = set()
        argv: list[str | float | int] = [self.result_ttl, time.time()]
        ids: list[str] = []
        for req in chunk:
            request_id = req.request_id or new_request_id()
            ids.append(request_id)
            ref = req.payload_ref
            if req.payload is not None:
                digest = blob_digest(bytes(req.payload))
                if digest not in stored:
                    pipe.set(keys.blob(digest), bytes(req.payload), ex=self.blob_ttl)
                    stored.add(digest)
                ref = f"blob:sha256:{digest}"
            body = request_body(
                request_id,
                req.job_id,
                payload_ref=ref,
                meta=dict(req.meta) if req.meta else None,
                namespace=req.namespace,
                detach=req.detach,
                id_prefix_template=req.id_prefix_template,
                priority=req.priority,
                batch_id=req.batch_id,
            )
            argv += [
                request_id,
                keys.request(request_id),
                keys.celery_result(request_id),
                keys.batch(req.batch_id) if req.batch_id else "",
                keys.batch_requests(req.batch_id) if req.batch_id else "",
                req.job_id,
                req.batch_id or "",
                celery_message(body, self.queue),
            ]
        self._script(keys=[self.queue], args=argv, client=pipe)
        flags: list[int] = pipe.execute()[-1]
        return list(zip(ids, flags, strict=True))
