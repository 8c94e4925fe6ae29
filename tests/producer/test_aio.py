"""`AsyncProducer` against a real redis-server (and, where a request must run, a real worker
and nomadsim): waits woken by the published outcome on one connection, cancellation that
leaves nothing behind, Redis restarting under a wait, batches with their progress, and
completion events acknowledged as the loop goes. Each test runs its scenario with
`asyncio.run`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis

from dispatchq.broker.app import GuardedRedisBackend, make_app
from dispatchq.config.settings import Settings
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.errors import InvalidRequest
from dispatchq.producer.aio import AsyncProducer
from dispatchq.store import keys
from dispatchq.store.records import RecordStore
from dispatchq.testing import StubProducer
from tests.support.stack import QUEUE, Stack

HERE = "aio"
Finish = Callable[..., None]


def finisher(server: RedisServer, client: redis.Redis) -> Finish:
    """End a request as a worker does: its outcome stored and published in one step."""
    settings = Settings(redis_url=server.url, queue=HERE)
    backend = cast(GuardedRedisBackend, make_app(settings).backend)
    records = RecordStore(client, settings.result_ttl)

    def finish(rid: str, exit_code: int = 0) -> None:
        stored = StubProducer().finish("x", exit_code, message="refused").to_stored()
        records.mark_done(rid, exit_code, None, "", backend.success_result(rid, stored),
                          outcome=stored)  # fmt: skip

    return finish


def settings(server: RedisServer, queue: str = HERE) -> Settings:
    return Settings(redis_url=server.url, queue=queue)


def subscribers(client: redis.Redis, rids: list[str]) -> int:
    counts = cast(list[tuple[bytes, int]],
                  client.pubsub_numsub(*(keys.celery_result(r) for r in rids)))  # fmt: skip
    return sum(n for _, n in counts)


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def finish(redis_server: RedisServer, redis_client: redis.Redis) -> Finish:
    redis_client.flushdb()
    return finisher(redis_server, redis_client)


def test_thousands_of_waits_share_one_connection_and_wake_on_their_outcome(
    redis_server: RedisServer, redis_client: redis.Redis, finish: Finish
) -> None:
    async def scenario() -> None:
        async with AsyncProducer(settings(redis_server)) as producer:
            rids = [await producer.enqueue("encode", meta={"n": str(n)}) for n in range(2000)]
            before = len(redis_client.client_list())
            waits = [asyncio.create_task(producer.wait([rid], timeout=120)) for rid in rids]
            await until(lambda: producer.watch.channels == len(rids), "every wait subscribed")
            assert len(redis_client.client_list()) - before <= 1 + 32  # notifications + pool
            assert subscribers(redis_client, rids[:50]) == 50
            await asyncio.sleep(0.2)
            assert not any(w.done() for w in waits)  # nothing wakes them but their outcome

            def finish_all() -> None:
                for n, rid in enumerate(rids):
                    finish(rid, n % 2)

            await asyncio.to_thread(finish_all)
            done = await asyncio.gather(*waits)
            codes = [d[r].outcome.exit_code for d, r in zip(done, rids, strict=True)]  # type: ignore[union-attr]
            assert codes == [n % 2 for n in range(len(rids))]
            await until(lambda: subscribers(redis_client, rids) == 0, "every subscription gone")
            assert producer.watch.channels == 0

    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_no_subscription_and_the_others_still_wake(
    redis_server: RedisServer, redis_client: redis.Redis, finish: Finish
) -> None:
    async def scenario() -> None:
        async with AsyncProducer(settings(redis_server)) as producer:
            rid = await producer.enqueue("encode", meta={"profile": "hd"})
            other = await producer.enqueue("encode", meta={"profile": "sd"})
            cancelled = asyncio.create_task(producer.wait([rid, other], timeout=60))
            kept = asyncio.create_task(producer.wait([other], timeout=60))
            await until(lambda: producer.watch.channels == 2, "both subscribed")
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            await until(lambda: subscribers(redis_client, [rid]) == 0, "its channel gone")
            assert producer.watch.channels == 1 and subscribers(redis_client, [other]) == 1
            await asyncio.to_thread(finish, other)
            assert (await kept)[other].done
            await until(lambda: producer.watch.channels == 0, "nothing left")

    asyncio.run(scenario())


def test_a_wait_times_out_with_the_state_now_and_on_done_is_called_once_each(
    redis_server: RedisServer, finish: Finish
) -> None:
    async def scenario() -> None:
        async with AsyncProducer(settings(redis_server)) as producer:
            rids = [await producer.enqueue("encode", meta={"n": str(n)}) for n in range(3)]
            await asyncio.to_thread(finish, rids[0])
            seen: list[str] = []

            async def on_done(status: Any) -> None:
                seen.append(status.request_id)

            waited = await producer.wait([*rids, ""], timeout=0.3, on_done=on_done)
            assert seen == [rids[0]] and waited[rids[1]].state == "queued"
            assert waited[""].state == "unknown"  # cannot be an ID: not waited for
            def record(status: Any) -> None:
                seen.append(status.request_id)

            waiting = asyncio.create_task(producer.wait(rids, on_done=record))
            await until(lambda: producer.watch.channels == 3, "subscribed")
            for rid in rids[1:]:
                await asyncio.to_thread(finish, rid)
            assert all(s.done for s in (await waiting).values())
            assert sorted(seen) == sorted([rids[0], *rids])  # once per wait

    asyncio.run(scenario())


def test_bad_requests_and_batches_are_refused_before_anything_is_written(
    redis_server: RedisServer, redis_client: redis.Redis, finish: Finish
) -> None:
    async def scenario() -> None:
        async with AsyncProducer(settings(redis_server)) as producer:
            with pytest.raises(InvalidRequest, match="until must be"):
                await producer.enqueue("encode", until="later")
            with pytest.raises(InvalidRequest, match="max_attempts needs until"):
                await producer.dispatch_batch("encode", [{}], preflight=False, max_attempts=2)
            await producer.enqueue("encode", request_id="taken", meta={"a": "1"})
            with pytest.raises(InvalidRequest, match="already names another request"):
                await producer.dispatch_batch(
                    "encode", [{"request_id": "taken", "meta": {"a": "2"}}], preflight=False
                )

    asyncio.run(scenario())
    assert redis_client.zcard(keys.BATCHES) == 0


def test_a_wait_outlives_a_redis_restart() -> None:
    with RedisServer(extra_args=["--appendonly", "yes"]) as server:
        client = redis.Redis.from_url(server.url)
        finish = finisher(server, client)

        async def scenario() -> None:
            async with AsyncProducer(settings(server)) as producer:
                rid = await producer.enqueue("encode", meta={"profile": "hd"})
                waiting = asyncio.create_task(producer.wait([rid], timeout=60))
                await until(lambda: producer.watch.channels == 1, "subscribed")
                await asyncio.to_thread(server.restart)
                await asyncio.to_thread(finish, rid)  # published, maybe before resubscribing
                assert (await waiting)[rid].done

        asyncio.run(scenario())
        client.close()


@pytest.mark.integration
def test_a_batch_runs_to_its_end_with_its_progress_and_its_events(running: Stack) -> None:
    async def scenario() -> None:
        async with AsyncProducer(settings(running.redis, QUEUE)) as producer:
            items = [{"meta": {"profile": p}} for p in ("hd", "sd", "4k")] + [{"meta": {}}]
            batch = await producer.dispatch_batch("encode", items, preflight=False)
            seen = [status async for status in producer.batch_progress(batch, every=0.05)]
            assert seen[-1].finished and seen[-1].total == 4
            assert seen[-1].exit_codes == {0: 3, 1: 1}  # Nomad refuses the one without profile
            ids = [json.loads(line)["request_id"] for line in await producer.batch_results(batch)]
            ended: set[str] = set()
            async for event in producer.events(group="aio", consumer="c1", start="0", block=1):
                if event["type"] == "batch.finished":
                    assert event["batch_id"] == batch
                    break
                ended.add(event["request_id"])
            assert ended == set(ids)
            report = await producer.retry_batch(batch)
            assert report.retried == 1
            again = [s async for s in producer.batch_progress(batch, every=0.05)]
            assert again[-1].finished and again[-1].retries == 1
            assert await producer.cancel_batch(batch) == (0, [])

    asyncio.run(scenario())
