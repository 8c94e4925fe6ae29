"""`dispatchq.worker.health`: the start-up warnings about a Redis set up to lose data."""

from __future__ import annotations

from structlog.testing import capture_logs

from dispatchq.config.settings import Settings
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.worker.health import warn_about_redis


def test_eviction_no_aof_and_too_few_replicas_are_each_warned_about() -> None:
    args = ["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"]
    with RedisServer(extra_args=args) as server, capture_logs() as logs:
        warnings = warn_about_redis(Settings(redis_url=server.url, redis_min_replicas=1))
    assert len(warnings) == 3
    assert "maxmemory-policy is 'allkeys-lru'" in warnings[0]
    assert "appendonly is off" in warnings[1]
    assert "0 replica(s) connected, fewer than DISPATCHQ_REDIS_MIN_REPLICAS=1" in warnings[2]
    assert [e["problem"] for e in logs if e["event"] == "redis.config"] == warnings


def test_a_redis_set_up_for_dispatchq_gets_no_warning(redis_server: RedisServer) -> None:
    assert warn_about_redis(Settings(redis_url=redis_server.url)) == []


def test_an_unreachable_redis_is_one_warning() -> None:
    [warning] = warn_about_redis(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert warning.startswith("cannot check the Redis configuration")
