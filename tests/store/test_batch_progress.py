"""Batch progress by state, `batch retry` and `--max-attempts`, on a real redis-server: the
producer's enqueue and the record's scripts as the worker and the tracker run them."""

from __future__ import annotations

import json
import threading
from typing import Any, cast

import pytest
import redis

from dispatchq.core.outcome import Outcome
from dispatchq.producer.api import check_max_attempts
from dispatchq.producer.batch import BatchPlan, BatchSubmitter, request_id_for, stream_results
from dispatchq.producer.batch_input import BatchItem
from dispatchq.producer.enqueue import Enqueuer, InvalidRequest
from dispatchq.store import keys
from dispatchq.store.batches import BatchStatus, BatchStore
from dispatchq.store.completion import parse_entry
from dispatchq.store.records import RecordStore, RequestState, StoredResult
from dispatchq.store.retries import BatchRetrier

QUEUE = "q-progress"
TTL = 600


@pytest.fixture
def store(redis_client: redis.Redis) -> RecordStore:
    return RecordStore(redis_client, TTL)


def submit(client: redis.Redis, batch_id: str, n: int, max_attempts: int | None = None) -> None:
    enqueuer = Enqueuer(client, queue=QUEUE, result_ttl=TTL, blob_ttl=TTL)
    items = [BatchItem(payload_ref=f"data:,{i}", meta={"i": str(i)}, line=i)
             for i in range(1, n + 1)]  # fmt: skip
    plan = BatchPlan.of(
        "enc", items, batch_id=batch_id, until="finished", max_attempts=max_attempts
    )
    BatchSubmitter(enqueuer, BatchStore(client, TTL)).submit(plan)


def status(client: redis.Redis, batch_id: str) -> BatchStatus:
    found = BatchStore(client, TTL).status(batch_id)
    assert found is not None
    return found


def counts(client: redis.Redis, batch_id: str) -> dict[str, int]:
    data = status(client, batch_id).to_json()
    names = ("queued", "dispatching", "waiting", "running", "succeeded", "failed", "errors")
    return {name: data[name] for name in names}


def events(client: redis.Redis) -> list[tuple[dict[str, Any], str]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.EVENTS))
    return [parse_entry(fields) for _, fields in entries]


def take(store: RecordStore, rid: str, batch_id: str) -> None:
    digest = store.client.hget(keys.request(rid), "digest")
    assert isinstance(digest, bytes)
    assert not store.begin(rid, "enc", batch_id, digest=digest.decode()).refused


def to_tracker(store: RecordStore, rid: str, batch_id: str, notify_url: str = "") -> None:
    take(store, rid, batch_id)
    store.mark_dispatched(rid, f"enc/dispatch-{rid}", f"e-{rid}")
    partial = Outcome.failed("enc", kind="interrupted", message="so far").to_stored()
    assert store.hand_off(rid, "default", partial, None, notify_url)


def end(store: RecordStore, rid: str, batch_id: str, code: int) -> bool:
    ending = {0: ("finished", ""), 1: ("error", "lost"), 2: ("failed", "")}[code]
    outcome = Outcome.failed("enc", kind="interrupted", message="so far").with_end(
        ending[0], {"status": "dead", "allocations": []}, ending[1], f"ended {code}"
    ).to_stored()
    assert outcome["exit_code"] == code
    meta = json.dumps({"status": "SUCCESS", "result": outcome})
    result = StoredResult(keys.celery_result(rid), meta, TTL)
    error = f"task ffmpeg exit code {code}" if code else ""
    return store.finish_followed(rid, code, batch_id, error, result)


def test_counts_follow_each_item_through_its_states(
    redis_client: redis.Redis, store: RecordStore
) -> None:
    submit(redis_client, "b1", 8)
    rid = [request_id_for("b1", i) for i in range(1, 9)]
    assert counts(redis_client, "b1") == dict(
        queued=8, dispatching=0, waiting=0, running=0, succeeded=0, failed=0, errors=0
    )
    take(store, rid[0], "b1")
    to_tracker(store, rid[1], "b1")
    for r in rid[2:8]:
        to_tracker(store, r, "b1")
    for r in rid[3:8]:
        store.restage(r, RequestState.RUNNING, 0)
    store.restage(rid[3], RequestState.RUNNING, 0)  # again: moved once
    store.restage(rid[4], RequestState.SCHEDULED, 0)  # rescheduled: waits again
    assert counts(redis_client, "b1") == dict(
        queued=0, dispatching=1, waiting=3, running=4, succeeded=0, failed=0, errors=0
    )
    assert end(store, rid[5], "b1", 0) and end(store, rid[6], "b1", 2)
    assert end(store, rid[7], "b1", 1) and not end(store, rid[7], "b1", 0)  # first end wins
    assert counts(redis_client, "b1") == dict(
        queued=0, dispatching=1, waiting=3, running=1, succeeded=1, failed=1, errors=1
    )
    errors = BatchStore(redis_client, TTL).errors("b1")
    assert [(e["request_id"], e["exit_code"]) for e in errors] == [(rid[6], 2), (rid[7], 1)]


def test_status_costs_one_read_whatever_the_batch_size(redis_client: redis.Redis) -> None:
    submit(redis_client, "small", 10)
    submit(redis_client, "large", 10_000)
    sizes = [len(redis_client.hgetall(keys.batch(b))) for b in ("small", "large")]
    assert sizes[0] == sizes[1]  # the same fields: nothing per item
    assert status(redis_client, "large").queued == 10_000


def test_retry_claims_each_failed_item_once_as_its_next_attempt(
    redis_client: redis.Redis, store: RecordStore
) -> None:
    submit(redis_client, "b2", 4)
    rid = [request_id_for("b2", i) for i in range(1, 5)]
    redis_client.delete(keys.lane("b2"))  # the first attempts' messages, taken
    for r, code in zip(rid[:3], (0, 2, 1), strict=True):
        to_tracker(store, r, "b2")
        end(store, r, "b2", code)
    to_tracker(store, rid[3], "b2")  # still running its first attempt
    retrier = BatchRetrier(redis_client, queue=QUEUE, ttl=TTL)

    reports: list[Any] = []
    threads = [threading.Thread(target=lambda: reports.append(retrier.retry_batch("b2")))
               for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.retried for r in reports) == 2  # four at once: each item claimed once
    assert retrier.retry_batch("b2").retried == 0  # the new attempts are in flight
    messages = [json.loads(m) for m in redis_client.lrange(keys.lane("b2"), 0, -1)]
    assert sorted(m["headers"]["id"] for m in messages) == [f"{rid[1]}~2", f"{rid[2]}~2"]
    assert counts(redis_client, "b2") == dict(
        queued=2, dispatching=0, waiting=1, running=0, succeeded=1, failed=0, errors=0
    )
    record = redis_client.hgetall(keys.request(f"{rid[1]}~2"))
    assert (record[b"state"], record[b"attempt"], record[b"item"]) == (
        b"queued", b"2", rid[1].encode()
    )  # fmt: skip
    # the second attempt runs and succeeds: the item counts as succeeded, its results show it
    to_tracker(store, f"{rid[1]}~2", "b2")
    end(store, f"{rid[1]}~2", "b2", 0)
    lines = [json.loads(line) for line in stream_results(BatchStore(redis_client, TTL), "b2")]
    assert [(line["request_id"], line["attempt"]) for line in lines] == [
        (rid[0], 1), (f"{rid[1]}~2", 2), (f"{rid[2]}~2", 2), (rid[3], 1)
    ]  # fmt: skip
    assert lines[1]["outcome"]["exit_code"] == 0
    assert counts(redis_client, "b2")["succeeded"] == 2


def test_max_attempts_retries_a_failed_run_not_a_bad_request(
    redis_client: redis.Redis, store: RecordStore
) -> None:
    submit(redis_client, "b3", 2, max_attempts=2)
    failing, refused = request_id_for("b3", 1), request_id_for("b3", 2)
    retrier = BatchRetrier(redis_client, queue=QUEUE, ttl=TTL)
    to_tracker(store, failing, "b3")
    to_tracker(store, refused, "b3")
    end(store, failing, "b3", 2)
    end(store, refused, "b3", 1)
    assert counts(redis_client, "b3")["queued"] == 1  # the failed item waits for attempt 2
    assert not redis_client.hexists(keys.batch("b3"), "finished_at")
    assert retrier.drain_due() == 1 and retrier.drain_due() == 0
    again = f"{failing}~2"
    to_tracker(store, again, "b3")
    end(store, again, "b3", 2)  # the last attempt: counted as failed, the batch finishes
    assert retrier.drain_due() == 0
    assert counts(redis_client, "b3") == dict(
        queued=0, dispatching=0, waiting=0, running=0, succeeded=0, failed=1, errors=1
    )
    finished = [e for e, _ in events(redis_client) if e["type"] == "batch.finished"]
    assert [e["event_id"] for e in finished] == ["batch:b3"]
    # retried by hand: the batch finishes again, as an event of its own
    assert BatchRetrier(redis_client, queue=QUEUE, ttl=TTL).retry_batch("b3").retried == 2
    for r in (f"{failing}~3", f"{refused}~2"):
        to_tracker(store, r, "b3")
        end(store, r, "b3", 0)
    finished = [e for e, _ in events(redis_client) if e["type"] == "batch.finished"]
    assert [(e["event_id"], e["status"]) for e in finished] == [
        ("batch:b3", "failed"), ("batch:b3~2", "succeeded")
    ]  # fmt: skip


def test_max_attempts_is_checked() -> None:
    check_max_attempts(3, "finished")
    for bad, until in ((0, "finished"), (101, "finished"), ("2", "finished"), (2, "scheduled")):
        with pytest.raises(InvalidRequest):
            check_max_attempts(bad, until)  # type: ignore[arg-type]


def test_a_followed_request_keeps_its_notify_url_for_its_end(
    redis_client: redis.Redis, store: RecordStore
) -> None:
    redis_client.hset(keys.request("solo"), mapping={"state": "queued", "digest": "d"})
    assert not store.begin("solo", "enc", None, digest="d").refused
    store.mark_dispatched("solo", "enc/dispatch-solo", "e-solo")
    partial = Outcome.failed("enc", kind="interrupted", message="so far").to_stored()
    store.hand_off("solo", "default", partial, None, "http://127.0.0.1:9/hook")
    record = store.load("solo")
    assert record is not None
    result = StoredResult(keys.celery_result("solo"), json.dumps({"status": "SUCCESS"}), TTL)
    store.finish_followed("solo", 0, None, "", result, notify_url=record.notify_url)
    [(event, url)] = events(redis_client)
    assert (event["event_id"], url) == ("request:solo:1", "http://127.0.0.1:9/hook")


def test_an_item_that_cannot_be_rerun_ends_failed_instead_of_waiting(
    redis_client: redis.Redis, store: RecordStore
) -> None:
    """What re-running an item needs expired (a batch running past its TTL): its failed
    run ends it, counted, rather than leaving it in the retry set for ever."""
    submit(redis_client, "b4", 2, max_attempts=3)
    gone, kept = request_id_for("b4", 1), request_id_for("b4", 2)
    redis_client.hdel(keys.batch_items("b4"), gone)
    for rid in (gone, kept):
        to_tracker(store, rid, "b4")
        end(store, rid, "b4", 2)
    due = cast(list[bytes], redis_client.zrange(keys.RETRY_DUE, 0, -1))
    assert due == [f"b4\x1f{kept}".encode()]
    assert counts(redis_client, "b4")["failed"] == 1 and counts(redis_client, "b4")["queued"] == 1
