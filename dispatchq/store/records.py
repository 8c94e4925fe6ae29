"""The request record: its fields, its states and every script that writes it, here.

`dispatchq:request:<id>` (see `keys`) is one hash per request: the caller-visible state
and the worker's write-ahead log. Every script that writes it is a `.lua` file in `lua/`
beside this module (`dispatchq.store.scripts`); the fields, who writes each and when:

- `state` (enqueue.lua, begin.lua, dispatched.lua, handoff.lua, stage.lua, done.lua,
  replay.lua, retry.lua): the state machine `TRANSITIONS` below; `queued` when the producer
  enqueues it (again) or claims it as a batch item's next attempt (retry.lua),
  `dispatching` when a worker takes it, `monitoring` once Nomad answered the dispatch,
  `done` with its outcome; a request that follows its child (`until` finished)
  goes from `monitoring` to `scheduled` when its evaluation is done (placed, or blocked
  and waiting for capacity: handoff.lua), then `running` once the tracker saw an
  allocation run (stage.lua), and `done` when the child ended (done.lua, from the
  tracker); a replayed dead letter goes back to `queued`.
- `namespace` (handoff.lua): the child's namespace, for the tracker's reads.
- `deadline` (handoff.lua; dropped by done.lua): the Unix time a followed child's
  `wait_timeout` runs out. Its outcome so far (stored form, JSON, zlib-compressed) is not
  a field but the key `keys.partial` beside the record (handoff.lua; deleted by done.lua):
  a hash whose values all stay under 64 bytes keeps Redis's compact encoding, half the
  memory of a followed child (docs/following.md).
- `job_id` (begin.lua): the parameterized job, when a worker takes the request.
- `batch_id` (begin.lua): the request's batch, when a worker takes it, for one in a batch.
- `started_at` (begin.lua): Unix time a worker first took it; `RequestRecord.started_at`
  (`wait_timeout` counts from it).
- `dispatched_job_id`, `eval_id` (dispatched.lua): the child and its evaluation, written
  the moment Nomad answers; a redelivered request that finds them resumes monitoring and
  never dispatches again (begin.lua reads them).
- `digest` (enqueue.lua, retry.lua; begin.lua for a request with no record): what the request's
  message says (`dispatchq.core.request.request_digest`). A message with the same ID and another
  digest, or one claiming a batch with no record made at enqueue, is not this request:
  begin.lua and done.lua refuse it without writing anything.
- `exit_code` (done.lua; cleared by replay.lua): the outcome's exit code, once done.
- `ends` (done.lua, in the step that stores the outcome; kept by enqueue.lua when it
  enqueues a request again): how many times the request ended; the attempt of its
  completion event (`dispatchq.store.completion`).
- `deliveries` (fetch_fair.lua, `dispatchq.store.dlq.count_delivery`; cleared by replay.lua):
  deliveries of the request's messages, for the delivery cap.
- `notify_url` (handoff.lua): a followed request's own notify_url, for its completion
  event when the tracker stores its end (`finish_followed`); only when it has one (a URL
  over 64 bytes costs that record the compact encoding, not the others).
- `attempt`, `item` (retry.lua): for a batch item's attempt after the first, its number
  and the item's first request ID (`keys.attempt_id`); done.lua reads them to decide an
  automatic retry (`--max-attempts`).
- `webhook` (webhook_status.lua, by the notifier): how its completion event's webhook
  went (`dispatchq.store.webhook_status`).

A request of a batch moves between its batch's state counters in the same scripts
(`batch_move`, `lua/_batch.lua`; see `dispatchq.store.batches`).

The TTL (result_ttl) is set by the enqueue (or by the take, for a record the take makes)
and renewed by the tracker's checks and by the end (stage.lua, done.lua), not by the take,
the write-ahead and the hand-off of a request a worker takes well within it: the commands
per request are few (bench/README.md). done.lua also stores the outcome under
the request's result key, in Celery's result format (`store_result` in `lua/_store.lua`,
the one place that stores and publishes an outcome; `dispatchq.broker.app`'s backend uses
it too). The endings a process stores at about the same time share one call of it
(`dispatchq.store.group`), their batches' counters written once per call.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from dispatchq.store import keys, webhook_status
from dispatchq.store.completion import EventStream, done_args, error_entry, stored_in_meta
from dispatchq.store.group import Call, GroupCommit, script_group
from dispatchq.store.scripts import SCRIPTS


class RequestState(StrEnum):
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    MONITORING = "monitoring"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    DONE = "done"


_STATES = frozenset(s.value for s in RequestState)

TRANSITIONS: dict[RequestState | None, frozenset[RequestState]] = {
    # enqueued; or, for a foreign producer's message (no record), taken or refused at once
    None: frozenset({RequestState.QUEUED, RequestState.DISPATCHING, RequestState.DONE}),
    # a replayed request that had dispatched resumes where it was: done, or followed on
    RequestState.QUEUED: frozenset(
        {RequestState.DISPATCHING, RequestState.SCHEDULED, RequestState.DONE}
    ),
    RequestState.DISPATCHING: frozenset({RequestState.MONITORING, RequestState.DONE}),
    RequestState.MONITORING: frozenset({RequestState.SCHEDULED, RequestState.DONE}),
    # `until` finished: the tracker follows the child from here
    RequestState.SCHEDULED: frozenset({RequestState.RUNNING, RequestState.DONE}),
    RequestState.RUNNING: frozenset({RequestState.SCHEDULED, RequestState.DONE}),
    RequestState.DONE: frozenset({RequestState.QUEUED}),  # enqueued again, or replayed
}
"""The states a record can go to from each (None: no record yet). A redelivery may write
its state again (dispatching, monitoring, scheduled); a rescheduled child goes from
running back to scheduled while it waits for its replacement; done is final until
enqueued again (a request that never dispatched) or replayed from the dead-letter list."""

FIELDS = (
    "state",
    "job_id",
    "batch_id",
    "started_at",
    "dispatched_job_id",
    "eval_id",
    "exit_code",
    "deliveries",
    "namespace",
    "deadline",
    "digest",
    "ends",
    "notify_url",
    "attempt",
    "item",
    "webhook",
)
"""Every field of the record (the docstring says who writes each, and when)."""
DELIVERIES = "deliveries"
"""The field counting the deliveries of the request's messages."""


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    state: RequestState
    job_id: str = ""
    batch_id: str = ""
    started_at: float | None = None
    dispatched_job_id: str = ""
    eval_id: str = ""
    exit_code: int | None = None
    namespace: str = ""
    deadline: float | None = None
    notify_url: str = ""
    attempt: int = 1
    webhook: dict[str, Any] = field(default_factory=dict)
    """How the webhook of its completion event went (`dispatchq.store.webhook_status`)."""

    @classmethod
    def from_hash(cls, request_id: str, raw: dict[bytes, bytes]) -> RequestRecord:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        state = data.get("state", RequestState.QUEUED.value)
        return cls(
            request_id=request_id,
            state=RequestState(state) if state in _STATES else RequestState.QUEUED,
            job_id=data.get("job_id", ""),
            batch_id=data.get("batch_id", ""),
            started_at=float(data["started_at"]) if "started_at" in data else None,
            dispatched_job_id=data.get("dispatched_job_id", ""),
            eval_id=data.get("eval_id", ""),
            exit_code=int(data["exit_code"]) if "exit_code" in data else None,
            namespace=data.get("namespace", ""),
            deadline=float(data["deadline"]) if data.get("deadline") else None,
            notify_url=data.get("notify_url", ""),
            attempt=int(data["attempt"]) if data.get("attempt") else 1,
            webhook=webhook_status.parse(data.get(webhook_status.FIELD, "")),
        )

    @property
    def dispatched(self) -> bool:
        return bool(self.dispatched_job_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "state": self.state.value,
            "job_id": self.job_id,
            "batch_id": self.batch_id or None,
            "dispatched_job_id": self.dispatched_job_id or None,
            "eval_id": self.eval_id or None,
        }


class Begun(NamedTuple):
    """What `RecordStore.begin` found."""

    dispatched_job_id: str  # "" unless a previous delivery dispatched the request
    eval_id: str
    cancelled: bool
    value: bytes | None
    refused: str = ""
    """Why the message is not the request its ID names ("" when it is)."""
    taken_at: float | None = None
    """When a worker first took the request (Unix time): `wait_timeout` counts from it."""


REFUSALS = {
    1: "another request already has this ID (its message says something else): refused",
    2: "the message claims batch {batch} but was not enqueued in it: refused",
    3: "its request ID ends in '~' and digits, the form of a batch item's attempt, which only "
    "dispatchq makes (with its record): refused",
}


@dataclass(frozen=True)
class StoredResult:
    """An outcome as the result backend stores it: under `key`, for `ttl` seconds (0: no
    expiry), encoded as its readers expect (`value`)."""

    key: str
    value: bytes | str
    ttl: int


PARTIAL_LEVEL = 6
"""zlib's level for a followed child's outcome so far: its JSON repeats its IDs (the
evaluation's, the allocation's), and compressed it is about half (every byte of a followed
child counts: 100,000 of them are held at once)."""

IN_RECORD = ("job_id", "dispatched_job_id", "eval_id")
"""Fields of a stored outcome the record holds too: left out of `keys.partial` (every
byte of a followed child counts) and put back by `with_record`."""


def with_record(partial: str, record: RequestRecord) -> dict[str, Any]:
    """A followed child's outcome so far (stored form), whole again."""
    data: dict[str, Any] = json.loads(partial)
    for name in IN_RECORD:
        value = getattr(record, name)
        if value:
            data[name] = value
    return data


MAX_BATCH_ERRORS = 50
"""A batch keeps the first errors only: enough to see what went wrong, bounded memory."""


CANCEL_FLAG_AGE = 0.05
"""Seconds a batch's cancel flag, once read, answers `RecordStore.batch_cancelled` in this
process: the requests of a batch that waited at the gate together read it once, not each
(a flag as fresh as the wait that calls for a look: the gate's RECHECK_AFTER)."""
CANCEL_FLAGS_KEPT = 1_000
"""Batches whose flag is kept at most (all forgotten at once past that)."""


class RecordStore:
    """Reads and writes request records with their TTL, and their batches' counters."""

    def __init__(self, client: redis.Redis, ttl: int, events: EventStream | None = None) -> None:
        self.client = client
        self.ttl = ttl
        self.events = events if events is not None else EventStream()
        # a worker's takes, write-aheads, hand-offs and endings: each a group of those at
        # about the same time
        self._endings: GroupCommit[Call, int] = GroupCommit(
            script_group(client.register_script(SCRIPTS["done"]))
        )
        self._takes: GroupCommit[Call, list[Any]] = GroupCommit(
            script_group(client.register_script(SCRIPTS["begin"]))
        )
        self._writes_ahead: GroupCommit[Call, int] = GroupCommit(
            script_group(client.register_script(SCRIPTS["dispatched"]))
        )
        self._hand_offs: GroupCommit[Call, int] = GroupCommit(
            script_group(client.register_script(SCRIPTS["handoff"]))
        )
        self._cancel_flags: dict[str, tuple[float, bool]] = {}  # batch: (read at, cancelled)
        self._stage = client.register_script(SCRIPTS["stage"])

    def of(self, request_id: str, batch_id: str | None = None) -> RecordHandle:
        """One request's record (of a batch, or none), to write without repeating its IDs."""
        return RecordHandle(self, request_id, batch_id)

    def load(self, request_id: str) -> RequestRecord | None:
        raw = self.client.hgetall(keys.request(request_id))
        return RequestRecord.from_hash(request_id, raw) if raw else None  # type: ignore[arg-type]

    def begin(
        self,
        request_id: str,
        job_id: str,
        batch_id: str | None,
        read: str | None = None,
        digest: str = "",
    ) -> Begun:
        """Take a request: the child and evaluation it names if it was dispatched before,
        whether its batch is cancelled, and the value of the key `read` (None if absent or
        not asked). Unless it was already dispatched or is cancelled, the record now says
        `dispatching` (and exists, for a message pushed without one by a foreign producer)."""
        batch = keys.batch(batch_id) if batch_id else ""
        child, eval_id, cancelled, value, refused, taken_at = self._takes.commit((
            [keys.request(request_id), *([read] if read else [])],
            [self.ttl, job_id, batch_id or "", time.time(), batch, digest,
             "1" if keys.is_reserved_id(request_id) else ""],
        ))  # fmt: skip
        why = REFUSALS[refused].format(batch=batch_id) if refused else ""
        return Begun(
            (child or b"").decode(), (eval_id or b"").decode(), bool(cancelled), value, why,
            float(taken_at),
        )  # fmt: skip

    def mark_dispatched(self, request_id: str, dispatched_job_id: str, eval_id: str) -> None:
        """The write-ahead record: from here on a redelivery resumes monitoring. Its batch
        counts it as taken still (`lua/_batch.lua`)."""
        self._writes_ahead.commit(([keys.request(request_id)], [dispatched_job_id, eval_id]))

    def mark_done(
        self,
        request_id: str,
        exit_code: int,
        batch_id: str | None,
        error: str = "",
        result: StoredResult | None = None,
        *,
        digest: str = "",
        outcome: dict[str, Any] | None = None,
        notify_url: str | None = None,
    ) -> bool:
        """Final state; counted once in the batch, with the error among its first ones, and
        `result` stored, all in one step; a request already done keeps what it stored.
        With `outcome` (its stored form) and the event stream on, the same step appends the
        request's completion event (to be POSTed to `notify_url`, if any) and its batch's
        when it is the batch's last (`dispatchq.store.completion`).
        With `digest` (a refused message's), nothing is written if the record says the
        request is another one: returns False then."""
        batch = keys.batch(batch_id) if batch_id else ""
        errors = keys.batch_errors(batch_id) if batch_id else ""
        entry = error_entry(request_id, exit_code, error)
        script_keys = [keys.request(request_id)]
        args: list[Any] = [self.ttl, exit_code, batch, entry, errors, MAX_BATCH_ERRORS, digest]
        if result is not None:
            script_keys.append(result.key)
            args += [result.value, result.ttl]
        else:
            args += ["", ""]
        args.append("")  # no follow set: no request ID (ARGV[10])
        args += done_args(self.events, request_id, batch_id, outcome, notify_url)
        return self._endings.commit((script_keys, args)) != -1

    def hand_off(
        self,
        request_id: str,
        namespace: str,
        partial: dict[str, Any],
        deadline: float | None,
        notify_url: str | None = None,
    ) -> bool:
        """The evaluation is done and the request follows its child: `scheduled`, with the
        outcome so far, in the follow set, due at once (the tracker takes it from here).
        Its `notify_url` is kept in the record for its end. False for a request already done."""
        so_far = json.dumps(
            {k: v for k, v in partial.items() if k not in IN_RECORD}, separators=(",", ":")
        )
        return bool(
            self._hand_offs.commit((
                [keys.request(request_id), keys.FOLLOW, keys.partial(request_id)],
                [self.ttl, request_id, time.time(), namespace,
                 "" if deadline is None else repr(deadline),
                 zlib.compress(so_far.encode(), PARTIAL_LEVEL), keys.batch(""),
                 notify_url or ""],
            ))
        )  # fmt: skip

    def load_partial(self, request_id: str) -> str:
        """A followed child's outcome so far (JSON), or "" if there is none."""
        value = self.client.get(keys.partial(request_id))
        if not isinstance(value, bytes) or not value:
            return ""
        if value[:1] == b"{":  # as written before it was compressed
            return value.decode()
        return zlib.decompress(value).decode()

    def restage(self, request_id: str, state: RequestState, next_check: float) -> bool:
        """A followed child not ended yet: its stage and its next forced check. False when
        the request is done (it leaves the follow set)."""
        return bool(
            self._stage(
                keys=[keys.request(request_id), keys.FOLLOW, keys.partial(request_id)],
                args=[self.ttl, request_id, state.value, next_check, keys.batch("")],
            )
        )

    def finish_followed(
        self,
        request_id: str,
        exit_code: int,
        batch_id: str | None,
        error: str,
        result: StoredResult,
        *,
        notify_url: str = "",
    ) -> bool:
        """A followed child's end: stored, published, done, counted, out of the follow set,
        in one step; the first finish wins (True), any later one changes nothing. Its
        completion event is POSTed to `notify_url` (the record's, kept at hand-off)."""
        batch = keys.batch(batch_id) if batch_id else ""
        errors = keys.batch_errors(batch_id) if batch_id else ""
        entry = error_entry(request_id, exit_code, error)
        args: list[Any] = [self.ttl, exit_code, batch, entry, errors, MAX_BATCH_ERRORS, ""]
        args += [result.value, result.ttl, request_id]
        args += done_args(
            self.events, request_id, batch_id, stored_in_meta(result.value), notify_url or None
        )
        keys_ = [keys.request(request_id), result.key, keys.FOLLOW, keys.partial(request_id)]
        return bool(self._endings.commit((keys_, args)))

    def batch_cancelled(self, batch_id: str) -> bool:
        """Whether the batch has been cancelled (for a request that waited its turn at the
        gate): as read at most CANCEL_FLAG_AGE seconds ago by this process."""
        now = time.monotonic()
        seen = self._cancel_flags.get(batch_id)
        if seen is None or now - seen[0] > CANCEL_FLAG_AGE:
            if len(self._cancel_flags) > CANCEL_FLAGS_KEPT:
                self._cancel_flags.clear()
            state = self.client.hget(keys.batch(batch_id), "state")
            seen = self._cancel_flags[batch_id] = (now, state == b"cancelled")
        return seen[1]


@dataclass(frozen=True)
class Ending:
    """How a request ended, as its record keeps it (`RecordHandle.done`)."""

    exit_code: int
    error: str = ""
    """What its batch lists among its first errors: an exit-1 message, a child's failures."""
    result: StoredResult | None = None
    """The outcome, encoded for the result backend: stored in the same step."""
    outcome: dict[str, Any] | None = None
    """The outcome's stored form, for its completion event."""
    notify_url: str | None = None
    digest: str = ""
    """A refused message's digest: nothing is written if the record is another request's."""


@dataclass(frozen=True)
class RecordHandle:
    """One request's record: what a worker writes of it as the request goes (`begin`,
    `dispatched`, `hand_off`, `done`), each one script. `RecordStore.of` makes one."""

    store: RecordStore
    request_id: str
    batch_id: str | None = None

    def begin(self, job_id: str, *, read: str | None = None, digest: str = "") -> Begun:
        return self.store.begin(self.request_id, job_id, self.batch_id, read, digest)

    def dispatched(self, dispatched_job_id: str, eval_id: str) -> None:
        self.store.mark_dispatched(self.request_id, dispatched_job_id, eval_id)

    def hand_off(
        self,
        namespace: str,
        partial: dict[str, Any],
        deadline: float | None,
        notify_url: str | None = None,
    ) -> bool:
        return self.store.hand_off(self.request_id, namespace, partial, deadline, notify_url)

    def done(self, ending: Ending) -> bool:
        """Done, counted once in its batch, the outcome stored, in one step; the first
        finish wins (a late one changes nothing). False only when the record is another
        request's (`Ending.digest`): then nothing is written."""
        e = ending
        return self.store.mark_done(
            self.request_id, e.exit_code, self.batch_id, e.error, e.result, digest=e.digest,
            outcome=e.outcome, notify_url=e.notify_url,
        )  # fmt: skip

    def load(self) -> RequestRecord | None:
        return self.store.load(self.request_id)
