"""Webhook status: how the POST of a completion event to its `notify_url` went, kept
beside what it is about, for the dashboard and `batch status`.

The notifier (`dispatchq.notifier.webhooks`) writes the field `webhook` of the batch's hash
(a `batch.finished` event) or of the request's record (`request.finished`) after each try
that settles something: `delivered`, `retrying` (with the last error), or `dead-lettered`
(with the reason). A JSON object: `state`, `attempts`, `at` (Unix time), `error` and
`event_id`. One script call per try; nothing is written for a hash that has expired.
The URL itself is never written here (it may hold a secret).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from dispatchq.store import keys
from dispatchq.store.scripts import SCRIPTS

FIELD = "webhook"
"""The field, in the request's record or the batch's hash (`lua/webhook_status.lua`)."""
DELIVERED = "delivered"
RETRYING = "retrying"
DEAD = "dead-lettered"


def record(
    client: redis.Redis,
    event: dict[str, Any],
    state: str,
    attempts: int,
    error: str = "",
) -> None:
    """Keep how the webhook of `event` (a completion event) went, on what it is about."""
    if event.get("type") == "batch.finished" and event.get("batch_id"):
        key = keys.batch(str(event["batch_id"]))
    elif event.get("request_id"):
        key = keys.request(str(event["request_id"]))
    else:
        return
    value = {"state": state, "attempts": attempts, "at": round(time.time(), 3),
             "error": error[:300], "event_id": event.get("event_id", "")}  # fmt: skip
    client.eval(SCRIPTS["webhook_status"], 1, key, json.dumps(value))


def parse(raw: str) -> dict[str, Any]:
    """The stored delivery, {} when none (or unreadable)."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
