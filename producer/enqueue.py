"""Enqueue dispatch requests: local validation, payload blobs, one pipelined write.

For every request, one server-side script (`dispatch/lua/enqueue.lua`, owned by
`dispatch.records`) creates the request record (state `queued`) and pushes the Celery
message (a request in no batch onto the queue, the interactive lane; a batch's onto its
batch's lane, `worker.fetch`), unless a record with that request ID already exists:
enqueueing the same request ID twice is a no-op, which makes producers safe to retry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import redis

from dispatch import keys
from dispatch.errors import InvalidRequest as InvalidRequest
from dispatch.payload import PAYLOAD_LIMIT, blob_digest
from dispatch.records import SCRIPTS
from dispatch.request import DispatchRequest, request_digest
from producer.messages import celery_message, compact_json, new_request_id

# A batch's request list is `keys.batch(id) + _REQUESTS_SUFFIX`, its items `+ _ITEMS_SUFFIX`.
_REQUESTS_SUFFIX = keys.batch_requests("")[len(keys.batch("")) :]
_ITEMS_SUFFIX = keys.batch_items("")[len(keys.batch("")) :]
_PREFIXES = (
    keys.request(""),
    keys.celery_result(""),
    keys.batch(""),
    _REQUESTS_SUFFIX,
    _ITEMS_SUFFIX,
)

NEW, AGAIN, SKIPPED, CONFLICT = 1, 2, 0, 3

CHUNK = 500
"""Requests per script call: large enough to amortise the round trip, small enough not to
hold Redis for more than a few milliseconds."""


def packed(command: list[bytes]) -> bytes:
    """One command in Redis's protocol (an array of bulk strings), as redis-py's
    `pack_commands` writes it at a fifth of the cost per command: a chunk of 500 requests
    with inline payloads is 501 commands and 1,000 script arguments (bench/enqueue)."""
    out = [b"*%d\r\n" % len(command)]
    add = out.append
    for arg in command:
        add(b"$%d\r\n" % len(arg))
        add(arg)
        add(b"\r\n")
    return b"".join(out)


class NewRequest:
    """One dispatch request as a producer states it: the fields of `DispatchRequest`, with
    `request_id` optional (a new one is made) and an inline `payload` allowed instead of a
    `payload_ref` (stored as a blob). Checked when enqueued (`prepare`). A batch member's
    `line` (its place in the batch's input) is kept with its payload reference and meta
    (`keys.batch_items`: what re-running it needs)."""

    __slots__ = ("fields", "line", "payload")

    def __init__(
        self, job_id: Any, *, payload: Any = None, line: int | None = None, **fields: Any
    ) -> None:
        self.payload = payload
        self.line = line
        self.fields = {"job_id": job_id, **fields}


Blob = tuple[str, bytes]
"""An inline payload to store: its digest (`keys.blob`) and its bytes."""
Prepared = tuple[DispatchRequest, Blob | None, int | None]
"""A request as it will be enqueued, its inline payload and its batch line."""


def prepare(requests: Iterable[NewRequest]) -> list[Prepared]:
    """The requests as they will be enqueued, each with its inline payload; raises
    InvalidRequest for what can be known bad without Nomad (the model's rules, checked for
    all at once, and the 16 KiB limit)."""
    items: list[dict[str, Any]] = []
    blobs: list[Blob | None] = []
    lines: list[int | None] = []
    for new in requests:
        data, payload, blob = {**new.fields}, new.payload, None
        if payload is not None:
            if data.get("payload_ref") is not None:
                raise InvalidRequest("give either payload or payload_ref, not both")
            if not isinstance(payload, bytes | bytearray):
                raise InvalidRequest(f"payload must be bytes, not {type(payload).__name__}")
            if len(payload) > PAYLOAD_LIMIT:
                raise InvalidRequest(
                    f"Payload exceeds maximum size; {len(payload)} > {PAYLOAD_LIMIT}"
                )
            payload = bytes(payload)
            blob = (blob_digest(payload), payload)
            data["payload_ref"] = f"blob:sha256:{blob[0]}"
        if data.get("request_id") is None:
            data["request_id"] = new_request_id()
        items.append(data)
        blobs.append(blob)
        lines.append(new.line)
    return list(zip(DispatchRequest.all_from_producer(items), blobs, lines, strict=True))


class Enqueuer:
    """Writes requests to Redis: blobs first, then records and messages, in chunks."""

    def __init__(self, client: redis.Redis, *, queue: str, result_ttl: int, blob_ttl: int):
        self.client = client
        self.queue = queue
        self.result_ttl = result_ttl
        self.blob_ttl = blob_ttl

    def enqueue(self, requests: Iterable[NewRequest]) -> list[tuple[str, int]]:
        """(request ID, NEW | AGAIN | SKIPPED | CONFLICT) per request, in order. Validates
        each first.

        A request ID that exists is skipped, unless its earlier run ended without
        dispatching anything: then it is enqueued again (AGAIN). CONFLICT: the ID exists
        and names another request (another job, payload, meta...): skipped too."""
        listed = prepare(requests)  # all of them first: a bad one means nothing is written
        chunks = [listed[i : i + CHUNK] for i in range(0, len(listed), CHUNK)]
        if not chunks:
            return []
        sha = self.client.script_load(SCRIPTS["enqueue"])
        # One connection, no thread: chunk n+1 is built and sent while Redis runs chunk n,
        # and chunk n's answers are read after. (A helper thread did the same with the
        # GIL passed back and forth at every reply: no faster than doing it in turn.)
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()  # redis-py leaves these methods untyped
        out: list[tuple[str, int]] = []
        try:
            sent: deque[tuple[int, list[str]]] = deque()
            for chunk in chunks:
                count, data, ids = self._commands(chunk, sha)
                conn.send_packed_command([data])
                sent.append((count, ids))
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

    def _commands(self, chunk: list[Prepared], sha: str) -> tuple[int, bytes, list[str]]:
        """The chunk's blob writes and its one script call, packed (`packed`): how many
        commands, their bytes, the chunk's request IDs."""
        commands: list[list[bytes]] = []
        stored: set[str] = set()
        argv = [b"EVALSHA", sha.encode(), b"1", self.queue.encode(), b"%d" % self.result_ttl]
        argv += [prefix.encode() for prefix in (*_PREFIXES, *keys.lane_keys(self.queue))]
        ids: list[str] = []
        blob_ttl = b"%d" % self.blob_ttl
        for request, blob, line in chunk:
            ids.append(request.request_id)
            if blob is not None and blob[0] not in stored:
                commands.append([b"SET", keys.blob(blob[0]).encode(), blob[1], b"EX", blob_ttl])
                stored.add(blob[0])
            message = request.to_message()
            item = b""
            if line is not None:
                item = compact_json(
                    {"line": line, "payload_ref": request.payload_ref, "meta": request.meta}
                )
            argv.append(
                f"{request.request_id}\x1f{request.batch_id or ''}\x1f{request_digest(message)}"
                f"\x1f{request.tenant or ''}\x1f".encode()
                + item
            )
            argv.append(celery_message(message, self.queue).encode())
        commands.append(argv)
        return len(commands), b"".join(map(packed, commands)), ids

    @staticmethod
    def _answers(conn: Any, count: int, ids: list[str]) -> list[tuple[str, int]]:
        """Read a chunk's answers (the script's flags come last); an error answer raises."""
        answers = [conn.read_response() for _ in range(count)]
        flags: list[int] = answers[-1]
        return list(zip(ids, flags, strict=True))
