"""The workers' result backend (`config.celery.GuardedRedisBackend`) against a real Redis:
Celery's guard kept (a stored SUCCESS is never replaced), in one round trip."""

from __future__ import annotations

import json

import redis
from celery import states

from config.celery import GuardedRedisBackend, make_app
from config.settings import Settings
from devstack.redis_server import RedisServer
from dispatch import keys


def _backend(redis_server: RedisServer) -> GuardedRedisBackend:
    backend = make_app(Settings(redis_url=redis_server.url, result_ttl=600)).backend
    assert isinstance(backend, GuardedRedisBackend)
    return backend


def test_an_outcome_is_stored_with_its_ttl_and_published(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    backend = _backend(redis_server)
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
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
