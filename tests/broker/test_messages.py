from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection

from dispatchq.store.messages import celery_message, compact_json
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


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(value=values)
def test_the_body_is_encoded_as_the_json_module_encodes_it(value: Any) -> None:
    assert compact_json(value) == json.dumps(value, separators=(",", ":")).encode()


def test_escapes_are_the_json_modules() -> None:
    request = message_body("r-1", "job", meta={"k": "\x00\x1f\x7f\"\\/\n\t\u2028é😀"})
    assert compact_json(request) == json.dumps(request, separators=(",", ":")).encode()
