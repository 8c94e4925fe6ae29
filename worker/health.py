"""Start-up checks that warn about a Redis set up to lose data."""

from __future__ import annotations

import redis
import structlog

from dispatchq.config.settings import Settings

log = structlog.get_logger(__name__)


def warn_about_redis(settings: Settings) -> list[str]:
    """Log (and return) a warning for each setting that can lose queued requests: eviction,
    no AOF, and (behind Sentinel, or with a durability receipt) too few replicas."""
    client = settings.redis.client()
    try:
        warnings = _config_problems(client) + _replication_problems(client, settings)
    except redis.RedisError as err:
        warnings = [f"cannot check the Redis configuration: {err}"]
    finally:
        client.close()
    for text in warnings:
        log.warning("redis.config", problem=text)
    return warnings


def _config_problems(client: redis.Redis) -> list[str]:
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        aof = client.config_get("appendonly").get("appendonly")
    except redis.ResponseError:
        return []  # CONFIG is disabled (managed Redis): nothing to check
    problems = []
    if policy != "noeviction":
        problems.append(
            f"redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict "
            "queued requests and outcomes; set it to 'noeviction'"
        )
    if aof != "yes":
        problems.append(
            "redis appendonly is off: a Redis restart loses what was enqueued since the "
            "last snapshot; set appendonly yes (appendfsync everysec)"
        )
    return problems


def _replication_problems(client: redis.Redis, settings: Settings) -> list[str]:
    try:
        replicas = int(client.info("replication").get("connected_slaves", 0))
    except redis.ResponseError:
        return []  # INFO is disabled: nothing to check
    problems = []
    if settings.redis.is_sentinel and replicas == 0:
        problems.append(
            "the Redis primary has no replica connected: a failover now would have "
            "nothing to promote, and what is on the primary alone would be lost with it"
        )
    if replicas < settings.redis_min_replicas:
        problems.append(
            f"the Redis primary has {replicas} replica(s) connected, fewer than "
            f"DISPATCHQ_REDIS_MIN_REPLICAS={settings.redis_min_replicas}: every enqueue "
            "fails until enough are back"
        )
    return problems
