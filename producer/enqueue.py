"""Enqueue dispatch requests: local validation, payload blobs, one pipelined write.

For every request, one server-side script (`dispatchq/store/lua/enqueue.lua`, owned by
`dispatchq.store.records`) creates the request record (state `queued`) and pushes the Celery
message (a request in no batch onto the queue, the interactive lane; a batch's onto its
batch's lane, `dispatchq.broker.fetch`), unless a record with that request ID already exists:
enqueueing the same request ID twice is a no-op, which makes producers safe to retry.
"""

from __future__ import annotations

from base64 import b64encode
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import redis

from dispatchq.core.request import DispatchRequest, request_digest
from dispatchq.errors import InvalidRequest as InvalidRequest
from dispatchq.errors import NotReplicated
from dispatchq.payload.resolve import PAYLOAD_LIMIT, blob_digest
from dispatchq.store import keys
from dispatchq.store.messages import celery_message, compact_json, new_request_id
from dispatchq.store.scripts import SCRIPTS

_PREFIXES = (
    keys.request(""),
    keys.celery_result(""),
    keys.batch(""),
    keys.batch_requests(""),
    keys.batch_items(""),
)

NEW, AGAIN, SKIPPED, CONFLICT = 1, 2, 0, 3

EACH, ALL, CHECK = "each", "all", "check"
"""The enqueue script's modes (`dispatchq/store/lua/enqueue.lua`): skip each request whose ID
names another request; write nothing of a chunk where one does (a batch); write nothing."""

CHUNK = 500
"""Requests per script call: large enough to amortise the round trip, small enough not to
hold Redis for more than a few milliseconds."""


def conflict(request_id: str) -> InvalidRequest:
    """The error of an enqueue whose request ID names another request already."""
    return InvalidRequest(
        f'request ID "{request_id}" already names another request (another job, payload or '
        "meta): choose another ID"
    )


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
    `payload_ref` (in the message up to `INLINE_PAYLOAD_MAX` bytes, else stored as a blob).
    Checked when enqueued (`prepare`). A batch member's `line` (its place in the batch's
    input) is kept with its payload reference and meta (`keys.batch_items`: what re-running
    it needs)."""

    __slots__ = ("fields", "line", "payload")

    def __init__(
        self, job_id: Any, *, payload: Any = None, line: int | None = None, **fields: Any
    ) -> None:
        self.payload = payload
        self.line = line
        self.fields = {"job_id": job_id, **fields}


INLINE_PAYLOAD_MAX = 512
"""A payload of at most this many bytes travels in its message, as a `data:` reference (RFC
2397, base64): no blob to write, none for the worker to read (two Redis commands fewer per
request). A larger one is stored once per content as a blob (`keys.blob`), which the
messages name: a fan-out sharing one large payload stores it once."""

Blob = tuple[str, bytes]
"""An inline payload to store: its digest (`keys.blob`) and its bytes."""
Prepared = tuple[DispatchRequest, Blob | None, int | None]
"""A request as it will be enqueued, its inline payload and its batch line."""


def prepare(requests: Iterable[NewRequest]) -> list[Prepared]:
    """The requests as they will be enqueued, each with its inline payload; raises
    InvalidRequest for what can be known bad without Nomad (the model's rules, checked for
    all at once, the 16 KiB limit, and the IDs only dispatchq makes: `keys.is_reserved_id`)."""
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
            if len(payload) <= INLINE_PAYLOAD_MAX:
                data["payload_ref"] = "data:;base64," + b64encode(payload).decode()
            else:
                blob = (blob_digest(payload), payload)
                data["payload_ref"] = f"blob:sha256:{blob[0]}"
        if data.get("request_id") is None:
            data["request_id"] = new_request_id()
        items.append(data)
        blobs.append(blob)
        lines.append(new.line)
    checked = DispatchRequest.all_from_producer(items)
    for request in checked:
        if keys.is_reserved_id(request.request_id):
            raise InvalidRequest(
                f"request_id {request.request_id!r} ends in '~' and digits, which names an "
                "attempt of a batch item (dispatchq makes those): choose another ID"
            )
    return list(zip(checked, blobs, lines, strict=True))


class Enqueuer:
    """Writes requests to Redis: blobs first, then records and messages, in chunks; with
    `min_replicas`, returns only once that many replicas have them too (`receipt`)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        queue: str,
        result_ttl: int,
        blob_ttl: int,
        min_replicas: int = 0,
        replica_timeout: float = 2.0,
    ):
        self.client = client
        self.queue = queue
        self.result_ttl = result_ttl
        self.blob_ttl = blob_ttl
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout

    def enqueue(self, requests: Iterable[NewRequest]) -> list[tuple[str, int]]:
        """(request ID, NEW | AGAIN | SKIPPED | CONFLICT) per request, in order. Validates
        each first.

        A request ID that exists is skipped, unless its earlier run ended without
        dispatching anything: then it is enqueued again (AGAIN). CONFLICT: the ID exists
        and names another request (another job, payload, meta...): skipped too."""
        return self.send(prepare(requests), EACH)  # all checked first: a bad one, no write

    def clashes(self, listed: list[Prepared]) -> list[int]:
        """The positions of the requests whose ID names another request already. Reads
        only: one EXISTS per chunk, and the enqueue script's check where one exists."""
        chunks = [listed[i : i + CHUNK] for i in range(0, len(listed), CHUNK)]
        pipe = self.client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.exists(*(keys.request(request.request_id) for request, _, _ in chunk))
        existing = [n for n, count in enumerate(pipe.execute()) if count]
        found: list[int] = []
        if existing:
            for n in existing:
                flags = self.send(chunks[n], CHECK)
                found += [n * CHUNK + i for i, (_, flag) in enumerate(flags) if flag == CONFLICT]
        return found

    def send(self, listed: list[Prepared], mode: str) -> list[tuple[str, int]]:
        """Enqueue prepared requests in chunks, in a mode of the script (EACH, ALL, CHECK)."""
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
                count, data, ids = self._commands(chunk, sha, mode)
                conn.send_packed_command([data])
                sent.append((count, ids))
                if len(sent) > 1:
                    out += self._answers(conn, *sent.popleft())
            while sent:
                out += self._answers(conn, *sent.popleft())
            if self.min_replicas and mode != CHECK:
                self._receipt(conn, len(out))
        except BaseException:
            conn.disconnect()  # answers may be left unread: the connection is not reusable
            raise
        finally:
            pool.release(conn)
        return out

    def _receipt(self, conn: Any, count: int) -> None:
        """Wait until `min_replicas` replicas have everything this primary took so far (the
        requests just written among it), or raise NotReplicated. One round trip:
        `keys.RECEIPT` says why the PUBLISH."""
        timeout_ms = b"%d" % max(1, round(self.replica_timeout * 1000))
        conn.send_packed_command(
            [packed([b"PUBLISH", keys.RECEIPT.encode(), b""]),
             packed([b"WAIT", b"%d" % self.min_replicas, timeout_ms])]
        )  # fmt: skip
        conn.read_response()
        confirmed = int(conn.read_response())
        if confirmed < self.min_replicas:
            raise not_replicated(self, count, confirmed)

    def _commands(
        self, chunk: list[Prepared], sha: str, mode: str
    ) -> tuple[int, bytes, list[str]]:
        """The chunk's commands packed (`packed`): how many, their bytes, its request IDs."""
        commands, ids = chunk_commands(self, chunk, sha, mode)
        return len(commands), b"".join(map(packed, commands)), ids

    @staticmethod
    def _answers(conn: Any, count: int, ids: list[str]) -> list[tuple[str, int]]:
        """Read a chunk's answers (the script's flags come last); an error answer raises."""
        answers = [conn.read_response() for _ in range(count)]
        flags: list[int] = answers[-1]
        return list(zip(ids, flags, strict=True))


class Destination(Protocol):
    """Where and how long requests are written: an `Enqueuer` or its asyncio twin."""

    queue: str
    result_ttl: int
    blob_ttl: int
    min_replicas: int
    replica_timeout: float


def chunk_commands(
    to: Destination, chunk: list[Prepared], sha: str, mode: str
) -> tuple[list[list[bytes]], list[str]]:
    """A chunk's commands (its blob writes, then its one script call: the script's flags
    are the last answer) and its request IDs."""
    commands: list[list[bytes]] = []
    stored: set[str] = set()
    argv = [b"EVALSHA", sha.encode(), b"1", to.queue.encode(), b"%d" % to.result_ttl,
            mode.encode()]  # fmt: skip
    argv += [prefix.encode() for prefix in (*_PREFIXES, *keys.lane_keys(to.queue))]
    ids: list[str] = []
    blob_ttl = b"%d" % to.blob_ttl
    for request, blob, line in chunk:
        ids.append(request.request_id)
        if blob is not None and blob[0] not in stored and mode != CHECK:
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
        argv.append(celery_message(message, to.queue).encode())
    commands.append(argv)
    return commands, ids


def not_replicated(to: Destination, count: int, confirmed: int) -> NotReplicated:
    """The error of a write fewer replicas than `min_replicas` confirmed in time."""
    return NotReplicated(
        f"{count} request(s) are on the Redis primary, but {confirmed} of the "
        f"{to.min_replicas} replicas required (DISPATCHQ_REDIS_MIN_REPLICAS) "
        f"confirmed them within {to.replica_timeout:g} s: a failover now could "
        "lose them. Enqueue them again with the same request IDs (nothing is "
        "doubled) once the replicas are back"
    )
