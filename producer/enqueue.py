"""Enqueue dispatch requests: local validation, payload blobs, one pipelined write.

For every request, one server-side script creates the request record (state `queued`) and
pushes the Celery message, unless a record with that request ID already exists: enqueueing
the same request ID twice is a no-op, which makes producers safe to retry.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from dispatch import keys
from dispatch.payload import PAYLOAD_LIMIT, blob_digest
from producer.messages import celery_message, new_request_id, request_body

# ARGV: ttl, then the key prefixes of a request record, a result, a batch and a batch's
# request list (from `keys`, so the schema stays in one module), then two arguments per
# request: "<request ID>\x1f<batch ID or nothing>" (\x1f, the unit separator, cannot occur
# in either: `validate`) and the message. Returns per request 1 (new), 2 (enqueued again:
# its earlier run ended without dispatching anything, e.g. it gave up while Nomad was
# down) or 0 (exists: skipped). New batch members join the batch's list.
#
# Cost per request is what bounds a batch enqueue (bench/enqueue), so the new-request path
# is two calls: HSETNX creates the record (and is the existence check), EXPIRE dates it.
_ENQUEUE_LUA = """
local queue, ttl = KEYS[1], tonumber(ARGV[1])
local p_request, p_result, p_batch, s_requests = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out, messages, lists = {}, {}, {}
for i = 6, #ARGV, 2 do
  local sep = string.find(ARGV[i], '\\31', 1, true)
  local rid, batch_id = string.sub(ARGV[i], 1, sep - 1), string.sub(ARGV[i], sep + 1)
  local key = p_request .. rid
  local flag = redis.call('HSETNX', key, 'state', 'queued')
  if flag == 0 then
    local f = redis.call('HMGET', key, 'state', 'dispatched_job_id', 'exit_code')
    if f[1] == 'done' and (not f[2] or f[2] == '') then
      flag = 2
      if batch_id ~= '' and f[3] then
        redis.call('HINCRBY', p_batch .. batch_id, 'done', -1)
        redis.call('HINCRBY', p_batch .. batch_id, 'exit:' .. f[3], -1)
      end
      redis.call('DEL', key, p_result .. rid)
      redis.call('HSET', key, 'state', 'queued')
    end
  end
  if flag > 0 then
    redis.call('EXPIRE', key, ttl)
    messages[#messages + 1] = ARGV[i + 1]
    if flag == 1 and batch_id ~= '' then
      local list = p_batch .. batch_id .. s_requests
      if not lists[list] then lists[list] = {} end
      table.insert(lists[list], rid)
    end
  end
  out[#out + 1] = flag
end
if #messages > 0 then redis.call('LPUSH', queue, unpack(messages)) end
for list, ids in pairs(lists) do
  redis.call('RPUSH', list, unpack(ids))
  redis.call('EXPIRE', list, ttl)
end
return out
"""

# The batch request list is `keys.batch(id) + _REQUESTS_SUFFIX`.
_REQUESTS_SUFFIX = keys.batch_requests("")[len(keys.batch("")) :]
_PREFIXES = (keys.request(""), keys.celery_result(""), keys.batch(""), _REQUESTS_SUFFIX)

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


_CONTROL = re.compile("[\x00-\x1f]")


def validate(req: NewRequest) -> None:
    """What can be checked without Nomad: types, the 16 KiB limit, the meta format."""
    validate_shared(req)
    validate_own(req)


def _shared(req: NewRequest) -> tuple[object, ...]:
    """The fields the items of one batch have in common."""
    return (
        req.job_id,
        req.namespace,
        req.batch_id,
        req.detach,
        req.id_prefix_template,
        req.priority,
    )


def validate_shared(req: NewRequest) -> None:
    """The checks of the fields in `_shared`."""
    if not isinstance(req.job_id, str) or not req.job_id.strip():
        raise InvalidRequest("job ID must be a non-empty string")
    for name in ("namespace", "batch_id"):
        value = getattr(req, name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string, not {type(value).__name__}")
    for name in ("job_id", "batch_id"):
        value = getattr(req, name)
        if isinstance(value, str) and _CONTROL.search(value):
            raise InvalidRequest(f"{name} must not contain control characters")
    if type(req.priority) is not int or not 0 <= req.priority <= 100:
        raise InvalidRequest("priority must be an integer from 0 (inherit) to 100")
    if not isinstance(req.id_prefix_template, str):
        raise InvalidRequest("id_prefix_template must be a string")
    if not isinstance(req.detach, bool):
        raise InvalidRequest(f"detach must be true or false, not {type(req.detach).__name__}")


def validate_own(req: NewRequest) -> None:
    """The checks of each request's own fields: payload, meta, request ID."""
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
        not isinstance(req.request_id, str)
        or not 0 < len(req.request_id) <= 200
        or _CONTROL.search(req.request_id)
    ):
        raise InvalidRequest(
            "request_id must be a string of 1 to 200 characters, without control characters"
        )


class Enqueuer:
    """Writes requests to Redis: blobs first, then records and messages, in chunks."""

    def __init__(self, client: redis.Redis, *, queue: str, result_ttl: int, blob_ttl: int):
        self.client = client
        self.queue = queue
        self.result_ttl = result_ttl
        self.blob_ttl = blob_ttl

    def enqueue(self, requests: Iterable[NewRequest]) -> list[tuple[str, int]]:
        """(request ID, NEW | AGAIN | SKIPPED) per request, in order. Validates each first.

        A request ID that exists is skipped, unless its earlier run ended without
        dispatching anything: then it is enqueued again (AGAIN)."""
        listed = list(requests)
        checked: set[tuple[object, ...]] = set()  # a batch's shared fields: checked once
        for req in listed:  # all of them first: a bad request means nothing is written
            shared = _shared(req)
            try:
                known = shared in checked
            except TypeError:  # an unhashable value, which validate_shared refuses
                known = False
            if not known:
                validate_shared(req)
                checked.add(shared)
            validate_own(req)
        chunks = [listed[i : i + CHUNK] for i in range(0, len(listed), CHUNK)]
        if not chunks:
            return []
        sha = self.client.script_load(_ENQUEUE_LUA)
        # One connection, no thread: chunk n+1 is built and sent while Redis runs chunk n,
        # and chunk n's answers are read after. (A helper thread did the same with the
        # GIL passed back and forth at every reply: no faster than doing it in turn.)
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()  # redis-py leaves these methods untyped
        out: list[tuple[str, int]] = []
        try:
            sent: deque[tuple[int, list[str]]] = deque()
            for chunk in chunks:
                commands, ids = self._commands(chunk, sha)
                conn.send_packed_command(conn.pack_commands(commands))
                sent.append((len(commands), ids))
                if len(sent) > 1:
                    out += self._answers(conn, *sent.popleft())
            while sent:
                out += self._answers(conn, *sent.popleft())
        except BaseException:
            conn.disconnect()  # answers may be left unread: the connection is not reusable
            raise
        finally:
            pool.release(conn)
        return out

    def _commands(
        self, chunk: list[NewRequest], sha: str
    ) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The chunk's blob writes and its one script call, and its request IDs."""
        commands: list[tuple[Any, ...]] = []
        stored: set[str] = set()
        argv: list[str | float | int] = [self.result_ttl, *_PREFIXES]
        ids: list[str] = []
        for req in chunk:
            request_id = req.request_id or new_request_id()
            ids.append(request_id)
            ref = req.payload_ref
            if req.payload is not None:
                digest = blob_digest(bytes(req.payload))
                if digest not in stored:
                    commands.append(
                        ("SET", keys.blob(digest), bytes(req.payload), "EX", self.blob_ttl)
                    )
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
            argv += [f"{request_id}\x1f{req.batch_id or ''}", celery_message(body, self.queue)]
        commands.append(("EVALSHA", sha, 1, self.queue, *argv))
        return commands, ids

    @staticmethod
    def _answers(conn: Any, count: int, ids: list[str]) -> list[tuple[str, int]]:
        """Read a chunk's answers (the script's flags come last); an error answer raises."""
        answers = [conn.read_response() for _ in range(count)]
        flags: list[int] = answers[-1]
        return list(zip(ids, flags, strict=True))
