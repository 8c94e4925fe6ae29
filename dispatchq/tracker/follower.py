"""The tracker: follows every child in the follow set to its end (no Celery here).

One process at a time leads (`leader.Lease`, SET NX PX in Redis, renewed every third of its
life; a standby takes over once it lapses). The leader runs:

- one event stream (`topic=Job`, `topic=Allocation`, every namespace) that only marks
  followed children dirty: an event wakes a check, it is never the truth;
- a loop that checks, on a small fixed pool of threads, the children that are dirty or
  due (their score in the follow set: the next forced check): `Follower.check` reads the
  child's allocations (and its job, once none of them runs) and either stores the outcome
  (first finish wins) or writes the stage and the next forced check;
- after a start, a takeover or a stream reconnect, every followed child is made due,
  spread at `reconcile_rate` per second (scores in Redis: no queue in memory).

Memory per child: the child-to-request map entry (the stream's events name the child
job), nothing else; the state is the request record and the follow set in Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis
import structlog

from dispatchq.core.outcome import Outcome
from dispatchq.errors import NomadError
from dispatchq.store import keys
from dispatchq.store.records import (
    RecordStore,
    RequestRecord,
    RequestState,
    StoredResult,
    with_record,
)
from dispatchq.tracker.decide import (
    COLLECTED,
    ERROR,
    RUNNING,
    SCHEDULED,
    UNREACHABLE,
    WAIT_TIMEOUT,
    Verdict,
    child_end,
    decide,
    terminal,
)
from dispatchq.tracker.leader import Lease, reconcile_all

log = structlog.get_logger(__name__)

TOPICS = ("Job", "Allocation")
CHORES_EVERY = 0.2
"""Seconds between the leader's chores (`Tracker.chores`)."""
COUNT_EVERY = 5.0
"""Seconds between two reads of the number of followed children (for `Follower.sweep`)."""
IDLE_PASS = 0.05
"""Seconds the loop waits after a pass that found nothing to check (unless a starved pool
has room again before)."""
PASS_FAILED_PAUSE = 1.0
"""Seconds the tracker waits after a pass that Redis failed before the next."""


@dataclass(frozen=True)
class FollowPolicy:
    sweep: float = 300.0
    """Seconds between forced checks of a child nothing woke: the stream wakes every
    change, so this only bounds how long a missed event could hide an end. 300 s keeps the
    reads at 20,000 children to ~130 GETs/s on Nomad, and an end missed despite the
    reconcile after every reconnect is still seen within five minutes."""
    sweep_rate: float = 100.0
    """Forced checks per second at most: past `sweep * sweep_rate` children (30,000) the
    time between two forced checks of one child grows with their number (100,000: 1,000 s),
    so that the sweep's reads on Nomad and the tracker's CPU stay flat at any size (at
    100,000 and a 300 s sweep the re-checks alone kept a core busy); the stream still
    wakes each change at once."""
    reconcile_rate: float = 200.0
    """Checks per second at most when every child is made due (start, takeover, stream
    reconnect): 20,000 children reconciled in 100 s, ~400 GETs/s on Nomad."""
    unreachable_after: float = 900.0
    """Nomad failing every read of a child for this long ends it with `unreachable`
    (exit 1): generous, since the child keeps running meanwhile; DISPATCHQ_FOLLOW_UNREACHABLE."""
    retry: float = 5.0
    """Seconds before a child whose read failed (5xx, 429, unreachable) is checked again."""
    threads: int = 16
    """Checks at once (each one or two GETs and a few Redis calls): the pool is fixed, whatever the
    number of children."""
    queued: int = 32
    """Due children a pass reads at most (those being checked among them): none while more
    than half that many checks wait or run, so that a backlog of due children (a burst of
    hand-offs, a reconcile) is not read again on every pass while it waits for a thread."""


class ChildReader(Protocol):
    def read_job(
        self, job_id: str, *, namespace: str | None = None, index: int = 0,
        wait: float | None = None,
    ) -> tuple[dict[str, Any], int]: ...  # fmt: skip

    def job_allocations(
        self, job_id: str, *, namespace: str | None = None
    ) -> tuple[list[dict[str, Any]], int]: ...


Results = Callable[[str, dict[str, Any]], StoredResult]


@dataclass
class Checked:
    """What one check found: the child's job ID, the verdict, whether this call stored
    the outcome (`finished`), and the read error if Nomad did not answer."""

    request_id: str
    child: str = ""
    verdict: Verdict | None = None
    finished: bool = False
    error: str = ""


class Follower:
    """Checks one followed child at a time: reads, decides, writes. Thread-safe."""

    def __init__(
        self,
        reader: ChildReader,
        store: RecordStore,
        results: Results,
        *,
        policy: FollowPolicy | None = None,
        clock: Callable[[], float] = time.time,
        on_finished: Callable[[Checked, Outcome], None] | None = None,
    ) -> None:
        self.reader, self.store, self.results = reader, store, results
        self.policy = policy or FollowPolicy()
        self.clock = clock
        self.on_finished = on_finished
        self.on_checked: Callable[[Checked], None] | None = None
        """Told every check's result (the tracker's metrics)."""
        self.on_child: Callable[[str, str], None] | None = None
        """Told (child job ID, request ID) before the reads, so that an event arriving
        while they run wakes another check (the tracker's map)."""
        self.followed = 0
        """How many children are followed (as the tracker last counted them)."""
        self._down_since: dict[str, float] = {}
        """Per followed child that Nomad is not answering for, since when (each child has
        its own clock: one child's good read says nothing of another's)."""

    @property
    def sweep(self) -> float:
        """Seconds to a child's next forced check (`FollowPolicy.sweep_rate`)."""
        return max(self.policy.sweep, self.followed / self.policy.sweep_rate)

    def check(self, request_id: str) -> Checked:
        checked = self._check(request_id)
        if self.on_checked is not None:
            self.on_checked(checked)
        return checked

    def _check(self, request_id: str) -> Checked:
        record = self.store.load(request_id)
        if record is None or record.state is RequestState.DONE or not record.dispatched:
            self._down_since.pop(request_id, None)
            self.store.client.zrem(keys.FOLLOW, request_id)
            return Checked(request_id)
        child, now = record.dispatched_job_id, self.clock()
        if self.on_child is not None:
            self.on_child(child, request_id)
        try:
            job, allocs = self._read(child, record.namespace or None, record.deadline, now)
        except NomadError as err:
            return self._unanswered(record, err, now)
        self._down_since.pop(request_id, None)
        verdict = decide(job, allocs, now=now, deadline=record.deadline)
        checked = Checked(request_id, child, verdict)
        if verdict.ended:
            checked.finished = self._finish(record, verdict, checked)
            return checked
        next_check = now + self.sweep
        if record.deadline is not None:
            next_check = min(next_check, record.deadline)
        state = RequestState.RUNNING if verdict.stage == RUNNING else RequestState.SCHEDULED
        self.store.restage(request_id, state, next_check)
        self._announce(request_id, verdict.stage, job or {}, allocs)
        return checked

    def _read(
        self, child: str, namespace: str | None, deadline: float | None, now: float
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The child's job (None: 404) and allocations, as `decide` needs them, in one read
        while it runs. The allocations come first: while one is not terminal the child
        cannot have ended, and Nomad calls its job `running` (the job is read only at the
        deadline, for the outcome's view). Otherwise the job is read: if it turned `dead`
        after the allocations were listed (its ModifyIndex past their index), they are
        listed again, since the last of them may be missing from the first list."""
        try:
            allocs, listed_at = self.reader.job_allocations(child, namespace=namespace)
        except NomadError as err:
            if err.status != 404:
                raise
            allocs, listed_at = [], 0
        if any(not terminal(a) for a in allocs) and (deadline is None or now < deadline):
            return {"Status": "running"}, allocs
        try:
            job = self.reader.read_job(child, namespace=namespace)[0]
        except NomadError as err:
            if err.status != 404:
                raise
            return None, []
        if job.get("Status") == "dead" and int(job.get("ModifyIndex") or 0) > listed_at:
            allocs = self.reader.job_allocations(child, namespace=namespace)[0]
        return job, allocs

    def _unanswered(self, record: RequestRecord, err: NomadError, now: float) -> Checked:
        rid = record.request_id
        down_since = self._down_since.setdefault(rid, now)
        checked = Checked(rid, record.dispatched_job_id, error=str(err))
        stage = RequestState(record.state) if record.state in _FOLLOWED else _SCHEDULED
        if record.deadline is not None and now >= record.deadline:
            why = f"the wait timeout ran out while Nomad did not answer ({err})"
            checked.verdict = Verdict(True, stage.value, ERROR, 1, WAIT_TIMEOUT, why, {})
        elif now - down_since >= self.policy.unreachable_after:
            why = f"Nomad did not answer for {now - down_since:.0f}s: {err}"
            checked.verdict = Verdict(True, SCHEDULED, ERROR, 1, UNREACHABLE, why, {})
        else:
            next_check = now + self.policy.retry
            if record.deadline is not None:
                next_check = min(next_check, record.deadline)
            self.store.restage(rid, stage, next_check)
            return checked
        self._down_since.pop(rid, None)
        checked.finished = self._finish(record, checked.verdict, checked)
        return checked

    def _finish(self, record: RequestRecord, verdict: Verdict, checked: Checked) -> bool:
        outcome = _outcome_so_far(record, self.store.load_partial(record.request_id))
        child = verdict.child or {"status": "", "allocations": []}
        if verdict.error_kind == COLLECTED:
            child = {"status": "", "allocations": []}
        outcome.with_end(verdict.status, child, verdict.error_kind, verdict.message)
        if outcome.timings.monitor_seconds is None:
            outcome.timings.monitor_seconds = 0.0
        stored = self.results(record.request_id, outcome.to_stored())
        error = outcome.error_message or "" if outcome.exit_code == 1 else ""
        if outcome.exit_code == 2:
            error = failure_text(outcome)
        finished = self.store.finish_followed(
            record.request_id,
            outcome.exit_code,
            record.batch_id or None,
            error,
            stored,
            notify_url=record.notify_url,
        )
        if finished:
            log.info(
                "request.done", request_id=record.request_id, job_id=record.job_id,
                dispatched_job_id=record.dispatched_job_id, status=outcome.status,
                exit_code=outcome.exit_code, error_kind=outcome.error_kind,
            )  # fmt: skip
            if self.on_finished is not None:
                self.on_finished(checked, outcome)
        return finished

    def _announce(
        self, request_id: str, stage: str, job: dict[str, Any], allocs: list[dict[str, Any]]
    ) -> None:
        """The child as it is now, for `dispatchq job dispatch -wait` (which shows what
        changed between two of these); nothing is stored."""
        view = {"stage": stage, **child_end(job, allocs, every=True)}
        self.store.client.publish(keys.progress(request_id), json.dumps(view))


_FOLLOWED = frozenset({RequestState.SCHEDULED, RequestState.RUNNING})
_SCHEDULED = RequestState.SCHEDULED


def failure_text(outcome: Outcome) -> str:
    """A failed child in one line, for its batch's first failures: the failed tasks with
    their exit codes and messages (`task ffmpeg exit code 3: Exit Code: 3`), else the
    outcome's own message."""
    parts = []
    for alloc in (outcome.child or {}).get("allocations") or []:
        for name, task in (alloc.get("tasks") or {}).items():
            if task.get("failed"):
                code = task.get("exit_code")
                said = f"task {name}" + (f" exit code {code}" if code is not None else "")
                parts.append(said + (f": {task['message']}" if task.get("message") else ""))
    return "; ".join(parts) or outcome.error_message or outcome.status


def _outcome_so_far(record: RequestRecord, partial: str) -> Outcome:
    try:
        return Outcome.from_stored(with_record(partial, record))
    except (ValueError, KeyError, TypeError):
        return Outcome.failed(record.job_id, kind="interrupted", message="no outcome so far")


EventSource = Callable[[Callable[[], None]], Iterator[tuple[int, list[dict[str, Any]]]]]
"""Opens the event stream from the current index; calls its argument once connected."""


@dataclass
class Tracker:
    """The loop of `dispatchq tracker` (see the module docstring)."""

    client: redis.Redis
    follower: Follower
    lease: Lease
    events: EventSource | None = None
    policy: FollowPolicy = field(default_factory=FollowPolicy)
    children: dict[str, str] = field(default_factory=dict)
    """Child job ID -> request ID, for the children this tracker has checked."""
    leading: bool = False
    stream_connected: bool = False
    chores: Callable[[], object] | None = None
    """Run by the leader between passes, about every `CHORES_EVERY` seconds: the automatic
    retries of batch items (`dispatchq.store.retries.BatchRetrier.drain_due`), the queue's
    backlog sample (`dispatchq.store.backlog`)."""

    def __post_init__(self) -> None:
        self.follower.on_child = self._know
        self._dirty: set[str] = set()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set when the pool, too busy for the last pass to read the due children, has room
        again: the next pass, at once. (An event does not wake the loop: the events of a
        child that come together, placed, running, ended, wait for the same pass, so
        that it is checked once.)"""
        self._starved = False
        self._backlog = False
        self._due_read_at = 0.0
        self._pool = ThreadPoolExecutor(self.policy.threads, thread_name_prefix="follow")
        self._renewed = 0.0
        self._chores_at = 0.0
        self._counted_at = 0.0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        if self.events is not None:
            threading.Thread(target=self._stream, name="follow-events", daemon=True).start()
        try:
            while not self._stop.is_set():
                try:
                    if not self._lead():
                        self._stop.wait(keys.TRACKER_LEASE_MS / 3000)
                        continue
                    self._chores()
                    self._count()
                    self._wake.clear()
                    if not self.run_once():
                        self._wake.wait(IDLE_PASS)
                except redis.RedisError as err:  # Redis away or refusing: the next pass
                    log.error("tracker.pass_failed", error=str(err)[:200])
                    self._stop.wait(PASS_FAILED_PAUSE)
        finally:
            self._pool.shutdown(wait=True)
            if self.leading:
                self.lease.release()

    def _lead(self) -> bool:
        now = time.monotonic()
        if self.leading and now - self._renewed < keys.TRACKER_LEASE_MS / 3000:
            return True
        held = self.lease.hold()
        self._renewed = now
        if held and not self.leading:
            followed = reconcile_all(self.client, self.policy.reconcile_rate, time.time())
            log.info("tracker.leading", holder=self.lease.holder, followed=followed)
        elif self.leading and not held:
            log.warning("tracker.lost_lease", holder=self.lease.holder)
            self.children.clear()
        self.leading = held
        return held

    def _chores(self) -> None:
        now = time.monotonic()
        if self.chores is None or now - self._chores_at < CHORES_EVERY:
            return
        self._chores_at = now
        try:
            self.chores()
        except Exception:  # Redis away: the next pass tries again
            log.exception("tracker.chores_failed")

    def _count(self) -> None:
        now = time.monotonic()
        if now - self._counted_at >= COUNT_EVERY:
            self._counted_at = now
            self.follower.followed = int(self.client.zcard(keys.FOLLOW))

    def run_once(self) -> int:
        """One pass: submit the checks of the dirty and the due children not being checked
        already; returns how many were submitted."""
        due: list[bytes] = []
        now = time.monotonic()
        with self._lock:
            self._starved = len(self._busy) > self.policy.queued // 2
            read = not self._starved and (self._backlog or now - self._due_read_at >= IDLE_PASS)
        if read:  # at most every IDLE_PASS, unless the last read found a backlog
            self._due_read_at = now
            due = cast(
                list[bytes],
                self.client.zrangebyscore(
                    keys.FOLLOW, "-inf", time.time(), start=0, num=self.policy.queued
                ),
            )
            self._backlog = len(due) == self.policy.queued
        with self._lock:
            # the children an event woke first: they are the likely ends
            wanted = [*self._dirty, *(m.decode() for m in due)]
            todo = [rid for rid in dict.fromkeys(wanted) if rid not in self._busy]
            self._dirty.intersection_update(self._busy)  # checked again once done
            self._busy.update(todo)
        for rid in todo:
            self._pool.submit(self.follower.check, rid).add_done_callback(self._checked(rid))
        return len(todo)

    def _checked(self, request_id: str) -> Callable[[Future[Checked]], None]:
        def done(future: Future[Checked]) -> None:
            with self._lock:
                self._busy.discard(request_id)
                wake = self._starved and len(self._busy) <= self.policy.queued // 2
            if wake:  # the pass that skipped the due children can read them now
                self._wake.set()
            try:
                checked = future.result()
            except (redis.ConnectionError, redis.TimeoutError) as err:
                # Redis away (a restart, a failover): checked again on the next pass, not
                # at its next scheduled check (minutes away for a child that just ended).
                log.warning("tracker.check_failed", request_id=request_id, error=str(err)[:200])
                with self._lock:
                    self._dirty.add(request_id)
                return
            except Exception:
                log.exception("tracker.check_failed", request_id=request_id)
                return
            with self._lock:
                if checked.finished or (checked.verdict is None and not checked.error):
                    self.children.pop(checked.child, None)
                elif checked.child:
                    self.children[checked.child] = request_id

        return done

    def _know(self, child: str, request_id: str) -> None:
        with self._lock:
            self.children[child] = request_id

    def mark(self, job_id: str) -> None:
        """An event named this job: if it is a followed child, check it soon."""
        with self._lock:
            rid = self.children.get(job_id)
            if rid is not None:
                self._dirty.add(rid)

    def _stream(self) -> None:
        assert self.events is not None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                for _index, events in self.events(self._connected):
                    for event in events:
                        job_id = _job_of(event)
                        if job_id:
                            self.mark(job_id)
                    backoff = 0.5
                    if self._stop.is_set():
                        return
            except Exception as err:  # noqa: BLE001  (the reader must outlive any failure)
                log.warning("tracker.stream_lost", error=str(err), retry_in=backoff)
            self.stream_connected = False
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _connected(self) -> None:
        """The stream is open: what happened while it was not is read, not replayed."""
        self.stream_connected = True
        if self.leading:
            followed = reconcile_all(self.client, self.policy.reconcile_rate, time.time())
            log.info("tracker.stream_connected", followed=followed)


def _job_of(event: dict[str, Any]) -> str:
    payload = event.get("Payload") or {}
    if event.get("Topic") == "Allocation":
        return str((payload.get("Allocation") or {}).get("JobID") or "")
    if event.get("Topic") == "Job":
        return str((payload.get("Job") or {}).get("ID") or event.get("Key") or "")
    return ""
