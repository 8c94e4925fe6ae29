"""Completion events: appended by the done script with the outcome, once per ending and
once per finished batch, in the documented format (`dispatchq/store/completion.schema.json`), and
readable by any Redis client (here `redis-cli`, no dispatchq code)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from dispatchq.config.logging import MASK
from dispatchq.config.settings import Settings
from dispatchq.core.outcome import Outcome
from dispatchq.core.request import JOB_ID_MAX, NOTIFY_URL_MAX, REQUEST_ID_MAX
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import AGAIN, Enqueuer, NewRequest
from dispatchq.store import keys
from dispatchq.store.batches import BatchStore
from dispatchq.store.completion import COMPLETION_SCHEMA, EventStream, open_stream, parse_entry
from dispatchq.store.dlq import DeadLetter, replay
from dispatchq.store.dlq import entries as dlq_entries
from dispatchq.store.records import RecordStore, StoredResult
from tests.support.schema_tables import completion_tables

VALIDATOR = jsonschema.Draft202012Validator(COMPLETION_SCHEMA)
FORMATS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def events(client: redis.Redis, stream: str = keys.EVENTS) -> list[tuple[dict[str, Any], str]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
    return [parse_entry(fields) for _, fields in entries]


def stored(exit_code: int) -> dict[str, Any]:
    if exit_code == 0:
        return {"v": 1, "status": "complete", "exit_code": 0, "job_id": "video",
                "dispatched_job_id": "video/dispatch-1", "timings": [1.0, 0.1, 2.0],
                "events": []}  # fmt: skip
    return Outcome.failed("video", kind="nomad_error", message="boom").to_stored()


def finish(store: RecordStore, rid: str, code: int, batch: str | None = None, **kw: Any) -> bool:
    result = StoredResult(keys.celery_result(rid), "{}", 60)
    error = "boom" if code else ""
    return store.mark_done(rid, code, batch, error, result, outcome=stored(code), **kw)


def test_a_request_ending_appends_one_event_in_the_documented_format(
    redis_client: redis.Redis,
) -> None:
    store = RecordStore(redis_client, 60)
    assert finish(store, 'r-"1"\\', 0, notify_url="https://hooks.example/x")
    finish(store, 'r-"1"\\', 1)  # a late duplicate finish: nothing stored, no event
    [(event, url)] = events(redis_client)
    VALIDATOR.validate(event)
    assert url == "https://hooks.example/x"
    assert event["event_id"] == 'request:r-"1"\\:1'
    assert (event["request_id"], event["status"], event["exit_code"]) == ('r-"1"\\', "complete", 0)
    assert event["summary"]["dispatched_job_id"] == "video/dispatch-1"
    assert "events" not in event["summary"]


def test_a_batch_finishing_appends_its_event_once_after_its_last_item(
    redis_client: redis.Redis,
) -> None:
    store = RecordStore(redis_client, 60)
    pipe = redis_client.pipeline()
    BatchStore(redis_client, 60).create(pipe, "b-1", "video", namespace=None, total=3)
    pipe.hset(keys.batch("b-1"), "notify_url", "https://hooks.example/b")
    pipe.execute()
    finish(store, "r-1", 0, "b-1")
    finish(store, "r-2", 2, "b-1")
    assert [e["type"] for e, _ in events(redis_client)] == ["request.finished"] * 2
    finish(store, "r-3", 1, "b-1")
    finish(store, "r-3", 1, "b-1")
    got = events(redis_client)
    assert [e["event_id"] for e, _ in got] == [
        "request:r-1:1", "request:r-2:1", "request:r-3:1", "batch:b-1"
    ]  # fmt: skip
    for event, _ in got:
        VALIDATOR.validate(event)
    batch, url = got[-1]
    assert url == "https://hooks.example/b"
    assert (batch["status"], batch["total"], batch["succeeded"], batch["failed"]) == (
        "failed", 3, 1, 2
    )  # fmt: skip
    assert batch["exit_codes"] == {"0": 1, "1": 1, "2": 1}
    assert [e["batch_id"] for e, _ in got[:3]] == ["b-1"] * 3


def test_a_cancelled_batch_and_a_successful_one_say_so(redis_client: redis.Redis) -> None:
    store = RecordStore(redis_client, 60)
    batches = BatchStore(redis_client, 60)
    pipe = redis_client.pipeline()
    batches.create(pipe, "ok", "video", namespace=None, total=1)
    batches.create(pipe, "gone", "video", namespace=None, total=2)
    pipe.execute()
    batches.cancel("gone")
    finish(store, "a", 0, "ok")
    finish(store, "b", 0, "gone")
    finish(store, "c", 1, "gone")  # ended as cancelled when a worker took it
    finished = {e["batch_id"]: e for e, _ in events(redis_client) if e["type"] == "batch.finished"}
    assert finished["ok"]["status"] == "succeeded"
    assert finished["gone"]["status"] == "cancelled"


def test_a_replayed_request_ends_again_as_its_next_attempt(redis_client: redis.Redis) -> None:
    store = RecordStore(redis_client, 60)
    redis_client.hset(keys.request("r-1"), "state", "queued")
    finish(store, "r-1", 1)
    entry = DeadLetter(reason="cap", kind="delivery_cap", task_id="r-1", queue="q", message="m")
    redis_client.rpush(keys.DLQ, json.dumps(entry.to_json()))
    [stored_entry] = dlq_entries(redis_client)
    replay(redis_client, stored_entry, 60)
    finish(store, "r-1", 0)
    assert [e["event_id"] for e, _ in events(redis_client)] == ["request:r-1:1", "request:r-1:2"]


def test_the_stream_is_configurable_capped_and_can_be_off(redis_client: redis.Redis) -> None:
    off = RecordStore(redis_client, 60, EventStream(""))
    assert finish(off, "r-0", 0)
    assert not redis_client.exists(keys.EVENTS)
    mine = RecordStore(redis_client, 60, EventStream("my:events", 1_000))
    for n in range(3_000):
        finish(mine, f"r-{n}", 0)
    length = int(redis_client.xlen("my:events"))
    assert 1_000 <= length < 3_000  # MAXLEN ~ trims whole nodes
    assert not redis_client.exists(keys.EVENTS)


def test_any_client_follows_the_stream_with_a_consumer_group(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")

    def run(*args: str) -> str:
        done = subprocess.run(
            [cli, "-p", str(redis_server.port), "--no-raw", *args],
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
        return done.stdout

    run("XGROUP", "CREATE", keys.EVENTS, "mine", "$", "MKSTREAM")
    finish(RecordStore(redis_client, 60), "r-cli", 2)
    out = run("XREADGROUP", "GROUP", "mine", "c1", "COUNT", "10", "STREAMS", keys.EVENTS, ">")
    assert "request:r-cli:1" in out
    entry_id = out.split('"')[3]  # 1) 1) "<stream>" 2) 1) 1) "<entry id>" ...
    assert run("XACK", keys.EVENTS, "mine", entry_id).strip() == "(integer) 1"
    assert "(empty" in run("XPENDING", keys.EVENTS, "mine", "-", "+", "10")


def test_the_readme_documents_the_event_format() -> None:
    text = FORMATS.read_text(encoding="utf-8")
    for table in completion_tables(COMPLETION_SCHEMA).values():
        assert table in text


def test_python_callers_iterate_over_the_events_and_ack_them(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    store = RecordStore(redis_client, 60)
    for n in range(3):
        finish(store, f"r-{n}", n % 2)
    with Producer(Settings(redis_url=redis_server.url)) as producer:
        seen = []
        for event in producer.events(group="py", consumer="c1", start="0", block=0.1):
            seen.append(event["event_id"])
            if len(seen) == 3:
                break  # the third is not acknowledged: its handling did not finish
    assert seen == ["request:r-0:1", "request:r-1:1", "request:r-2:1"]
    info: Any = redis_client.xpending(keys.EVENTS, "py")
    assert info["pending"] == 1


def test_a_request_enqueued_again_ends_as_its_next_attempt(redis_client: redis.Redis) -> None:
    enqueuer = Enqueuer(redis_client, queue="q", result_ttl=60, blob_ttl=60)
    [(rid, _)] = enqueuer.enqueue([NewRequest("video", request_id="r-again")])
    finish(RecordStore(redis_client, 60), rid, 1)  # ended without dispatching anything
    assert enqueuer.enqueue([NewRequest("video", request_id="r-again")]) == [(rid, AGAIN)]
    finish(RecordStore(redis_client, 60), rid, 0)
    assert [e["event_id"] for e, _ in events(redis_client)] == [
        "request:r-again:1", "request:r-again:2"
    ]  # fmt: skip


def test_the_webhook_secret_is_masked_and_registered() -> None:
    settings = Settings(notify_secret="s3cret-value")
    assert settings.masked()["notify_secret"] == MASK
    assert "s3cret-value" in settings.secrets
    assert Settings().masked()["notify_secret"] == ""


def test_a_followed_childs_end_appends_its_event(redis_client: redis.Redis) -> None:
    store = RecordStore(redis_client, 60)
    meta = json.dumps({"status": "SUCCESS", "result": stored(1)})
    result = StoredResult(keys.celery_result("r-f"), meta, 60)
    assert store.finish_followed("r-f", 1, None, "boom", result)
    assert not store.finish_followed("r-f", 1, None, "boom", result)  # first finish wins
    [(event, url)] = events(redis_client)
    VALIDATOR.validate(event)
    assert (event["event_id"], event["exit_code"], url) == ("request:r-f:1", 1, "")


def test_no_event_is_trimmed_before_the_notifier_group_acknowledged_it(
    redis_client: redis.Redis,
) -> None:
    """1,500 ends with a cap of 1,000 and the notifier stopped: all 1,500 stay; once the
    group has read and acknowledged them, the stream is trimmed back to about the cap."""
    stream = EventStream("dq:events", maxlen=1_000)
    open_stream(redis_client, stream)
    store = RecordStore(redis_client, 60, stream)
    for n in range(1_500):
        finish(store, f"r{n}", 0, notify_url="https://hooks.example/x")
    assert redis_client.xlen(stream.key) == 1_500
    read: Any = redis_client.xreadgroup(keys.NOTIFIER_GROUP, "c", {stream.key: ">"}, count=1_200)
    ids = [entry_id for entry_id, _ in read[0][1]]
    redis_client.xack(stream.key, keys.NOTIFIER_GROUP, *ids[:1_100])  # 100 read, pending
    for n in range(1_500, 1_600):
        finish(store, f"r{n}", 0)
    # Trimmed: entries the group acknowledged and beyond the cap; kept: every pending one.
    assert redis_client.xlen(stream.key) == 1_600 - 600
    first = redis_client.xrange(stream.key, count=1)[0][0]  # type: ignore[index]
    assert first == ids[600]
    redis_client.xack(stream.key, keys.NOTIFIER_GROUP, *ids[1_100:])
    for n in range(1_600, 1_700):
        finish(store, f"r{n}", 0)
    assert redis_client.xlen(stream.key) == 1_000  # the cap again: what is left was read


def test_without_the_notifier_group_the_stream_keeps_its_cap(redis_client: redis.Redis) -> None:
    stream = EventStream("dq:events2", maxlen=1_000)
    store = RecordStore(redis_client, 60, stream)
    for n in range(1_500):
        finish(store, f"r{n}", 0)
    assert redis_client.xlen(stream.key) == 1_000


def test_an_event_and_its_webhook_body_are_bounded(redis_client: redis.Redis) -> None:
    """Every field a producer or Nomad can make long is bounded: the longest IDs, job ID
    and notify_url, and an error text past its cut, give an event under 8 KiB."""
    rid, batch = "r" * REQUEST_ID_MAX, "b" * REQUEST_ID_MAX
    outcome = Outcome.failed("j" * JOB_ID_MAX, kind="validation", message="x" * 1_000_000)
    url = "https://hooks.example/" + "u" * (NOTIFY_URL_MAX - 22)
    stream = EventStream("dq:bounded")
    RecordStore(redis_client, 60, stream).mark_done(
        rid, 1, batch, "boom", None, outcome=outcome.to_stored(), notify_url=url
    )
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(stream.key)  # type: ignore[assignment]
    assert len(entries[0][1][b"event"]) < 8 * 1024
    assert len(json.dumps(outcome.to_stored())) < 8 * 1024  # the outcome too
