"""The callers' library on asyncio: `AsyncProducer`, the twin of `Producer` for FastAPI,
Starlette, aiohttp and other asyncio services.

    async with AsyncProducer() as producer:
        rid = await producer.enqueue("video-encode", payload=b"...", until="finished")
        status = (await producer.wait([rid], timeout=600))[rid]

Same names, arguments, validation, errors and results as `Producer`, on redis-py's asyncio
client: nothing blocks the event loop. Waiting is woken by the outcome itself: the step
that stores an outcome publishes it on the result key's channel (what Celery's backend
does), and one `OutcomeWatch` per producer holds one pub/sub connection for every wait in
the process, subscribing to a request's channel while something waits for it. A cancelled
wait leaves nothing behind: its subscription goes with the last waiter of that request.

Run in a worker thread (`asyncio.to_thread`), through the synchronous client's own code:
the Nomad calls (a batch's preflight, stopping a cancelled batch's children) and the batch
operations that are not on a request's path (`retry_batch`, `cancel_batch`,
`batch_results`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, cast

import redis
import redis.asyncio
import structlog

from dispatchq.config.settings import Settings, load_settings
from dispatchq.core.request import TENANT_PATTERN, TENANT_TEXT, check_notify_url, is_request_id
from dispatchq.producer.api import (
    DONE,
    Producer,
    RequestStatus,
    check_max_attempts,
    status_of,
)
from dispatchq.producer.batch import BatchPlan, as_items, new_batch_id
from dispatchq.producer.batch import preflight as check_items
from dispatchq.producer.batch_input import BatchItem
from dispatchq.producer.enqueue import (
    ALL,
    CHECK,
    CHUNK,
    CONFLICT,
    EACH,
    InvalidRequest,
    NewRequest,
    Prepared,
    chunk_commands,
    conflict,
    not_replicated,
    prepare,
)
from dispatchq.store import keys
from dispatchq.store.batches import BatchStatus, queue_creation
from dispatchq.store.completion import parse_entry
from dispatchq.store.results import outcome_from_meta
from dispatchq.store.retries import RetryReport
from dispatchq.store.scripts import SCRIPTS

log = structlog.get_logger(__name__)

OnDone = Callable[[RequestStatus], object]
"""Called with each request's status as it is done; awaited when it returns an awaitable."""


class AsyncEnqueuer:
    """`Enqueuer`'s twin: the same chunks, the same script, the same flags."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        queue: str,
        result_ttl: int,
        blob_ttl: int,
        min_replicas: int = 0,
        replica_timeout: float = 2.0,
    ) -> None:
        self.client = client
        self.queue = queue
        self.result_ttl = result_ttl
        self.blob_ttl = blob_ttl
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout

    async def enqueue(self, requests: Iterable[NewRequest]) -> list[tuple[str, int]]:
        return await self.send(prepare(requests), EACH)

    async def clashes(self, listed: list[Prepared]) -> list[int]:
        chunks = [listed[i : i + CHUNK] for i in range(0, len(listed), CHUNK)]
        pipe = self.client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.exists(*(keys.request(request.request_id) for request, _, _ in chunk))
        counts = await pipe.execute()
        found: list[int] = []
        for n, count in enumerate(counts):
            if count:
                flags = await self.send(chunks[n], CHECK)
                found += [n * CHUNK + i for i, (_, flag) in enumerate(flags) if flag == CONFLICT]
        return found

    async def send(self, listed: list[Prepared], mode: str) -> list[tuple[str, int]]:
        if not listed:
            return []
        sha = await self.client.script_load(SCRIPTS["enqueue"])
        out: list[tuple[str, int]] = []
        for start in range(0, len(listed), CHUNK):
            commands, ids = chunk_commands(self, listed[start : start + CHUNK], sha, mode)
            pipe = self.client.pipeline(transaction=False)
            for argv in commands:
                pipe.execute_command(*argv)
            answers = await pipe.execute()
            out += list(zip(ids, answers[-1], strict=True))
        if self.min_replicas and mode != CHECK:
            pipe = self.client.pipeline(transaction=False)
            pipe.publish(keys.RECEIPT, "")
            pipe.execute_command("WAIT", self.min_replicas,
                                 max(1, round(self.replica_timeout * 1000)))  # fmt: skip
            _, confirmed = await pipe.execute()
            if int(confirmed) < self.min_replicas:
                raise not_replicated(self, len(out), int(confirmed))
        return out


class OutcomeWatch:
    """One pub/sub connection for every wait of a producer: a request's result channel is
    subscribed while at least one wait is on it, and each outcome published there wakes
    them all. 10,000 waits are 10,000 channels on one connection, not 10,000 connections.

    A reader task reads the connection; a wait subscribes (and waits for Redis to confirm
    it) before it reads the result key, so an outcome stored in between cannot be missed.
    When the connection is lost, redis-py subscribes again as it reconnects, and the reader
    reads every watched result key once: what was published meanwhile is found there."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pubsub = client.pubsub()
        self._waiters: dict[str, set[asyncio.Future[Any]]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._subscribed: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def channels(self) -> int:
        """Channels subscribed now (one per request something waits for)."""
        return len(self._subscribed)

    async def watch(self, request_ids: list[str]) -> dict[str, asyncio.Future[Any]]:
        """A future per request, resolved with its `Outcome` once one is published."""
        loop = asyncio.get_running_loop()
        futures = {rid: loop.create_future() for rid in request_ids}
        for rid, future in futures.items():
            self._waiters.setdefault(rid, set()).add(future)
        new = [rid for rid in request_ids if rid not in self._subscribed]
        if new:
            confirmations = []
            for rid in new:
                self._subscribed.add(rid)
                self._confirmed[rid] = loop.create_future()
                confirmations.append(self._confirmed[rid])
            try:
                await self._pubsub.subscribe(*(keys.celery_result(rid) for rid in new))
                self._start_reader()
                await asyncio.gather(*confirmations)
            except BaseException:
                self.forget(futures)
                raise
        return futures

    def forget(self, futures: Mapping[str, asyncio.Future[Any]]) -> None:
        """The waits are over (done, timed out or cancelled): a channel nothing waits on any
        more is unsubscribed, by a task of this watch's (this may run in a cancelled task)."""
        idle = []
        for rid, future in futures.items():
            future.cancel()
            waiting = self._waiters.get(rid)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[rid]
                    idle.append(rid)
        if idle and not self._closed:  # (closed: the connection goes, and its channels)
            chore = asyncio.get_running_loop().create_task(self._unsubscribe(idle))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)

    async def _unsubscribe(self, request_ids: list[str]) -> None:
        gone = [rid for rid in request_ids if rid not in self._waiters and rid in self._subscribed]
        for rid in gone:
            self._subscribed.discard(rid)
            confirmed = self._confirmed.pop(rid, None)
            if confirmed is not None:
                confirmed.cancel()
        if gone:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(*(keys.celery_result(rid) for rid in gone))

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        prefix = keys.CELERY_RESULT_PREFIX
        pause = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
                log.warning("wait.notifications_lost", error=str(err)[:200], retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                with contextlib.suppress(redis.RedisError, OSError):
                    await self._pubsub.connect()  # type: ignore[no-untyped-call]  # resubscribes
                    await self._recheck()
                    pause = 0.1
                continue
            if message is None:
                continue
            channel = message["channel"]
            rid = (channel.decode() if isinstance(channel, bytes) else str(channel))[
                len(prefix) :
            ]
            if message["type"] == "subscribe":
                confirmed = self._confirmed.get(rid)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            elif message["type"] == "message":
                self._resolve(rid, message["data"])

    async def _recheck(self) -> None:
        """Read every watched result key: what was published while the connection was
        lost is there."""
        rids = list(self._waiters)
        if not rids:
            return
        values = await self.client.mget([keys.celery_result(rid) for rid in rids])
        for rid, value in zip(rids, values, strict=True):
            if value:
                self._resolve(rid, value)

    def _resolve(self, rid: str, value: Any) -> None:
        """Wake the waits of `rid` with its outcome, if `value` (a stored result) is one."""
        try:
            meta = json.loads(value)
        except ValueError:
            return
        outcome = outcome_from_meta(meta) if isinstance(meta, dict) else None
        if outcome is None:
            return
        for future in list(self._waiters.get(rid, ())):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for chore in list(self._chores):
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError, OSError):
                await chore
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()


class AsyncProducer:
    """`Producer` for asyncio: enqueue, dispatch_batch, result, wait, batch status and
    progress, retry and cancel, completion events (see the module doc)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis = self.settings.redis.async_client()
        self.enqueuer = AsyncEnqueuer(
            self.redis,
            queue=self.settings.queue,
            result_ttl=self.settings.result_ttl,
            blob_ttl=self.settings.blob_ttl,
            min_replicas=self.settings.redis_min_replicas,
            replica_timeout=self.settings.redis_replica_timeout,
        )
        self._watch: OutcomeWatch | None = None
        self._sync: Producer | None = None

    @property
    def watch(self) -> OutcomeWatch:
        """The one pub/sub connection of this producer's waits, opened at the first wait."""
        if self._watch is None:
            self._watch = OutcomeWatch(self.redis)
        return self._watch

    def _synchronous(self) -> Producer:
        """The synchronous client, for what runs in a worker thread (module doc)."""
        if self._sync is None:
            self._sync = Producer(self.settings)
        return self._sync

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(
        self,
        job_id: str,
        *,
        payload: bytes | None = None,
        payload_ref: str | None = None,
        meta: Mapping[str, str] | None = None,
        request_id: str | None = None,
        namespace: str | None = None,
        detach: bool = False,
        id_prefix_template: str = "",
        priority: int = 0,
        notify_url: str | None = None,
        tenant: str | None = None,
        until: str = "scheduled",
        wait_timeout: float | None = None,
    ) -> str:
        """`Producer.enqueue`."""
        request = NewRequest(
            job_id, payload=payload, payload_ref=payload_ref, meta=meta, request_id=request_id,
            namespace=namespace, detach=detach, id_prefix_template=id_prefix_template,
            priority=priority, notify_url=notify_url, tenant=tenant, until=until,
            wait_timeout=wait_timeout,
        )  # fmt: skip
        [(rid, flag)] = await self.enqueuer.enqueue([request])
        if flag == CONFLICT:
            raise conflict(rid)
        return rid

    async def dispatch_batch(
        self,
        job_id: str,
        items: Iterable[BatchItem | dict[str, Any]],
        *,
        batch_id: str | None = None,
        namespace: str | None = None,
        detach: bool = False,
        preflight: bool = True,
        notify_url: str | None = None,
        tenant: str | None = None,
        until: str = "scheduled",
        max_attempts: int | None = None,
    ) -> str:
        """`Producer.dispatch_batch` (the preflight's read of the job in a worker thread)."""
        if tenant is not None and not re.fullmatch(TENANT_PATTERN, tenant):
            raise InvalidRequest(TENANT_TEXT)
        check_max_attempts(max_attempts, until)
        listed = as_items(items)
        if notify_url is not None:
            check_notify_url(notify_url)
        if preflight:
            nomad = self._synchronous().nomad
            job, _ = await asyncio.to_thread(nomad.read_job, job_id, namespace=namespace)
            check_items(job, listed)
        plan = BatchPlan.of(
            job_id, listed, batch_id=batch_id or new_batch_id(), namespace=namespace,
            detach=detach, notify_url=notify_url, tenant=tenant, until=until,
            max_attempts=max_attempts,
        )  # fmt: skip
        plan.refuse_clashes(await self.enqueuer.clashes(plan.listed))
        pipe = self.redis.pipeline(transaction=False)
        queue_creation(pipe, self.settings.result_ttl, plan.batch_id, plan.job_id,
                       total=plan.total, **plan.record)  # fmt: skip
        await pipe.execute()
        plan.counted(await self.enqueuer.send(plan.listed, ALL))
        return plan.batch_id

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        """`Producer.batch_status`: one read, whatever the batch's size."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(keys.batch(batch_id)))
        return BatchStatus.from_hash(batch_id, raw) if raw else None

    async def batch_progress(
        self, batch_id: str, *, every: float = 1.0
    ) -> AsyncIterator[BatchStatus]:
        """The batch's status each time it changed, read every `every` seconds (one HGETALL
        of its counters, whatever its size), up to and including the one that says it
        finished. Raises KeyError for no such batch."""
        last: dict[str, Any] | None = None
        while True:
            status = await self.batch_status(batch_id)
            if status is None:
                raise KeyError(batch_id)
            shown = status.to_json()
            if shown != last:
                last = shown
                yield status
            if status.finished:
                return
            await asyncio.sleep(every)

    async def retry_batch(self, batch_id: str) -> RetryReport:
        """`Producer.retry_batch`, in a worker thread."""
        return await asyncio.to_thread(self._synchronous().retry_batch, batch_id)

    async def cancel_batch(
        self, batch_id: str, *, stop_dispatched: bool = False
    ) -> tuple[int, list[str]]:
        """`Producer.cancel_batch`, in a worker thread (stopping children calls Nomad)."""
        sync = self._synchronous()
        return await asyncio.to_thread(sync.cancel_batch, batch_id, stop_dispatched=stop_dispatched)

    async def batch_results(self, batch_id: str, *, failed_only: bool = False) -> list[str]:
        """`Producer.batch_results`, read whole in a worker thread: one JSON line per item."""
        sync = self._synchronous()
        return await asyncio.to_thread(
            lambda: list(sync.batch_results(batch_id, failed_only=failed_only))
        )

    async def result(self, request_id: str) -> RequestStatus:
        """`Producer.result`: the request's state now; its outcome once terminal."""
        return (await self._results([request_id]))[0]

    async def _results(self, request_ids: list[str]) -> list[RequestStatus]:
        pipe = self.redis.pipeline(transaction=False)
        for rid in request_ids:
            pipe.get(keys.celery_result(rid))
            pipe.hgetall(keys.request(rid))
        answers = await pipe.execute()
        return [status_of(rid, answers[2 * n], answers[2 * n + 1])
                for n, rid in enumerate(request_ids)]  # fmt: skip

    async def wait(
        self,
        request_ids: Iterable[str],
        timeout: float | None = None,
        on_done: OnDone | None = None,
    ) -> dict[str, RequestStatus]:
        """`Producer.wait`, woken by each outcome as it is stored (no polling, no thread):
        every request done, or `timeout` seconds passed; `on_done` (a function or a
        coroutine function) is called once per request as it finishes. Cancelling the
        task that awaits this leaves no subscription behind."""
        ids = list(dict.fromkeys(request_ids))
        reported: set[str] = set()

        async def done(status: RequestStatus) -> None:
            if on_done is not None and status.request_id not in reported:
                reported.add(status.request_id)
                called = on_done(status)
                if inspect.isawaitable(called):
                    await called

        # (A text that cannot be a request ID, "" say, names nothing that could come.)
        watched = [rid for rid in ids if is_request_id(rid)]
        statuses: dict[str, RequestStatus] = {}
        futures: dict[str, asyncio.Future[Any]] = {}
        try:
            async with asyncio.timeout(timeout):
                futures = await self.watch.watch(watched) if watched else {}
                # subscribed first, read second: an outcome stored in between is not missed
                statuses = dict(zip(ids, await self._results(ids), strict=True))
                for status in statuses.values():
                    if status.done:
                        await done(status)
                waiting = {futures[rid]: rid for rid in watched if not statuses[rid].done}
                while waiting:
                    arrived, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    for future in arrived:
                        rid = waiting.pop(future)
                        statuses[rid] = RequestStatus(rid, DONE, statuses[rid].record,
                                                      future.result())  # fmt: skip
                        await done(statuses[rid])
        except TimeoutError:
            pass  # what is not done is read once more, below
        finally:
            if futures:
                self.watch.forget(futures)
        left = [rid for rid in ids if rid not in statuses or not statuses[rid].done]
        for status in await self._results(left) if left else []:
            statuses[status.request_id] = status
        return {rid: statuses[rid] for rid in ids}

    async def events(
        self, *, group: str, consumer: str, block: float = 5.0, start: str = "$"
    ) -> AsyncIterator[dict[str, Any]]:
        """`Producer.events`: completion events as `consumer` of the consumer group `group`,
        each acknowledged when the loop asks for the next one. Endless: break to stop."""
        stream = self.settings.event_stream.key
        if not stream:
            raise ValueError("the event stream is off (DISPATCHQ_EVENTS_STREAM is empty)")
        try:
            await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        while True:
            answer: Any = await self.redis.xreadgroup(
                group, consumer, {stream: ">"}, count=100, block=int(block * 1000)
            )
            for _, entries in answer or []:
                for entry_id, fields in entries:
                    event, _ = parse_entry(fields)
                    event["stream_id"] = (
                        entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    )
                    yield event
                    await self.redis.xack(stream, group, entry_id)

