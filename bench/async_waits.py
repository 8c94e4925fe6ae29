"""Many concurrent waits in one process: `AsyncProducer.wait` (one task per wait) against
the synchronous `Producer.wait` (one thread per wait), on one redis-server.

    .venv/bin/python -m bench.async_waits [--waits 10000] [--threads 1000]

For each: the process's RSS growth per wait and the producer's connections to Redis (all
of them: its pool's and the notifications') once every wait is in place (subscribed),
then the requests are ended as a worker ends them (outcome stored and published in one
step, from another thread) and the time until every wait has returned. The thread
baseline runs `--threads` waits (threads are the cost being shown); its figures per wait
are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from typing import cast

import redis

from bench.procfs import memory
from dispatchq.broker.app import GuardedRedisBackend, make_app
from dispatchq.config.settings import Settings
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.aio import AsyncProducer
from dispatchq.producer.api import Producer
from dispatchq.store.records import RecordStore
from dispatchq.testing import StubProducer

QUEUE = "bench-waits"


def _end_all(settings: Settings, client: redis.Redis, rids: list[str]) -> None:
    """End each request as a worker does: its outcome stored and published in one step."""
    records = RecordStore(client, settings.result_ttl)
    backend = cast(GuardedRedisBackend, make_app(settings).backend)
    stored = StubProducer().finish("x", 0).to_stored()
    for rid in rids:
        records.mark_done(rid, 0, None, "", backend.success_result(rid, stored), outcome=stored)


def _connections(client: redis.Redis) -> str:
    """The producer's connections to Redis (every client but this bench's own): how many
    are subscribed (notifications) and how many are not."""
    listed = [c for c in client.client_list() if c.get("cmd") != "client|list"]
    subscribed = sum(1 for c in listed if int(c.get("sub", 0) or 0) > 0)
    return f"{len(listed)} ({subscribed} subscribed, {len(listed) - subscribed} other)"


def asyncio_waits(server: RedisServer, count: int) -> tuple[float, str, float]:
    settings = Settings(redis_url=server.url, queue=QUEUE)
    client = redis.Redis.from_url(server.url)

    async def scenario() -> tuple[float, str, float]:
        async with AsyncProducer(settings) as producer:
            batch = await producer.dispatch_batch(
                "encode", [{"meta": {}}] * count, preflight=False
            )
            rids = [f"{batch}-{n:06d}" for n in range(1, count + 1)]
            before = _rss()
            waits = [asyncio.create_task(producer.wait([rid], timeout=300)) for rid in rids]
            while producer.watch.channels < count:
                await asyncio.sleep(0.05)
            per_wait = (_rss() - before) / count
            connections = _connections(client)
            started = time.perf_counter()
            await asyncio.to_thread(_end_all, settings, client, rids)
            done = await asyncio.gather(*waits)
            assert all(d[r].done for d, r in zip(done, rids, strict=True))
            return per_wait, connections, time.perf_counter() - started

    try:
        return asyncio.run(scenario())
    finally:
        client.close()


def thread_waits(server: RedisServer, count: int) -> tuple[float, str, float]:
    settings = Settings(redis_url=server.url, queue=QUEUE)
    client = redis.Redis.from_url(server.url)
    with Producer(settings) as producer:
        batch = producer.dispatch_batch("encode", [{"meta": {}}] * count, preflight=False)
        rids = [f"{batch}-{n:06d}" for n in range(1, count + 1)]
        before = _rss()
        results: list[bool] = []
        threads = [threading.Thread(target=lambda r=rid: results.append(
            producer.wait([r], timeout=300)[r].done)) for rid in rids]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(3)  # every wait subscribed (Celery's result consumer: one pub/sub)
        per_wait = (_rss() - before) / count
        connections = _connections(client)
        started = time.perf_counter()
        _end_all(settings, client, rids)
        for t in threads:
            t.join(300)
        seconds = time.perf_counter() - started
        assert len(results) == count and all(results)
    client.close()
    return per_wait, connections, seconds


def _rss() -> int:
    return memory([os.getpid()]).rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1_000)
    args = parser.parse_args()
    with RedisServer() as server:
        a = asyncio_waits(server, args.waits)
    with RedisServer() as server:
        t = thread_waits(server, args.threads)
    print(f"AsyncProducer.wait, {args.waits:,} tasks: {a[0] / 1024:.1f} KiB per wait, "
          f"connections to Redis {a[1]}, all woken {a[2]:.2f} s after the first end "
          f"(ending them takes most of it)")  # fmt: skip
    print(f"Producer.wait, {args.threads:,} threads: {t[0] / 1024:.1f} KiB per wait, "
          f"connections to Redis {t[1]}, all woken {t[2]:.2f} s after the first end")
    print(f"memory per wait, threads / tasks: {t[0] / a[0]:.1f}x")


if __name__ == "__main__":
    main()
