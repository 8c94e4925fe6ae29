"""One contract, two stores: a request's record as the real store writes it (its Lua
scripts on a real redis-server) and as the unit layer's fake does, the way the dispatch
service uses them (`dispatchq.core.service.Records`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dispatchq.core.service import Records
from dispatchq.store import keys
from dispatchq.store.records import Ending, RecordStore, RequestState, StoredResult
from tests.support.fakes import FakeRecords


@pytest.fixture(params=["redis", "fake"])
def records(request: pytest.FixtureRequest, redis_client: redis.Redis) -> Iterator[Records]:
    if request.param == "fake":
        yield FakeRecords()
        return
    redis_client.flushdb()
    yield RecordStore(redis_client, 60)


def _enqueued(records: Records, rid: str) -> None:
    """What enqueue.lua makes of a new request."""
    if isinstance(records, FakeRecords):
        records.enqueue(rid)
    else:
        assert isinstance(records, RecordStore)
        records.client.hset(keys.request(rid), "state", "queued")


def _result(rid: str) -> StoredResult:
    return StoredResult(keys.celery_result(rid), '{"status": "SUCCESS"}', 60)


def test_a_request_goes_queued_dispatching_monitoring_done(records: Records) -> None:
    _enqueued(records, "r1")
    record = records.of("r1")
    begun = record.begin("video", digest="d1")
    assert (begun.dispatched_job_id, begun.cancelled, begun.refused) == ("", False, "")
    assert begun.taken_at is not None
    loaded = record.load()
    assert loaded is not None and loaded.state is RequestState.DISPATCHING
    assert loaded.job_id == "video"
    record.dispatched("video/dispatch-1", "e1")
    loaded = record.load()
    assert loaded is not None and loaded.state is RequestState.MONITORING
    assert (loaded.dispatched_job_id, loaded.eval_id) == ("video/dispatch-1", "e1")
    assert record.done(Ending(0, result=_result("r1")))
    loaded = record.load()
    assert loaded is not None and loaded.state is RequestState.DONE and loaded.exit_code == 0


def test_a_redelivered_request_resumes_what_was_dispatched(records: Records) -> None:
    _enqueued(records, "r1")
    record = records.of("r1")
    first = record.begin("video", digest="d1")
    record.dispatched("video/dispatch-1", "e1")
    again = record.begin("video", digest="d1")
    assert (again.dispatched_job_id, again.eval_id) == ("video/dispatch-1", "e1")
    assert again.taken_at == first.taken_at


def test_the_first_finish_wins(records: Records) -> None:
    _enqueued(records, "r1")
    record = records.of("r1")
    record.begin("video", digest="d1")
    assert record.done(Ending(2, "placement failed", _result("r1")))
    assert record.done(Ending(0, result=_result("r1")))  # a late duplicate: not refused...
    loaded = record.load()
    assert loaded is not None and loaded.exit_code == 2  # ...and it changed nothing


def test_a_message_of_another_request_is_refused_and_writes_nothing(records: Records) -> None:
    _enqueued(records, "r1")
    records.of("r1").begin("video", digest="d1")
    refused = records.of("r1").begin("video", digest="other")
    assert refused.refused
    assert not records.of("r1").done(Ending(1, "bad", _result("r1"), digest="other"))
    loaded = records.of("r1").load()
    assert loaded is not None and loaded.state is RequestState.DISPATCHING


def test_a_followed_request_is_handed_off_then_done(records: Records) -> None:
    _enqueued(records, "r1")
    record = records.of("r1")
    record.begin("video", digest="d1")
    record.dispatched("video/dispatch-1", "e1")
    assert record.hand_off("default", {"status": "complete"}, 2e9, "https://hooks.example/x")
    loaded = record.load()
    assert loaded is not None and loaded.state is RequestState.SCHEDULED
    assert (loaded.namespace, loaded.deadline, loaded.notify_url) == (
        "default", 2e9, "https://hooks.example/x"
    )
    assert record.done(Ending(0, result=_result("r1")))
    assert not record.hand_off("default", {}, None)  # done: left alone


def test_an_unknown_request_has_no_record(records: Records) -> None:
    assert records.of("nobody").load() is None
    assert not records.batch_cancelled("no-batch")


def _batch_counters(records: Records, batch_id: str) -> dict[str, int]:
    if isinstance(records, FakeRecords):
        return dict(records.batches.get(batch_id, {}))
    assert isinstance(records, RecordStore)
    raw = records.client.hgetall(keys.batch(batch_id))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


def test_an_ending_counts_its_run_time_in_its_batch_once(records: Records) -> None:
    timed = {"status": "complete", "exit_code": 0, "dispatched_job_id": "video/dispatch-1",
             "timings": [1.0, 0.2, 3.1]}  # 3.3 s
    for rid in ("r1", "r2"):
        _enqueued(records, rid)
        record = records.of(rid, "b1")
        record.begin("video", digest="d1")
        assert record.done(Ending(0, outcome=timed))
    records.of("r1", "b1").done(Ending(0, outcome=timed))  # again: the first end wins
    untimed = {"status": "error", "exit_code": 1, "timings": [1.0, 0.1, None]}  # refused
    _enqueued(records, "r3")
    records.of("r3", "b1").done(Ending(1, outcome=untimed))
    counters = _batch_counters(records, "b1")
    assert counters["rt:5"] == 2  # the 2-5 s bucket
    assert {k for k in counters if k.startswith("rt:")} == {"rt:5"}
