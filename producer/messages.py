"""The queue message: Celery protocol 2, JSON body, as kombu's Redis transport stores it.

This is dispatchq's stable wire format (documented in the README), built here by hand so a
batch of thousands is one pipelined write instead of thousands of `delay()` calls. Any
Celery-speaking client in any language can produce the same message.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from config.celery import TASK_DISPATCH

MESSAGE_VERSION = 1
"""The `v` field of a request; bumped only with an incompatible change."""

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_body(
    request_id: str,
    job_id: str,
    *,
    payload_ref: str | None = None,
    meta: dict[str, str] | None = None,
    namespace: str | None = None,
    detach: bool = False,
    id_prefix_template: str = "",
    priority: int = 0,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """The task's keyword arguments: the dispatch request itself."""
    body: dict[str, Any] = {"v": MESSAGE_VERSION, "request_id": request_id, "job_id": job_id}
    if payload_ref is not None:
        body["payload_ref"] = payload_ref
    if meta:
        body["meta"] = meta
    if namespace:
        body["namespace"] = namespace
    if detach:
        body["detach"] = True
    if id_prefix_template:
        body["id_prefix_template"] = id_prefix_template
    if priority:
        body["priority"] = priority
    if batch_id:
        body["batch_id"] = batch_id
    return body


def celery_message(request: dict[str, Any], queue: str) -> str:
    """The serialized kombu envelope that goes onto the queue list with LPUSH."""
    request_id = request["request_id"]
    body = json.dumps([[], request, _EMBED], separators=(",", ":"))
    envelope = {
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_DISPATCH,
            "id": request_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": request_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": f"{{job_id: {request['job_id']!r}}}",
            "origin": _ORIGIN,
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": request_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, separators=(",", ":"))
