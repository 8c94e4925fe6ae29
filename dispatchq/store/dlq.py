"""The dead-letter list: queue messages no retry can fix, each kept with the reason.

Workers append entries (`dispatchq.broker.deadletter`, `dispatchq.broker.poison`); `dispatchq dlq`
lists,
replays and purges them. An entry is one JSON object per element of the Redis list
`keys.DLQ`:

| field     | meaning                                                                  |
|-----------|--------------------------------------------------------------------------|
| `reason`  | what is wrong, in words                                                  |
| `kind`    | one of `KINDS` below                                                     |
| `at`      | Unix time it was dead-lettered                                           |
| `task_id` | the message's task ID (the request ID), when it had one                  |
| `task`    | the task name the message asked for, when it had one                     |
| `queue`   | the queue it came from                                                   |
| `message` | the raw queue message (the kombu envelope), kept for `replay`            |
| `details` | anything else worth seeing (e.g. the arguments that failed validation)   |

Only `REPLAYABLE` kinds are replayed: the others would fail the same way again.

The list is bounded in entries and in bytes, whatever arrives: it keeps the newest
`MAX_ENTRIES` entries (`LTRIM` on every append), and each entry is at most
`MAX_ENTRY_BYTES` of JSON (`encode`): the raw message is cut to `MAX_MESSAGE_CHARS` (a cut
message is marked `...[truncated]` and cannot be replayed), `details` to
`MAX_DETAILS_CHARS` of JSON, the reason and the IDs to a few hundred characters. So the
list never holds more than MAX_ENTRIES x MAX_ENTRY_BYTES (32 MiB) of entries.

The delivery cap lives here too: each delivery of a request is counted in its request
record (`DELIVERIES`: by the worker's fetch itself where it can, `dispatchq.broker.fetch`, else by
the
consumer with `count_delivery`), and a request delivered more than `max_deliveries` times
besides its own retries (a message that keeps killing its worker) is dead-lettered.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from dispatchq.errors import DeliveryCapExceeded as DeliveryCapExceeded
from dispatchq.store import keys
from dispatchq.store.records import DELIVERIES as DELIVERIES
from dispatchq.store.scripts import SCRIPTS

KINDS = {
    "undecodable": "the queue item is not JSON",
    "malformed": "JSON, but not a Celery protocol-2 task message",
    "content": "the body cannot be decoded (bad JSON, or a refused type such as pickle)",
    "unknown_task": "a task name other than dispatchq's own: never run on a worker",
    "invalid_task": "Celery refused the task message (bad eta, expires, ...), or its "
    "eta/countdown lies further ahead than dispatchq's retries go",
    "invalid_request": "the arguments are not a valid dispatch request",
    "delivery_cap": "delivered too many times: it may be killing its workers",
    "store": "Redis refused a command of the message or its request (a key of another type, "
    "a script error): taken out of the queue so that it cannot stop a worker",
    "webhook": "a completion event the notifier could not deliver to its notify_url "
    "(`message`: the event; `details`: the URL, attempts, stream entry)",
}
REPLAYABLE = frozenset({"delivery_cap", "store"})

MAX_ENTRIES = 1_000
"""The list keeps the newest entries only, so a flood of bad messages cannot fill Redis."""
MAX_ENTRY_BYTES = 32 * 1024
"""The most bytes of one stored entry (its JSON, UTF-8)."""
MAX_MESSAGE_CHARS = 16 * 1024
"""A raw message longer than this is kept truncated (and cannot be replayed)."""
MAX_DETAILS_CHARS = 4 * 1024
"""`details` whose JSON is longer are kept as that JSON, truncated, under `truncated`."""
_MAX_FIELD_CHARS = 512
"""The reason, task ID, task name and queue are cut to this."""
_TRUNCATED = "...[truncated]"


class NotReplayable(ValueError):
    """An entry that `replay` refuses; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    kind: str
    at: float = field(default_factory=time.time)
    task_id: str | None = None
    task: str | None = None
    queue: str | None = None
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    raw: str = field(default="", compare=False)
    """The stored list element, exactly (what `LREM` needs); not part of the JSON."""

    @property
    def replayable(self) -> bool:
        return (
            self.kind in REPLAYABLE
            and self.message is not None
            and len(self.message) <= MAX_MESSAGE_CHARS
            and not self.message.endswith(_TRUNCATED)
            and bool(self.queue)
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["raw"]
        return data

    @classmethod
    def parse(cls, raw: str) -> DeadLetter:
        """The entry stored as `raw`; a line that is not an entry becomes one that says so."""
        try:
            data = json.loads(raw)
            return cls(
                reason=str(data["reason"]),
                kind=str(data.get("kind", "invalid_request")),
                at=float(data.get("at", 0.0)),
                task_id=_opt_str(data.get("task_id")),
                task=_opt_str(data.get("task")),
                queue=_opt_str(data.get("queue")),
                message=_opt_str(data.get("message")),
                details=data.get("details") if isinstance(data.get("details"), dict) else {},
                raw=raw,
            )
        except (ValueError, TypeError, KeyError):
            return cls(reason="unreadable dead-letter entry", kind="malformed", at=0.0, raw=raw)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + _TRUNCATED


def encode(entry: DeadLetter) -> str:
    """The entry as stored: JSON of at most MAX_ENTRY_BYTES (see the module doc)."""
    data = entry.to_json()
    for name in ("reason", "task_id", "task", "queue"):
        if isinstance(data[name], str):
            data[name] = truncate(data[name], _MAX_FIELD_CHARS)
    details = json.dumps(data["details"], default=repr)
    if len(details) > MAX_DETAILS_CHARS:
        data["details"] = {"truncated": truncate(details, MAX_DETAILS_CHARS)}
    message = data["message"]
    if isinstance(message, str):
        data["message"] = message = truncate(message)
    text = json.dumps(data, default=repr)
    while len(text.encode()) > MAX_ENTRY_BYTES and message:  # escapes can grow it 6-fold
        message = message[: len(message.removesuffix(_TRUNCATED)) // 2]
        data["message"] = message + _TRUNCATED
        text = json.dumps(data, default=repr)
    return text


def append(client: redis.Redis, entry: DeadLetter) -> None:
    """Add `entry` (bounded: `encode`), keep the newest `MAX_ENTRIES`, renew the TTL."""
    pipe = client.pipeline(transaction=False)
    pipe.rpush(keys.DLQ, encode(entry))
    pipe.ltrim(keys.DLQ, -MAX_ENTRIES, -1)
    pipe.expire(keys.DLQ, keys.DLQ_TTL)
    pipe.execute()


def entries(client: redis.Redis) -> list[DeadLetter]:
    """Every entry, oldest first."""
    items: list[bytes] = client.lrange(keys.DLQ, 0, -1)  # type: ignore[assignment]
    return [DeadLetter.parse(item.decode("utf-8", "replace")) for item in items]


def purge(client: redis.Redis) -> int:
    """Delete every entry; returns how many there were."""
    pipe = client.pipeline(transaction=True)
    pipe.llen(keys.DLQ)
    pipe.delete(keys.DLQ)
    count, _ = pipe.execute()
    return int(count)


def replay(client: redis.Redis, entry: DeadLetter, result_ttl: int) -> None:
    """Put the entry's original message back on its queue and drop the entry, atomically
    (`dispatchq/store/lua/replay.lua`: it also un-finishes the request, see there).

    The request starts afresh from its record: the dead-letter outcome and the delivery
    count are cleared, the write-ahead fields are kept (so a request that had dispatched
    resumes instead of dispatching again)."""
    if not entry.replayable:
        raise NotReplayable(
            f"a {entry.kind} dead letter cannot be replayed: it would fail the same way"
            if entry.kind not in REPLAYABLE
            else "this dead letter has no complete original message to replay"
        )
    assert entry.message is not None and entry.queue
    script_keys = [keys.DLQ, entry.queue]
    if entry.task_id:
        script_keys += [keys.celery_result(entry.task_id), keys.request(entry.task_id)]
    args: list[str | int] = [entry.raw, entry.message, result_ttl, keys.batch("")]
    if not client.eval(SCRIPTS["replay"], len(script_keys), *script_keys, *args):
        raise NotReplayable("the entry is no longer in the dead-letter list")


def count_delivery(client: redis.Redis, request_id: str, result_ttl: int) -> int:
    """Count one more delivery of the request's message; returns the total so far."""
    record = keys.request(request_id)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(record, DELIVERIES, 1)
    pipe.expire(record, result_ttl)
    total, _ = pipe.execute()
    return int(total)
