"""`DispatchRequest`: one model from the producer's input to the message and back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatchq.core.outcome import Outcome
from dispatchq.core.request import PAYLOAD_LIMIT, REQUEST_ID_MAX, DispatchRequest
from dispatchq.errors import ERROR_TEXT_MAX, InvalidMessage, InvalidRequest, NomadError


def test_the_message_is_compact_and_parses_back_to_the_same_request() -> None:
    request = DispatchRequest(
        request_id="r-1", job_id="video", meta={"profile": "hd"}, batch_id="b", priority=0
    )
    body = request.to_message()
    assert body == {"v": 1, "request_id": "r-1", "job_id": "video",
                    "meta": {"profile": "hd"}, "batch_id": "b"}  # fmt: skip
    assert list(body) == ["v", "request_id", "job_id", "meta", "batch_id"]
    assert DispatchRequest.from_message((), body, "r-1") == request


def test_every_field_travels() -> None:
    request = DispatchRequest(
        request_id="r-1", job_id="video", payload_ref="data:,x", meta={"k": "v"},
        namespace="media", detach=True, id_prefix_template="t", priority=70, batch_id="b",
        notify_url="https://hooks.example/done",
        tenant="t1",
        until="finished", wait_timeout=90.5,
    )  # fmt: skip
    assert set(request.to_message()) == set(DispatchRequest.model_fields)
    assert DispatchRequest.from_message((), request.to_message()) == request


def test_until_scheduled_is_the_version_1_message_it_always_was() -> None:
    plain = DispatchRequest(request_id="r-1", job_id="video")
    explicit = DispatchRequest(request_id="r-1", job_id="video", until="scheduled")
    assert plain.to_message() == explicit.to_message() == {
        "v": 1, "request_id": "r-1", "job_id": "video"
    }
    assert not plain.follows_child
    finished = DispatchRequest.from_message((), {**plain.to_message(), "until": "finished"})
    assert finished.follows_child and finished.to_message()["until"] == "finished"


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"until": "forever"}, "until must be 'scheduled' or 'finished'"),
        ({"wait_timeout": 0}, "wait_timeout must be a number of seconds above 0"),
        ({"wait_timeout": "5m"}, "wait_timeout must be a number of seconds above 0"),
    ],
)
def test_until_and_wait_timeout_are_refused_clearly(fields: dict[str, object], text: str) -> None:
    with pytest.raises(InvalidRequest, match=text):
        DispatchRequest.from_producer({"job_id": "video", "request_id": "r", **fields})
    with pytest.raises(InvalidMessage, match="until|wait_timeout"):
        DispatchRequest.from_message((), {"v": 1, "job_id": "video", "request_id": "r", **fields})


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"job_id": " "}, "job ID must be a non-empty string"),
        ({"job_id": "a\x01"}, "job_id must not contain control characters"),
        ({"batch_id": "b\x1f"}, "batch_id must not contain control characters"),
        ({"request_id": "r" * (REQUEST_ID_MAX + 1)}, "request_id must be a string of 1 to"),
        ({"meta": {"k": 1}}, "meta value for 'k' must be a string, not int"),
        ({"meta": [("k", "v")]}, "meta must be a mapping, not list"),
        ({"meta": {b"k": "v"}}, "meta keys must be non-empty strings, got b'k'"),
        ({"detach": "yes"}, "detach must be true or false, not str"),
        ({"namespace": 3}, "namespace must be a string, not int"),
        ({"priority": 101}, "priority must be an integer from 0 (inherit) to 100"),
        ({"priority": True}, "priority must be an integer from 0 (inherit) to 100"),
        ({"payload_ref": ""}, "payload_ref must be a non-empty string"),
        ({"notify_url": "ftp://h/x"}, "notify_url must be an http:// or https:// URL"),
        ({"notify_url": "https://h/a b"}, "notify_url must be an http:// or https:// URL"),
    ],
)
def test_the_producer_names_the_problem(fields: dict[str, Any], text: str) -> None:
    with pytest.raises(InvalidRequest, match=text.replace("(", r"\(").replace(")", r"\)")):
        DispatchRequest.from_producer({"request_id": "r-1", "job_id": "video", **fields})


def test_the_producer_takes_any_mapping_and_no_meta() -> None:
    from types import MappingProxyType

    proxy = MappingProxyType({"k": "v"})
    assert DispatchRequest.from_producer({"request_id": "r", "job_id": "j", "meta": proxy}).meta
    no_meta = DispatchRequest.from_producer({"request_id": "r", "job_id": "j", "meta": None})
    assert no_meta.meta == {}


def test_the_worker_refuses_the_same_with_the_field_named() -> None:
    with pytest.raises(InvalidMessage, match="invalid dispatch request: job_id: String should"):
        DispatchRequest.from_message((), {"request_id": "r-1", "job_id": " "})
    with pytest.raises(InvalidMessage, match="differs from request_id"):
        DispatchRequest.from_message((), {"request_id": "r-1", "job_id": "j"}, "r-2")


def test_one_payload_limit() -> None:
    from dispatchq.nomad import client as nomad
    from dispatchq.payload import resolve as payload

    assert PAYLOAD_LIMIT == 16 * 1024
    assert payload.PAYLOAD_LIMIT is PAYLOAD_LIMIT
    assert not hasattr(nomad, "MAX_PAYLOAD_BYTES")


@pytest.mark.parametrize(
    ("meta", "text"),
    [
        ({str(n): "v" for n in range(65)}, "meta has more than 64 keys"),
        ({"k" * 129: "v"}, "meta keys must be at most 128 characters"),
        ({"k": "v" * 16_384}, "meta holds more than 16384 characters"),
    ],
)
def test_meta_is_bounded_for_producers_and_raw_messages(meta: dict[str, str], text: str) -> None:
    with pytest.raises(InvalidRequest, match=text):
        DispatchRequest.from_producer({"job_id": "j", "request_id": "r", "meta": meta})
    with pytest.raises(InvalidMessage) as raised:
        DispatchRequest.from_message((), {"job_id": "j", "request_id": "r", "meta": meta})
    assert len(str(raised.value)) < 400  # the reason does not repeat a long key


def test_meta_at_its_bounds_is_accepted() -> None:
    meta = {f"{n:0128d}": "" for n in range(64)}
    meta[f"{0:0128d}"] = "v" * (16_384 - 64 * 128)
    request = DispatchRequest.from_producer({"job_id": "j", "request_id": "r", "meta": meta})
    assert len(request.meta) == 64


def test_a_long_error_text_is_cut_and_says_so() -> None:
    text = "Dispatch did not provide allowed meta keys: [" + " k" * 20_000 + "]"
    err = NomadError(text, status=400)
    assert len(err.message) < ERROR_TEXT_MAX + 60
    assert err.message.endswith(f"[{len(text) - ERROR_TEXT_MAX} more characters cut]")
    stored = Outcome.failed("j", kind="validation", message=text).to_stored()
    assert len(json.dumps(stored)) < 4 * ERROR_TEXT_MAX  # the text, in the summary and its row
