"""Completion events: one JSON event per request that ends and per batch that finishes.

The record's done script (`lua/done.lua`, the one place an outcome is stored) appends them
to a Redis stream (`keys.EVENTS` unless the `events_stream` setting names another) in the
same step as the outcome: `_events.lua`. The stream is trimmed to about `events_maxlen`
entries, never past an entry the notifier's group has not read and acknowledged (so a
webhook is never trimmed away while the notifier is stopped: the stream grows past the
cap until it catches up); every process that appends creates that group (`open_stream`). A
consumer in any language follows the stream with `XREADGROUP` and consumer groups; each
entry has the field `event` (the JSON below, `completion.schema.json`) and, when the
request or batch named one, `notify_url` (read by the notifier, `dispatchq.notifier.webhooks`).

Event, version 1 (`v`): `type` is `request.finished` or `batch.finished`; `event_id` is
stable for de-duplication: `request:<request id>:<attempt>` (attempt: the how-manieth end
of this request's record: a replayed dead letter ends again as attempt 2) or
`batch:<batch id>` (its first finish; `batch:<batch id>~<n>` for the n-th, after
`batch retry` re-opened it). A request event carries `request_id`,
`batch_id`, `job_id`, `status`, `exit_code`, `error_kind`, `at` and `summary` (the
outcome's summary: its stored form without the transcript). A batch event carries
`batch_id`, `job_id`, `status` (succeeded: every item exited 0; failed; cancelled),
`total`, `done`, `succeeded`, `failed`, `exit_codes` (count per exit code) and `at`.
A batch finishes when its last item ends: `done` reaches `total`. A cancelled batch
finishes the same way, once every item has ended (its queued items end as cancelled
when a worker takes them), so its event says what did run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import orjson
import redis

from dispatchq.store import keys, runtimes

EVENT_VERSION = 1
"""The `v` field of an event; bumped only with an incompatible change."""
REQUEST_FINISHED = "request.finished"
BATCH_FINISHED = "batch.finished"

COMPLETION_SCHEMA: dict[str, Any] = json.loads(
    (files("dispatchq.store") / "completion.schema.json").read_text(encoding="utf-8")
)


@dataclass(frozen=True)
class EventStream:
    """Where completion events go: the stream key ("" for none) and its approximate cap."""

    key: str = keys.EVENTS
    maxlen: int = keys.EVENTS_MAXLEN

    @property
    def on(self) -> bool:
        return bool(self.key)


def open_stream(client: redis.Redis, stream: EventStream) -> None:
    """Create the stream and the notifier's group, reading from its start, unless they
    exist: from then on no entry is trimmed before that group has read and acknowledged it
    (`_events.lua`), whether or not a notifier runs yet. Called by each process that
    appends events (worker, tracker) and by the notifier."""
    if not stream.on:
        return
    try:
        client.xgroup_create(stream.key, keys.NOTIFIER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def request_event_args(
    stream: EventStream,
    request_id: str,
    batch_id: str | None,
    stored: dict[str, Any],
    notify_url: str | None = None,
) -> list[str | int]:
    """The done script's event arguments (ARGV 10 on) for a request ending with the stored
    outcome `stored` (`Outcome.to_stored`): the event's JSON after the members the script
    writes itself (`v`, `type`, `event_id`, `attempt`)."""
    if not stream.on:
        return []
    summary = {k: v for k, v in stored.items() if k not in ("v", "events")}
    body = orjson.dumps(
        {
            "request_id": request_id,
            "batch_id": batch_id or None,
            "job_id": stored.get("job_id") or None,
            "status": stored.get("status"),
            "exit_code": stored.get("exit_code"),
            "error_kind": stored.get("error_kind"),
            "at": round(time.time(), 6),
            "summary": summary,
        }
    )
    escaped = orjson.dumps(request_id).decode()[1:-1]
    return [
        batch_id or "",
        stream.key,
        stream.maxlen,
        escaped,
        body.decode()[1:],
        notify_url or "",
    ]


def stored_in_meta(value: bytes | str) -> dict[str, Any]:
    """The stored outcome inside a result value (Celery's meta: its `result`), for the
    completion event of a followed child's end; {} when it is not one."""
    try:
        meta = json.loads(value)
    except ValueError:
        return {}
    stored = meta.get("result") if isinstance(meta, dict) else None
    return stored if isinstance(stored, dict) else {}


def error_entry(request_id: str, exit_code: int, error: str) -> str:
    """A batch's error list entry (`keys.batch_errors`), "" for no error."""
    if not error:
        return ""
    return json.dumps({"request_id": request_id, "exit_code": exit_code, "error": error})


def done_args(
    events: EventStream,
    request_id: str,
    batch_id: str | None,
    outcome: dict[str, Any] | None,
    notify_url: str | None,
) -> list[Any]:
    """The done script's ARGV 11-20: the completion event's (empty when events are off or
    there is no outcome), then the retry set, the request ID and the batch's items hash
    (automatic retries), and the batch's run-time counter to add one to
    (`dispatchq.store.runtimes`, "" for none)."""
    args: list[Any] = []
    if outcome is not None:
        args = request_event_args(events, request_id, batch_id, outcome, notify_url)
    if not args:
        args = [batch_id or "", "", "", "", "", ""]
    items = keys.batch_items(batch_id) if batch_id else ""
    run_time = runtimes.field_of(outcome) if batch_id else ""
    return [*args, keys.RETRY_DUE, request_id, items, run_time]


def parse_entry(fields: Any) -> tuple[dict[str, Any], str]:
    """A stream entry's event (parsed) and notify_url ("" when none)."""
    data = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    event: dict[str, Any] = json.loads(data.get("event", "{}"))
    return event, data.get("notify_url", "")
