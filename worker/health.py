"""Start-up checks that warn about a Redis set up to lose data."""

from __future__ import annotations

import redis
import structlog

from dispatchq.config.settings import Settings

log = structlog.get_logger(__name__)


def warn_about_redis(settings: Settings) -> list[str]:
    """Log (and return) a warning for each setting that can lose queued requests."""
    warnings: list[str] = []
    client = settings.redis.client()
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        if policy != "noeviction":
            warnings.append(
                f"redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict "
                "queued requests and outcomes; set it to 'noeviction'"
            )
        aof = client.config_get("appendonly").get("appendonly")
        if aof != "yes":
            warnings.append(
                "redis appendonly is off: a Redis restart loses what was enqueued since the "
                "last snapshot; set appendonly yes (appendfsync everysec)"
            )
    except redis.ResponseError:
        pass  # CONFIG is disabled (managed Redis): nothing to check
    except redis.RedisError as err:
        warnings.append(f"cannot check the Redis configuration: {err}")
    finally:
        client.close()
    for text in warnings:
        log.warning("redis.config", problem=text)
    return warnings
