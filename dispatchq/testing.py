"""An in-memory stand-in for the producer side, for testing a service without Redis.

`StubProducer` takes the calls a service makes of `dispatchq.producer.api.Producer`
(`enqueue`, `result`, `wait`) with the same validation, the same errors and the same
answers (tests/producer/test_contract.py holds them all to one contract), and keeps every
request in memory; `AsyncStubProducer` does the same for `AsyncProducer`, awaited.
Nothing is dispatched: a request stays `queued` until the test says how it ends, with
`finish`::

    from dispatchq.testing import StubProducer

    def test_my_service_enqueues_one_encode() -> None:
        producer = StubProducer()
        my_service.handle_upload(producer, "a.mov")          # calls producer.enqueue(...)
        [request] = producer.requests.values()
        assert request.job_id == "video-encode" and request.meta["profile"] == "1080p"
        producer.finish(request.request_id, exit_code=0)
        assert producer.wait([request.request_id])[request.request_id].outcome.exit_code == 0
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dispatchq.core.outcome import Outcome, OutcomeRecorder
from dispatchq.core.request import DispatchRequest, is_request_id, request_digest
from dispatchq.core.transcript import Dispatched, EvalFinished, MonitorStarted
from dispatchq.producer.api import DONE, UNKNOWN, RequestStatus
from dispatchq.producer.enqueue import NewRequest, conflict, prepare
from dispatchq.store.records import RequestState

__all__ = ["AsyncStubProducer", "StubProducer"]


class StubProducer:
    """`Producer`'s enqueue, result and wait, in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: dict[str, DispatchRequest] = {}
        """Every request enqueued, by request ID, in the order they came."""
        self.payloads: dict[str, bytes] = {}
        """The inline payload of each request that gave one."""
        self._outcomes: dict[str, Outcome] = {}
        self._digests: dict[str, str] = {}
        self._changed = threading.Condition()
        self._listeners: list[Callable[[], None]] = []

    def listen(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each `finish` (`AsyncStubProducer` wakes its waits so)."""
        with self._changed:
            self._listeners.append(listener)

    def unlisten(self, listener: Callable[[], None]) -> None:
        with self._changed:
            self._listeners.remove(listener)

    def __enter__(self) -> StubProducer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close: there for `Producer`'s shape."""

    def enqueue(
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
        """As `Producer.enqueue`: validated alike; the same ID again is a no-op, an ID that
        names another request raises `InvalidRequest`."""
        new = NewRequest(
            job_id, payload=payload, payload_ref=payload_ref, meta=meta, request_id=request_id,
            namespace=namespace, detach=detach, id_prefix_template=id_prefix_template,
            priority=priority, notify_url=notify_url, tenant=tenant, until=until,
            wait_timeout=wait_timeout,
        )  # fmt: skip
        [(request, _, _)] = prepare([new])
        rid = request.request_id
        digest = request_digest(request.to_message())
        with self._changed:
            if rid in self._digests:
                if self._digests[rid] != digest:
                    raise conflict(rid)
                return rid
            self.requests[rid], self._digests[rid] = request, digest
            if payload is not None:
                self.payloads[rid] = bytes(payload)
        return rid

    def result(self, request_id: str) -> RequestStatus:
        """As `Producer.result`: `done` with its outcome, `queued`, or `unknown`."""
        with self._changed:
            outcome = self._outcomes.get(request_id)
            if outcome is not None:
                return RequestStatus(request_id, DONE, None, outcome)
            if request_id in self.requests:
                return RequestStatus(request_id, RequestState.QUEUED.value)
            return RequestStatus(request_id, UNKNOWN)

    def wait(
        self, request_ids: Iterable[str], timeout: float | None = None
    ) -> dict[str, RequestStatus]:
        """As `Producer.wait`: until every request is done, or `timeout` seconds."""
        ids = list(dict.fromkeys(request_ids))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                pending = [r for r in ids if r not in self._outcomes and is_request_id(r)]
                left = None if deadline is None else deadline - time.monotonic()
                if not pending or (left is not None and left <= 0):
                    break
                self._changed.wait(left)
        return {rid: self.result(rid) for rid in ids}

    def finish(
        self,
        request_id: str,
        exit_code: int = 0,
        *,
        message: str = "",
        outcome: Outcome | None = None,
        child: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """End a request as a worker would have: exit code 0 (scheduled, or `until`
        finished: succeeded), 2 (placement failure, or a failed child) or 1 (an error,
        with `message`), or the `outcome` given. Wakes whoever waits for it."""
        with self._changed:
            request = self.requests.get(request_id)
            job_id = request.job_id if request is not None else ""
            if outcome is None:
                outcome = _outcome(job_id, exit_code, message, child)
            self._outcomes[request_id] = outcome
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
        return outcome


class AsyncStubProducer:
    """`AsyncProducer`'s enqueue, result and wait, in memory: a `StubProducer` (`stub`,
    whose `finish` ends a request, from any thread) behind coroutines. A wait sleeps until
    a `finish` wakes it, as the real one until an outcome is published."""

    def __init__(self, stub: StubProducer | None = None) -> None:
        self.stub = stub or StubProducer()

    @property
    def requests(self) -> dict[str, DispatchRequest]:
        return self.stub.requests

    async def __aenter__(self) -> AsyncStubProducer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to close: there for `AsyncProducer`'s shape."""

    async def enqueue(self, job_id: str, **fields: Any) -> str:
        """As `AsyncProducer.enqueue`."""
        return self.stub.enqueue(job_id, **fields)

    async def result(self, request_id: str) -> RequestStatus:
        """As `AsyncProducer.result`."""
        return self.stub.result(request_id)

    async def wait(
        self, request_ids: Iterable[str], timeout: float | None = None
    ) -> dict[str, RequestStatus]:
        """As `AsyncProducer.wait`: until every request is done, or `timeout` seconds."""
        ids = list(dict.fromkeys(request_ids))
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        self.stub.listen(wake)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    statuses = [self.stub.result(rid) for rid in ids]
                    if all(s.done or not is_request_id(s.request_id) for s in statuses):
                        break
                    await changed.wait()
        except TimeoutError:
            pass
        finally:
            self.stub.unlisten(wake)
        return {rid: self.stub.result(rid) for rid in ids}

    def finish(self, request_id: str, exit_code: int = 0, **options: Any) -> Outcome:
        """`StubProducer.finish`."""
        return self.stub.finish(request_id, exit_code, **options)


def _outcome(
    job_id: str, exit_code: int, message: str, child: Mapping[str, Any] | None
) -> Outcome:
    """The outcome a worker stores: dispatched, its evaluation followed to complete (0) or
    to a placement failure (2); or refused (1)."""
    if exit_code == 1:
        return Outcome.failed(job_id, kind="nomad", message=message or "failed")
    if exit_code not in (0, 2):
        raise ValueError(f"exit_code must be 0, 1 or 2, not {exit_code!r}")
    child_id = f"{job_id}/dispatch-{int(time.time())}-{uuid.uuid4().hex[:8]}"
    eval_id = str(uuid.uuid4())
    recorder = OutcomeRecorder(job_id)
    recorder.emit(Dispatched(child_id, eval_id, True))
    recorder.emit(MonitorStarted(eval_id))
    recorder.emit(EvalFinished(eval_id, "complete", exit_code == 2))
    outcome = recorder.outcome()
    if child is not None:
        outcome.child = dict(child)
    return outcome
