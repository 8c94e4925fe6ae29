from __future__ import annotations

import base64
import json
from typing import Any

from kombu import Connection

from producer.messages import celery_message
from tests.support.requests import message_body


def test_envelope_matches_what_kombu_builds() -> None:
    """The hand-built envelope has the fields, values and types kombu's own has."""
    request = message_body("r-1", 'job "quoted" \\ name', meta={"k": "v"}, batch_id="b")
    ours = json.loads(celery_message(request, "q1"))
    body = base64.b64decode(ours["body"])
    assert json.loads(body) == [
        [],
        request,
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    with Connection("memory://") as conn:
        channel: Any = conn.default_channel  # kombu's virtual channel; untyped there
        kombu_message = channel.prepare_message(
            body,
            priority=0,
            content_type="application/json",
            content_encoding="utf-8",
            headers=ours["headers"],
            properties={"correlation_id": "r-1", "reply_to": "", "delivery_mode": 2},
        )
    assert set(ours) == set(kombu_message)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == "r-1"
    assert ours["headers"]["task"] == "dispatchq.dispatch"
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q1"}
    assert ours["properties"]["body_encoding"] == "base64"
    assert ours["content-type"] == "application/json"


def test_every_message_has_its_own_delivery_tag() -> None:
    request = message_body("r-1", "job")
    first = json.loads(celery_message(request, "q"))["properties"]["delivery_tag"]
    second = json.loads(celery_message(request, "q"))["properties"]["delivery_tag"]
    assert first != second


def test_arguments_are_readable_in_flower() -> None:
    request = message_body("r-1", "video", meta={"profile": "hd"}, payload_ref="data:,x")
    headers = json.loads(celery_message(request, "q"))["headers"]
    assert headers["kwargsrepr"] == (
        "{'job_id': 'video', 'meta': {'profile': 'hd'}, 'payload_ref': 'data:,x'}"
    )
    long = message_body("r-2", "video", meta={"k": "v" * 500})
    assert len(json.loads(celery_message(long, "q"))["headers"]["kwargsrepr"]) == 256
