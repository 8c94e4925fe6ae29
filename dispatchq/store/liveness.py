"""Liveness in Redis: which workers consume a queue (so producers can tell that none
does), and which trackers lead or stand by.

The worker's main process adds `<queue>|<hostname>` to `keys.WORKERS` every
`keys.WORKER_BEAT` seconds, scored with the time; readers count members heard from within
`keys.WORKER_TTL`. A stopped worker removes itself; a killed one ages out. Trackers say
they are alive with each try for the lease (`keys.TRACKERS`, `lua/lease.lua`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import redis

from dispatchq.store import keys


def live_workers(client: redis.Redis, queue: str, now: float | None = None) -> list[str]:
    """Hostnames of the workers heard from recently on `queue`."""
    now = time.time() if now is None else now
    members = client.zrangebyscore(keys.WORKERS, now - keys.WORKER_TTL, "+inf")
    prefix = f"{queue}|"
    names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    return [name[len(prefix) :] for name in names if name.startswith(prefix)]


def heard_workers(
    client: redis.Redis, queue: str, now: float | None = None
) -> list[tuple[str, float]]:
    """(hostname, seconds since last heard) of the workers heard from recently on `queue`."""
    now = time.time() if now is None else now
    prefix = f"{queue}|"
    found = client.zrangebyscore(keys.WORKERS, now - keys.WORKER_TTL, "+inf", withscores=True)
    return [(name[len(prefix):], max(0.0, now - score)) for name, score in _decoded(found)
            if name.startswith(prefix)]  # fmt: skip


def heard_trackers(client: redis.Redis, now: float | None = None) -> list[tuple[str, float]]:
    """(tracker ID, seconds since last heard) of the trackers heard from recently."""
    now = time.time() if now is None else now
    found = client.zrangebyscore(keys.TRACKERS, now - keys.TRACKER_TTL, "+inf", withscores=True)
    return [(name, max(0.0, now - score)) for name, score in _decoded(found)]


def _decoded(found: Any) -> list[tuple[str, float]]:
    return [(m.decode() if isinstance(m, bytes) else str(m), float(s)) for m, s in found]


class Heartbeat:
    """A daemon thread beating for one worker until `stop()`."""

    def __init__(self, client: redis.Redis, queue: str, hostname: str) -> None:
        self.client = client
        self.member = f"{queue}|{hostname}"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatchq-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(keys.WORKERS, {self.member: now})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now - keys.WORKER_TTL)
        pipe.expire(keys.WORKERS, keys.WORKER_TTL)
        pipe.execute()

    def _run(self) -> None:
        while not self._stopped.wait(keys.WORKER_BEAT):
            try:
                self.beat()
            except redis.RedisError:
                continue  # Redis restarting: the next beat retries

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(keys.WORKERS, self.member)
