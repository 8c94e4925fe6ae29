"""The workers' result backend (`dispatchq.broker.app.GuardedRedisBackend`) against a real Redis:
Celery's guard kept (a stored SUCCESS is never replaced), in one round trip."""

from __future__ import annotations

import json
from datetime import datetime
from unittest.mock import ANY

import redis
from celery import states

from dispatchq.broker.app import GuardedRedisBackend, make_app
from dispatchq.config.settings import Settings
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.store import keys
from dispatchq.store.records import RecordStore


def _backend(redis_server: RedisServer) -> GuardedRedisBackend:
    backend = make_app(Settings(redis_url=redis_server.url, result_ttl=600)).backend
    assert isinstance(backend, GuardedRedisBackend)
    return backend


def test_an_outcome_is_stored_with_its_ttl_and_published(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    backend = _backend(redis_server)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.celery_result("r-1"))
    pubsub.get_message(timeout=1)  # the subscription itself
    backend.mark_as_done("r-1", {"exit_code": 0})
    stored = json.loads(redis_client.get(keys.celery_result("r-1")))  # type: ignore[arg-type]
    assert (stored["status"], stored["result"], stored["task_id"]) == (
        states.SUCCESS,
        {"exit_code": 0},
        "r-1",
    )
    assert 0 < redis_client.ttl(keys.celery_result("r-1")) <= 600
    published = pubsub.get_message(timeout=5)
    assert published is not None
    assert json.loads(published["data"])["result"] == {"exit_code": 0}
    pubsub.close()


def test_a_stored_success_is_never_replaced(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    backend = _backend(redis_server)
    backend.mark_as_retry("r-2", RuntimeError("first try"))
    assert backend.get_task_meta("r-2")["status"] == states.RETRY
    backend.mark_as_done("r-2", {"exit_code": 0})  # replaces a RETRY
    backend.mark_as_done("r-2", {"exit_code": 1})  # a late duplicate: ignored
    backend.mark_as_failure("r-2", RuntimeError("late"))
    meta = json.loads(redis_client.get(keys.celery_result("r-2")))  # type: ignore[arg-type]
    assert (meta["status"], meta["result"]) == (states.SUCCESS, {"exit_code": 0})


def test_an_outcome_stored_with_its_record_reads_as_celerys_own(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The dispatch task's way: `success_result` encoded, stored by `RecordStore.mark_done`
    in the same step as the record and its batch; the first finish wins."""
    backend = _backend(redis_server)
    records = RecordStore(redis_client, ttl=600)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.celery_result("r-3"))
    pubsub.get_message(timeout=1)
    backend.mark_as_retry("r-3", RuntimeError("first try"))
    first = backend.success_result("r-3", {"exit_code": 0})
    records.mark_done("r-3", 0, "b-1", result=first)
    records.mark_done("r-3", 1, "b-1", "late", backend.success_result("r-3", {"exit_code": 1}))
    backend.mark_as_failure("r-3", RuntimeError("late"))  # Celery's guard still holds
    celerys = backend._get_result_meta({"exit_code": 0}, states.SUCCESS, None, None)
    ours = json.loads(first.value)
    # Called from a task, Celery lists the task's children: none for a dispatch.
    assert ours == {**celerys, "children": [], "date_done": ANY, "task_id": "r-3"}
    assert datetime.fromisoformat(ours["date_done"]).tzinfo is not None
    meta = backend.get_task_meta("r-3")
    assert (meta["status"], meta["result"], meta["task_id"]) == (
        states.SUCCESS,
        {"exit_code": 0},
        "r-3",
    )
    assert 0 < redis_client.ttl(keys.celery_result("r-3")) <= 600
    assert redis_client.hget(keys.request("r-3"), "exit_code") == b"0"
    batch = redis_client.hgetall(keys.batch("b-1"))
    assert (batch[b"done"], batch[b"exit:0"], batch.get(b"exit:1")) == (b"1", b"1", None)
    published = [pubsub.get_message(timeout=5) for _ in range(2)]  # the retry, the outcome
    assert [json.loads(m["data"])["status"] for m in published if m] == ["RETRY", "SUCCESS"]
    pubsub.close()
