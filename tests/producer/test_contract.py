"""One contract, four producers: the real `Producer` and `AsyncProducer` (on a real
redis-server, their requests ended as a worker ends them) and `dispatchq.testing`'s
`StubProducer` and `AsyncStubProducer` answer alike. The asyncio ones are driven through
`Awaited`, which runs each call on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import redis

from dispatchq.broker.app import GuardedRedisBackend, make_app
from dispatchq.config.settings import Settings
from dispatchq.core.outcome import Outcome
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.errors import InvalidRequest
from dispatchq.producer.aio import AsyncProducer
from dispatchq.producer.api import Producer
from dispatchq.store.records import RecordStore
from dispatchq.testing import AsyncStubProducer, StubProducer


class Awaited:
    """An asyncio producer's calls, each run to its end on an event loop in a thread of its
    own (a test's `threading.Timer` finishes requests meanwhile, from another thread)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.producer = self.call(_made(make))

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.producer, name)
        return lambda *args, **kwargs: self.call(method(*args, **kwargs))

    def stop(self) -> None:
        self.call(self.producer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _made(make: Callable[[], Any]) -> Any:
    return make()  # in the loop's thread: an asyncio client binds to its loop


@dataclass
class Side:
    producer: Producer | StubProducer | Awaited
    finish: Callable[[str, Outcome], None]
    """End a request with an outcome, as a worker (or the test, for the stub) does."""


def _real(server: RedisServer, client: redis.Redis) -> Iterator[Side]:
    client.flushdb()
    settings = Settings(redis_url=server.url, queue="contract")
    backend = cast(GuardedRedisBackend, make_app(settings).backend)
    records = RecordStore(client, settings.result_ttl)

    def finish(rid: str, outcome: Outcome) -> None:
        stored = outcome.to_stored()
        result = backend.success_result(rid, stored)
        records.mark_done(rid, outcome.exit_code, None, outcome.error_message or "", result,
                          outcome=stored)  # fmt: skip

    with Producer(settings) as producer:
        yield Side(producer, finish)


def _real_async(server: RedisServer, client: redis.Redis) -> Iterator[Side]:
    [real] = list(_real(server, client))  # its finish; its sync producer closed
    settings = Settings(redis_url=server.url, queue="contract")
    awaited = Awaited(lambda: AsyncProducer(settings))
    try:
        yield Side(awaited, real.finish)
    finally:
        awaited.stop()


def _stub() -> Iterator[Side]:
    stub = StubProducer()

    def finish(rid: str, outcome: Outcome) -> None:
        stub.finish(rid, outcome=outcome)

    yield Side(stub, finish)


def _stub_async() -> Iterator[Side]:
    stub = StubProducer()
    awaited = Awaited(lambda: AsyncStubProducer(stub))

    def finish(rid: str, outcome: Outcome) -> None:
        stub.finish(rid, outcome=outcome)

    try:
        yield Side(awaited, finish)
    finally:
        awaited.stop()


@pytest.fixture(params=["real", "stub", "real-async", "stub-async"])
def side(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[Side]:
    sides = {"real": lambda: _real(redis_server, redis_client), "stub": _stub,
             "real-async": lambda: _real_async(redis_server, redis_client),
             "stub-async": _stub_async}  # fmt: skip
    yield from sides[request.param]()


def test_an_enqueued_request_is_queued_and_an_unknown_id_unknown(side: Side) -> None:
    rid = side.producer.enqueue("encode", meta={"profile": "hd"}, payload=b"{}")
    assert side.producer.result(rid).state == "queued"
    assert side.producer.result("nobody").state == "unknown"


def test_the_same_request_twice_is_one_and_another_under_its_id_is_refused(side: Side) -> None:
    rid = side.producer.enqueue("encode", meta={"profile": "hd"}, request_id="c-1")
    assert side.producer.enqueue("encode", meta={"profile": "hd"}, request_id="c-1") == rid
    with pytest.raises(InvalidRequest, match='request ID "c-1" already names another request'):
        side.producer.enqueue("encode", meta={"profile": "sd"}, request_id="c-1")


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"meta": {str(n): "v" for n in range(65)}}, "meta has more than 64 keys"),
        ({"request_id": "x~2"}, "ends in '~' and digits"),
        ({"payload": b"x" * 16_385}, "Payload exceeds maximum size; 16385 > 16384"),
        ({"priority": 101}, "priority must be an integer from 0"),
        ({"until": "later"}, "until must be 'scheduled' or 'finished'"),
    ],
)
def test_bad_requests_are_refused_in_the_same_words(
    side: Side, fields: dict[str, Any], text: str
) -> None:
    with pytest.raises(InvalidRequest, match=text.replace("(", r"\(")):
        side.producer.enqueue("encode", **fields)


def test_wait_returns_the_outcome_once_the_request_ends(side: Side) -> None:
    ok = side.producer.enqueue("encode", meta={"profile": "hd"})
    bad = side.producer.enqueue("encode", meta={"profile": "sd"})
    failure = Outcome.failed("encode", kind="validation", message="no such meta")
    threading.Timer(0.2, side.finish, (bad, failure)).start()
    side.finish(ok, StubProducer().finish("x", exit_code=0))
    done = side.producer.wait([ok, bad], timeout=10)
    succeeded = done[ok].outcome
    assert done[ok].state == "done" and succeeded is not None and succeeded.exit_code == 0
    outcome = done[bad].outcome
    assert outcome is not None and outcome.exit_code == 1
    assert outcome.error_message == "no such meta"


def test_wait_gives_up_at_its_timeout(side: Side) -> None:
    rid = side.producer.enqueue("encode", meta={"profile": "hd"})
    waited = side.producer.wait([rid], timeout=0.2)
    assert not waited[rid].done and waited[rid].state == "queued"
