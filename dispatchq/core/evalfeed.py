"""One event-stream subscription per worker process, shared by every monitor in it.

Following thousands of evaluations with a blocking query each holds thousands of
connections to Nomad. Instead, one background thread (a greenlet under gevent) reads
`/v1/event/stream?topic=Evaluation&topic=Allocation` and keeps, for every evaluation seen
recently, its latest state and its allocations (as list stubs). `FeedReader` serves the
monitor's reads (`dispatchq.core.monitor.EvaluationReader`) from that cache, and falls back to
plain HTTP for what the feed cannot vouch for:

- an evaluation created before the feed was listening (a request resumed after a crash),
  or while it was reconnecting: read over HTTP;
- a wait during which the stream reconnected (events may have been missed): re-read over
  HTTP when it ends;
- a stream Nomad refuses (ACL, an old version without it): every read over HTTP, as
  before.

Stream events are ordered by raft index, and Nomad writes a plan's allocations before it
marks the evaluation complete, so once the cache holds an evaluation at some index it
also holds every allocation written before it.
"""

from __future__ import annotations

import heapq
import itertools
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog
from urllib3 import BaseHTTPResponse

from dispatchq.core.monitor import EvaluationReader
from dispatchq.errors import NomadError, PermissionDenied
from dispatchq.nomad.client import NomadClient

log = structlog.get_logger(__name__)

TOPICS = ("Evaluation", "Allocation")
STUB_FIELDS = (
    "ID", "EvalID", "Name", "Namespace", "NodeID", "JobID", "TaskGroup", "DesiredStatus",
    "DesiredDescription", "ClientStatus", "ClientDescription", "CreateIndex", "ModifyIndex",
)  # fmt: skip
EVAL_FIELDS = (
    "ID", "Namespace", "Type", "TriggeredBy", "JobID", "NodeID", "DeploymentID", "Status",
    "StatusDescription", "Wait", "NextEval", "PreviousEval", "BlockedEval", "FailedTGAllocs",
    "QueuedAllocations", "CreateIndex", "ModifyIndex",
)  # fmt: skip
CLIENT_UPDATE = b'"Type":"AllocationUpdated"'
EVAL_ID = re.compile(rb'"EvalID":"([^"]*)"')
KEEP = 20_000
"""Evaluations remembered (with their allocations), oldest forgotten first: a few KB
each, so tens of MB at most."""
CATCH_UP = 2.0
"""Seconds a first read waits for a connected feed to reach the dispatch's index; past
that (a feed lagging that far), the read goes over HTTP."""


@dataclass
class _Entry:
    evaluation: dict[str, Any] | None = None
    allocations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def index(self) -> int:
        return int(self.evaluation.get("ModifyIndex") or 0) if self.evaluation else 0


class EvaluationFeed:
    """The shared cache, kept current by a background reader of the event stream.

    Waiters are woken selectively: a monitor waiting on one evaluation is woken by that
    evaluation's events only, and a dispatch waiting for the feed to reach an index by that
    index only, so thousands of waiters cost nothing while nothing happens to them."""

    def __init__(self, client: NomadClient, namespace: str | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._followed: OrderedDict[str, None] = OrderedDict()
        """Evaluations a monitor of this process follows (the last KEEP): their
        allocations' client updates are read, those of other evaluations are skipped."""
        self._eval_waiters: dict[str, set[threading.Event]] = {}
        self._index_waiters: list[tuple[int, int, threading.Event]] = []  # a heap
        self._sequence = itertools.count()
        self.covered_from: int | None = None  # evals created after this index are complete
        self.last_index = 0
        self.generation = 0  # bumped on every (re)connection: waits across it re-check
        self.refused = False  # the server will not stream to us: HTTP only
        self._stop = threading.Event()
        self._stream: BaseHTTPResponse | None = None
        self._thread = threading.Thread(target=self._run, name="dispatchq-eventfeed", daemon=True)

    def start(self) -> EvaluationFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading: the open stream is closed at once, its connection released."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        self._wake_everyone()

    def _opened(self, response: BaseHTTPResponse) -> None:
        self._stream = response
        if self._stop.is_set():
            response.close()

    # -- the reader thread --------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                start = self.client.current_index()
                with self._lock:
                    self.generation += 1
                    self.covered_from = start
                    self.last_index = max(self.last_index, start)
                self._wake_everyone()
                log.info("eventfeed.connected", index=start)
                for index, events in self.client.event_stream(
                    topics=TOPICS, index=start + 1, namespace=self.namespace,
                    on_open=self._opened, skip=self._skippable,
                ):  # fmt: skip
                    self._apply(index, events)
                    backoff = 0.5
                    if self._stop.is_set():
                        return
            except PermissionDenied as err:
                self._refuse(f"the event stream was refused ({err}); following by HTTP")
                return
            except NomadError as err:
                if self._stop.is_set():
                    return
                if err.status == 404:
                    self._refuse("this Nomad has no event stream; following by HTTP")
                    return
                log.warning("eventfeed.disconnected", error=str(err), retry_in=backoff)
            except (OSError, ValueError, AttributeError):
                if self._stop.is_set():
                    return  # stop() closed the stream under the reader
                raise
            finally:
                self._stream = None
            with self._lock:
                self.covered_from = None  # until reconnected, vouch for nothing new
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def follow(self, eval_id: str) -> None:
        """A monitor here follows `eval_id`: the client updates of its allocations are read."""
        with self._lock:
            self._followed[eval_id] = None
            self._followed.move_to_end(eval_id)
            while len(self._followed) > KEEP:
                self._followed.popitem(last=False)

    def _skippable(self, line: bytes) -> bool:
        """A batch of the stream that only says allocations' client statuses changed
        (`AllocationUpdated`: no evaluation, no placement), none of them of an evaluation a
        monitor here follows: most of the stream's bytes, and of no use to this process,
        so not parsed. (Evaluation events, placements and the updates of followed
        evaluations are; the index of a skipped batch is never one a dispatch waits for,
        which is its evaluation's.)"""
        if b'"Topic":"Evaluation"' in line or line.count(CLIENT_UPDATE) != line.count(
            b'"Topic":'
        ):
            return False
        followed = self._followed
        return not any(e.decode() in followed for e in EVAL_ID.findall(line))

    def _refuse(self, why: str) -> None:
        log.warning("eventfeed.unavailable", reason=why)
        with self._lock:
            self.refused = True
            self.covered_from = None
            self.generation += 1
        self._wake_everyone()

    def _apply(self, index: int, events: list[dict[str, Any]]) -> None:
        to_wake: list[threading.Event] = []
        with self._lock:
            for event in events:
                payload = event.get("Payload") or {}
                if event.get("Topic") == "Evaluation" and payload.get("Evaluation"):
                    full = payload["Evaluation"]
                    evaluation = {name: full[name] for name in EVAL_FIELDS if name in full}
                    self._entry(full["ID"]).evaluation = evaluation
                    to_wake += self._eval_waiters.get(full["ID"], ())
                elif event.get("Topic") == "Allocation" and payload.get("Allocation"):
                    alloc = payload["Allocation"]
                    stub = {name: alloc.get(name) for name in STUB_FIELDS}
                    self._entry(alloc.get("EvalID") or "").allocations[alloc["ID"]] = stub
            self.last_index = max(self.last_index, index)
            while self._index_waiters and self._index_waiters[0][0] <= self.last_index:
                to_wake.append(heapq.heappop(self._index_waiters)[2])
        for waiter in to_wake:
            waiter.set()

    def _wake_everyone(self) -> None:
        with self._lock:
            waiters = [w for group in self._eval_waiters.values() for w in group]
            waiters += [entry[2] for entry in self._index_waiters]
            self._index_waiters.clear()
        for waiter in waiters:
            waiter.set()

    def _entry(self, eval_id: str) -> _Entry:
        entry = self._entries.get(eval_id)
        if entry is None:
            entry = self._entries[eval_id] = _Entry()
            while len(self._entries) > KEEP:
                self._entries.popitem(last=False)
        return entry

    # -- readers ------------------------------------------------------------------------

    def vouched(self, eval_id: str) -> _Entry | None:
        """The entry, if the feed saw this evaluation from its creation on."""
        entry = self._entries.get(eval_id)
        if entry is None or entry.evaluation is None or self.covered_from is None:
            return None
        created = int(entry.evaluation.get("CreateIndex") or 0)
        return entry if created > self.covered_from else None

    def allocations(self, eval_id: str) -> list[dict[str, Any]]:
        with self._lock:
            entry = self._entries.get(eval_id)
            return list(entry.allocations.values()) if entry else []

    def catch_up(self, index: int, timeout: float) -> bool:
        """Wait until the feed has read past `index`; False if it cannot say so in time."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self.covered_from is None or self.refused or self._stop.is_set():
                    return False  # not connected: nothing to wait for, HTTP it is
                if self.last_index >= index:
                    return self.covered_from < index
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                waiter = threading.Event()
                heapq.heappush(self._index_waiters, (index, next(self._sequence), waiter))
            waiter.wait(remaining)

    def wait_change(self, eval_id: str, index: int, timeout: float) -> tuple[_Entry | None, bool]:
        """Wait until the evaluation's ModifyIndex passes `index` (or timeout). Returns
        the entry and whether the feed stayed connected all along (else re-check)."""
        deadline = time.monotonic() + timeout
        generation = self.generation
        while True:
            with self._lock:
                entry = self.vouched(eval_id)
                steady = self.generation == generation and not self.refused
                remaining = deadline - time.monotonic()
                if (
                    not steady
                    or (entry is not None and entry.index > index)
                    or remaining <= 0
                    or self._stop.is_set()
                ):
                    return entry, steady
                waiter = threading.Event()
                self._eval_waiters.setdefault(eval_id, set()).add(waiter)
            try:
                waiter.wait(remaining)
            finally:
                with self._lock:
                    group = self._eval_waiters.get(eval_id)
                    if group is not None:
                        group.discard(waiter)
                        if not group:
                            del self._eval_waiters[eval_id]


class FeedReader:
    """`EvaluationReader` for the monitor: the feed where it can vouch, HTTP otherwise."""

    def __init__(self, feed: EvaluationFeed, client: EvaluationReader) -> None:
        self.feed = feed
        self.client = client
        self._from_feed: set[str] = set()

    def expect(self, eval_id: str, create_index: int) -> None:
        """The dispatch created `eval_id` at `create_index`: let the feed catch up."""
        self.feed.follow(eval_id)
        if create_index and self.feed.catch_up(create_index, CATCH_UP):
            self._from_feed.add(eval_id)

    def read_evaluation(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[dict[str, Any], int]:
        if eval_id not in self._from_feed:
            self.feed.follow(eval_id)  # a follow-up evaluation (blocked, next)
        if index == 0 or eval_id not in self._from_feed:
            entry = self.feed.vouched(eval_id)
            if entry is not None and entry.evaluation is not None:
                self._from_feed.add(eval_id)
                return entry.evaluation, entry.index
            self._from_feed.discard(eval_id)
            return self.client.read_evaluation(eval_id, index=index, wait=wait)
        entry, steady = self.feed.wait_change(eval_id, index, wait if wait is not None else 60)
        if steady and entry is not None and entry.evaluation is not None:
            return entry.evaluation, entry.index
        self._from_feed.discard(eval_id)  # missed events are possible: ask Nomad
        return self.client.read_evaluation(eval_id)

    def evaluation_allocations(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        entry = self.feed.vouched(eval_id) if eval_id in self._from_feed else None
        if entry is not None:
            return self.feed.allocations(eval_id), entry.index
        return self.client.evaluation_allocations(eval_id, index=index, wait=wait)
