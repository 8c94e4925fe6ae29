"""Fakes of the service's parts (`dispatchq.core.service`'s Nomad, Payloads and Records): a
scripted Nomad client, in-memory payloads and an in-memory record store that keeps to the
record's state machine (`dispatchq.store.records.TRANSITIONS`). The core's tests run on these in
milliseconds; the Lua scripts themselves are tested against a real redis-server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dispatchq.core.request import DispatchRequest
from dispatchq.errors import NomadError, PayloadError
from dispatchq.nomad.client import DispatchResponse
from dispatchq.nomad.config import NomadConfig
from dispatchq.store import runtimes
from dispatchq.store.records import (
    TRANSITIONS,
    Begun,
    Ending,
    RequestRecord,
    RequestState,
    StoredResult,
)

EVAL = "31199841-1111-2222-3333-444444444444"
CHILD = "video-encode/dispatch-1485379325-cb38d00d"
ALLOC = "8254b85f-1111-2222-3333-444444444444"
NODE = "82ff9c50-1111-2222-3333-444444444444"

Answer = Any  # a JSON answer, or a NomadError to raise


def evaluation(eval_id: str = EVAL, status: str = "complete", **extra: Any) -> dict[str, Any]:
    return {"ID": eval_id, "JobID": CHILD, "Status": status, "CreateIndex": 13,
            "ModifyIndex": 13, **extra}  # fmt: skip


def allocation(client: str = "pending") -> dict[str, Any]:
    return {"ID": ALLOC, "NodeID": NODE, "TaskGroup": "encode", "DesiredStatus": "run",
            "ClientStatus": client, "ClientDescription": "", "CreateIndex": 14}  # fmt: skip


def dispatched(eval_id: str = EVAL, child: str = CHILD) -> DispatchResponse:
    return DispatchResponse(child, eval_id, 13, 12, 13)


@dataclass
class Sent:
    request: DispatchRequest
    payload: bytes | None
    idempotency_token: str | None


class FakeNomad:
    """Answers in order (the last answer repeats): `dispatches` to dispatch calls, and per
    evaluation ID `evals` and `allocs` to reads; an answer that is a NomadError is raised.
    Records what it was sent and read."""

    def __init__(
        self,
        dispatches: list[DispatchResponse | NomadError] | None = None,
        evals: dict[str, list[Answer]] | None = None,
        allocs: dict[str, list[Answer]] | None = None,
        job_evals: list[dict[str, Any]] | None = None,
    ) -> None:
        self.config = NomadConfig()
        self.dispatches = dispatches or [dispatched()]
        self.evals = evals if evals is not None else {EVAL: [evaluation()]}
        self.allocs = allocs if allocs is not None else {EVAL: [[allocation()]]}
        self.job_evals = job_evals or []
        self.sent: list[Sent] = []
        self.reads: list[tuple[str, str]] = []
        self.closed = False

    @staticmethod
    def _next(answers: list[Any]) -> Any:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, NomadError):
            raise answer
        return answer

    def dispatch(
        self,
        request: DispatchRequest,
        payload: bytes | None = None,
        *,
        idempotency_token: str | None = None,
    ) -> DispatchResponse:
        self.sent.append(Sent(request, payload, idempotency_token))
        answer: DispatchResponse = self._next(self.dispatches)
        return answer

    def read_evaluation(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[dict[str, Any], int]:
        self.reads.append(("eval", eval_id))
        answer: dict[str, Any] = self._next(self.evals[eval_id])
        return answer, int(answer["ModifyIndex"])

    def evaluation_allocations(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        self.reads.append(("allocs", eval_id))
        answer: list[dict[str, Any]] = self._next(self.allocs[eval_id])
        return answer, 14

    def job_evaluations(self, job_id: str, *, namespace: str | None = None) -> list[dict[str, Any]]:
        self.reads.append(("job_evals", job_id))
        return self.job_evals

    def close(self) -> None:
        self.closed = True


class FakePayloads:
    """`blob:sha256:<digest>` references read from `blobs` (as the record store's begin
    reads them); `data:,<text>` references are their text; anything else is refused."""

    def __init__(self) -> None:
        self.closed = False

    def blob_key(self, ref: str | None) -> str | None:
        return ref if ref and ref.startswith("blob:") else None

    def resolve(self, ref: str | None, blob: bytes | None = None) -> bytes | None:
        if not ref:
            return None
        if ref.startswith("blob:"):
            if blob is None:
                raise PayloadError(f"payload {ref} not found (expired?)")
            return blob
        if ref.startswith("data:,"):
            return ref[len("data:,") :].encode()
        raise PayloadError(f"unsupported payload reference {ref!r}")

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeRecords:
    """The request records and batch counters in memory, written as the scripts of
    `dispatch/lua` write them; every change of state must be one of `TRANSITIONS`."""

    records: dict[str, dict[str, str]] = field(default_factory=dict)
    batches: dict[str, dict[str, int]] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    blobs: dict[str, bytes] = field(default_factory=dict)
    results: dict[str, StoredResult] = field(default_factory=dict)
    states: list[tuple[str, str]] = field(default_factory=list)
    """Every (request ID, state) written, in order."""
    partials: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The outcome so far of each request handed off (`keys.partial`)."""
    followed: set[str] = field(default_factory=set)
    """The follow set (request IDs handed off to the tracker)."""

    def _state(self, request_id: str, state: RequestState) -> None:
        record = self.records.setdefault(request_id, {})
        old = RequestState(record["state"]) if "state" in record else None
        assert state == old or state in TRANSITIONS[old], f"{old} -> {state}"
        record["state"] = state.value
        self.states.append((request_id, state.value))

    def enqueue(self, request_id: str) -> None:
        """What enqueue.lua does to a new request."""
        self._state(request_id, RequestState.QUEUED)

    def of(self, request_id: str, batch_id: str | None = None) -> FakeRecord:
        return FakeRecord(self, request_id, batch_id)

    def batch_cancelled(self, batch_id: str) -> bool:
        return batch_id in self.cancelled


@dataclass
class FakeRecord:
    """One request's record in `FakeRecords`, written as the scripts write it (held with
    `dispatchq.store.records.RecordHandle` to one contract: tests/store/test_record_contract.py)."""

    store: FakeRecords
    request_id: str
    batch_id: str | None = None

    @property
    def _fields(self) -> dict[str, str]:
        return self.store.records.setdefault(self.request_id, {})

    def begin(self, job_id: str, *, read: str | None = None, digest: str = "") -> Begun:
        record = self.store.records.get(self.request_id, {})
        if record.get("digest") not in (None, digest):
            return Begun("", "", False, None, "refused: another request has this ID")
        child, eval_id = record.get("dispatched_job_id", ""), record.get("eval_id", "")
        cancelled = bool(self.batch_id) and self.batch_id in self.store.cancelled
        if not child and not cancelled:
            self.store._state(self.request_id, RequestState.DISPATCHING)
            self._fields["job_id"] = job_id
            self._fields.setdefault("started_at", repr(time.time()))
            if digest:
                self._fields.setdefault("digest", digest)
            if self.batch_id:
                self._fields["batch_id"] = self.batch_id
        value = self.store.blobs.get(read.removeprefix("blob:")) if read else None
        taken = self.store.records.get(self.request_id, {}).get("started_at")
        return Begun(child, eval_id, cancelled, value, "", float(taken) if taken else None)

    def dispatched(self, dispatched_job_id: str, eval_id: str) -> None:
        self.store._state(self.request_id, RequestState.MONITORING)
        self._fields.update(dispatched_job_id=dispatched_job_id, eval_id=eval_id)

    def done(self, ending: Ending) -> bool:
        record = self.store.records.get(self.request_id, {})
        if ending.digest and record.get("digest") not in (None, ending.digest):
            return False  # another request's record: nothing written
        if record.get("state") == RequestState.DONE.value:
            return True  # the first finish wins: a late duplicate changes nothing
        self.store._state(self.request_id, RequestState.DONE)
        self._fields["exit_code"] = str(ending.exit_code)
        if self.batch_id:
            counters = self.store.batches.setdefault(self.batch_id, {})
            run_time = runtimes.field_of(ending.outcome)
            for name in ("done", f"exit:{ending.exit_code}", *([run_time] if run_time else [])):
                counters[name] = counters.get(name, 0) + 1
        if ending.result is not None:
            self.store.results[self.request_id] = ending.result
        return True

    def hand_off(
        self,
        namespace: str,
        partial: dict[str, Any],
        deadline: float | None,
        notify_url: str | None = None,
    ) -> bool:
        """What handoff.lua does: scheduled (unless running), the follow fields, followed."""
        state = self.store.records.get(self.request_id, {}).get("state")
        if state == RequestState.DONE.value:
            return False
        if state != RequestState.RUNNING.value:
            self.store._state(self.request_id, RequestState.SCHEDULED)
        self._fields["namespace"] = namespace
        self.store.partials[self.request_id] = partial
        if deadline is not None:
            self._fields["deadline"] = repr(deadline)
        if notify_url:
            self._fields["notify_url"] = notify_url
        self.store.followed.add(self.request_id)
        return True

    def load(self) -> RequestRecord | None:
        raw = self.store.records.get(self.request_id)
        if not raw:
            return None
        fields = {k.encode(): v.encode() for k, v in raw.items()}
        return RequestRecord.from_hash(self.request_id, fields)


def stored_result(request_id: str, outcome: dict[str, Any]) -> StoredResult:
    """A stand-in for the result backend's encoding (`DispatchService.results`)."""
    return StoredResult(f"celery-task-meta-{request_id}", repr(outcome), 0)
