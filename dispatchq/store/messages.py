"""The queue message: Celery protocol 2, JSON body, as kombu's Redis transport stores it.

This is dispatchq's stable wire format (docs/formats.md): the body's keyword
arguments are `DispatchRequest.to_message()`, the envelope is built here by hand so a
batch of thousands is one pipelined write instead of thousands of `delay()` calls. Any
Celery-speaking client in any language can produce the same message.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import uuid
from typing import Any

import orjson

TASK_DISPATCH = "dispatchq.dispatch"
"""The task name in every queue message; part of the stable message format."""

_ORIGIN_JSON = json.dumps(f"{os.getpid()}@{socket.gethostname()}")
# kombu only needs delivery tags to be unique (they key its unacknowledged set): a random
# prefix per process and a counter are, and cost far less than a uuid4 per message.
_TAG_PREFIX = f"{uuid.uuid4().hex}-"
_tags = itertools.count()
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def new_request_id() -> str:
    return str(uuid.uuid4())


# The envelope as a template: filling in five JSON-escaped values is about twice as fast as
# serializing the whole dict, and the envelope is most of an enqueue's CPU (bench/enqueue).
# tests/broker/test_messages.py checks it against the dict that kombu itself builds.
_ENVELOPE = (
    '{{"body":"{body}","content-encoding":"utf-8","content-type":"application/json",'
    '"headers":{{"lang":"py","task":"' + TASK_DISPATCH + '","id":{rid},"shadow":null,'
    '"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,'
    '"timelimit":[null,null],"root_id":{rid},"parent_id":null,"argsrepr":"()",'
    '"kwargsrepr":{kwargsrepr},"origin":{origin},"ignore_result":false}},'
    '"properties":{{"correlation_id":{rid},"reply_to":"","delivery_mode":2,'
    '"delivery_info":{{"exchange":"","routing_key":{queue}}},"priority":0,'
    '"body_encoding":"base64","delivery_tag":"{tag}"}}}}'
)
_EMBED_JSON = json.dumps(_EMBED, separators=(",", ":")).encode()


_SHOWN = ("job_id", "meta", "payload_ref", "namespace", "batch_id")
KWARGSREPR_MAX = 256


def _readable(request: dict[str, Any]) -> str:
    """What Flower and `celery inspect` show as the task's arguments: the request's
    fields a person looks for, capped (the repr of a dict of them, built as text)."""
    shown = "{" + ", ".join(f"{name!r}: {request[name]!r}" for name in _SHOWN if name in request)
    shown += "}"
    return shown if len(shown) <= KWARGSREPR_MAX else shown[: KWARGSREPR_MAX - 3] + "..."


def compact_json(value: Any) -> bytes:
    """`json.dumps(value, separators=(",", ":"))`, byte for byte, encoded, for a request's
    values (strings, integers, booleans, None, lists and objects of them; no floats): by
    orjson, in a twentieth of the time, where that is the same, which is wherever its
    output is printable ASCII (both escape the same characters the same way; the json
    module also escapes non-ASCII, and DEL, 0x7f, which orjson writes as it is).
    tests/broker/test_messages.py checks it."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # what orjson refuses (integers beyond 64 bits, say)
        encoded = b"\x80"
    if encoded.isascii() and b"\x7f" not in encoded:
        return encoded
    return json.dumps(value, separators=(",", ":")).encode()


def celery_message(request: dict[str, Any], queue: str) -> str:
    """The serialized kombu envelope that goes onto the queue list with LPUSH."""
    body = b"[[]," + compact_json(request) + b"," + _EMBED_JSON + b"]"
    return _ENVELOPE.format(
        body=base64.b64encode(body).decode("ascii"),
        rid=json.dumps(request["request_id"]),
        kwargsrepr=json.dumps(_readable(request)),
        origin=_ORIGIN_JSON,
        queue=json.dumps(queue),
        tag=f"{_TAG_PREFIX}{next(_tags)}",
    )
