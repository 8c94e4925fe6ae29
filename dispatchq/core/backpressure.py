"""Backpressure against Nomad, shared by every worker through Redis.

Before each dispatch a worker passes `DispatchGate.admit`, which waits for two things:

- **A cap on unfinished children per parameterized job** (`max_unfinished_children`, off
  when 0): the parent's `JobSummary.Children` Pending + Running, as last read, plus the
  dispatches admitted since that read. One worker at a time re-reads the summary once the
  reading is older than `SUMMARY_MAX_AGE` (a lock in Redis), so a fleet reads it about once
  a second per job, however many workers wait. A dispatch admitted while the summary is
  being read can be counted neither in the read nor in the new count, so the cap can be
  passed by the dispatches in flight at that moment, never more.
- **A global rate** (`dispatch_rate`, dispatches/s, with a burst): a GCRA bucket in one
  Redis hash, on Redis's clock, so workers on several machines share it exactly.

The rate adapts (AIMD): a 429 from Nomad, or an evaluation that found the cluster's
resources exhausted, halves it (at most once per `CUT_COOLDOWN`, down to 1/100 of the
ceiling); it then climbs back linearly to the ceiling over `RECOVERY_SECONDS`. A placement
failure from constraints alone is the job's problem, not the cluster's, and slows nothing.

Within one worker process only one thread (or greenlet) at a time polls Redis for a given
job's slot or for the rate, the others queue on a local lock: hundreds of waiting requests
cost one poll per `POLL` seconds, not hundreds. Rate tokens are taken `PREFETCH` seconds'
worth at a time and spent locally, so at full speed most dispatches make no round trip; at
the rate limit the tokens whose turn comes within `PREFETCH` are reserved in the same call
(the bucket's theoretical arrival time moved past them) and each spent at its turn, so a
process waiting for the rate makes one call per `PREFETCH` too, not one or more per
dispatch.

A request that waits longer than `max_wait` raises `Throttled`, which the worker's retry
policy turns into a requeue that does not count against the request's retries, so a long
wait never runs into the task time limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import structlog

from dispatchq.core.outcome import Outcome
from dispatchq.errors import NomadError, NotFound
from dispatchq.errors import Throttled as Throttled
from dispatchq.store import keys
from dispatchq.store.scripts import SCRIPTS

log = structlog.get_logger(__name__)

SUMMARY_MAX_AGE = 1.0
"""Seconds a job's children count is trusted before one worker reads the summary again."""
POLL = 0.25
"""Seconds between polls of a full job's slot."""
CUT_COOLDOWN = 1.0
"""Overload signals closer together than this (a burst of 429s) halve the rate once."""
RECOVERY_SECONDS = 30.0
"""Seconds the rate takes to climb back from the floor to the ceiling."""
FLOOR_SHARE = 0.01
"""The rate never falls below this share of the ceiling."""
PREFETCH = 0.05
"""A process takes this many seconds' worth of tokens per round trip (at least one),
reserving ahead at the rate limit (each token then spent at its turn, one rate interval
after the other), so that a dispatch rarely costs a round trip of its own, whether the
rate binds or not; tokens not spent within twice that are dropped."""
RECHECK_AFTER = 0.05
"""A request that waited longer than this at the gate re-reads its batch's cancel flag."""

def shared_rate(client: redis.Redis, ceiling: float) -> float:
    """The dispatch rate in force for every worker now (the ceiling, unless slowed)."""
    script = client.register_script(SCRIPTS["rate_read"])
    return float(script(keys=[keys.RATE], args=[ceiling, RECOVERY_SECONDS]))


@dataclass(frozen=True)
class GatePolicy:
    rate: float
    """Ceiling of dispatches per second, all workers together."""
    burst: int = 50
    max_unfinished_children: int = 0
    """Per parameterized job; 0: no cap."""
    max_wait: float = 30.0
    """Seconds a request waits at the gate before it is requeued instead."""

    @property
    def floor(self) -> float:
        return self.rate * FLOOR_SHARE


UnfinishedChildren = Callable[[str, str], int]
"""(job ID, namespace) -> the job's pending + running children, from Nomad."""


def unfinished_children(summary: dict[str, object]) -> int:
    """Pending + Running of a JobSummary's `Children` (0 for a job that has none)."""
    children = summary.get("Children")
    if not isinstance(children, dict):
        return 0
    return sum(int(children.get(state) or 0) for state in ("Pending", "Running"))


def resources_exhausted(outcome: Outcome) -> bool:
    """Whether placement failed because the cluster ran out (resources, quota), not because
    of constraints no node meets."""
    return any(
        failure.metric.get("NodesExhausted") or failure.metric.get("QuotaExhausted")
        for failure in outcome.placement_failures.values()
    )


@dataclass
class DispatchGate:
    """Admits dispatches under the shared rate and the per-job cap (see the module doc)."""

    client: redis.Redis
    policy: GatePolicy
    children: UnfinishedChildren
    sleep: Callable[[float], None] = time.sleep
    _rate_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _job_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict, init=False)
    _tokens: int = field(default=0, init=False)
    _tokens_until: float = field(default=0.0, init=False)
    _next_turn: float = field(default=0.0, init=False)
    """When the next of the tokens held may be spent (monotonic clock)."""
    _spacing: float = field(default=0.0, init=False)
    _rate_seen: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._rate_seen = self.policy.rate
        self._take = self.client.register_script(SCRIPTS["rate_take"])
        self._cut = self.client.register_script(SCRIPTS["rate_cut"])
        self._slot = self.client.register_script(SCRIPTS["children_slot"])
        self._refresh = self.client.register_script(SCRIPTS["children_refresh"])

    def admit(self, job_id: str, namespace: str) -> bool:
        """Wait for this dispatch's turn; whether it waited longer than RECHECK_AFTER.
        Raises Throttled after `max_wait`, and the summary read's retryable errors."""
        start = time.monotonic()
        deadline = start + self.policy.max_wait
        if self.policy.max_unfinished_children:
            lock = self._job_locks.setdefault((namespace, job_id), threading.Lock())
            with _Held(lock, deadline, f"a slot among the children of {job_id!r}"):
                self._wait_for_slot(job_id, namespace, deadline)
        with _Held(self._rate_lock, deadline, "the dispatch rate"):
            self._wait_for_token(deadline)
        return time.monotonic() - start > RECHECK_AFTER

    def overloaded(self, reason: str) -> float:
        """Nomad pushed back (a 429, exhausted resources): halve the rate. The new rate."""
        p = self.policy
        args = [p.rate, p.floor, RECOVERY_SECONDS, CUT_COOLDOWN, keys.RATE_TTL]
        rate = float(self._cut(keys=[keys.RATE], args=args))
        self._tokens = 0  # spend no more at the old rate
        log.warning("backpressure.slowed", reason=reason, rate=round(rate, 2))
        return rate

    def _wait_for_token(self, deadline: float) -> None:
        if not self._tokens or time.monotonic() >= self._tokens_until:
            p = self.policy
            while True:
                wanted = max(1, int(self._rate_seen * PREFETCH))
                args = [p.rate, p.burst, RECOVERY_SECONDS, keys.RATE_TTL, wanted, PREFETCH]
                granted, wait, rate = self._take(keys=[keys.RATE], args=args)
                self._rate_seen = float(rate)
                if int(granted):
                    now = time.monotonic()
                    self._tokens, self._spacing = int(granted), 1 / float(rate)
                    self._next_turn = now + float(wait)
                    self._tokens_until = max(now, self._next_turn) + PREFETCH * 2
                    break
                self._pause(float(wait), deadline, "the dispatch rate")
        turn = self._next_turn
        self._tokens -= 1
        self._next_turn += self._spacing
        ahead = turn - time.monotonic()
        if ahead > 0:  # a token reserved ahead: its turn (the others queue on the lock)
            self._pause(ahead, deadline, "the dispatch rate")

    def _wait_for_slot(self, job_id: str, namespace: str, deadline: float) -> None:
        cap = self.policy.max_unfinished_children
        counted = [keys.children(namespace, job_id), keys.children_refresh(namespace, job_id)]
        args = [cap, SUMMARY_MAX_AGE, keys.CHILDREN_REFRESH_LOCK]
        while True:
            verdict = int(self._slot(keys=counted, args=args))
            if verdict == 0:
                return
            if verdict == -1:
                self._read_summary(job_id, namespace, counted)
                continue
            what = f"{job_id!r} at its cap of {cap} unfinished children"
            self._pause(POLL, deadline, what)

    def _read_summary(self, job_id: str, namespace: str, counted: list[str]) -> None:
        try:
            unfinished = self.children(job_id, namespace)
        except NomadError as err:
            self.client.delete(counted[1])
            if err.retryable:
                raise
            # No such job (the dispatch itself will say so), or a token that may dispatch
            # but not read the job: admitted uncapped rather than held forever.
            if not isinstance(err, NotFound):
                log.warning("backpressure.summary_unreadable", job_id=job_id, error=str(err))
            unfinished = 0
        self._refresh(keys=counted, args=[unfinished, keys.CHILDREN_TTL])

    def _pause(self, seconds: float, deadline: float, what: str) -> None:
        if time.monotonic() + seconds > deadline:
            raise Throttled(f"not admitted within {self.policy.max_wait:g} s ({what}); requeued")
        self.sleep(seconds)


@dataclass
class _Held:
    """`with` a local lock, waiting for it no later than the deadline."""

    lock: threading.Lock
    deadline: float
    what: str

    def __enter__(self) -> None:
        if not self.lock.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
            raise Throttled(f"not admitted in time (waiting for {self.what}); requeued")

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
