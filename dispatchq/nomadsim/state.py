"""The state store: tables, a raft-like index, watches for blocking queries, events.

Every write takes the next index and is committed at once (nomadsim is one asyncio
thread, so a write never interleaves with another). Commit derives job statuses the way
Nomad's state store does (`getJobStatus`), keeps parents' `JobSummary.Children` counts,
wakes the blocking queries watching what changed and publishes one event batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from types import TracebackType
from typing import Any

from dispatchq.nomadsim.events import Batch, Event, EventBroker
from dispatchq.nomadsim.model import TERMINAL_EVAL, Alloc, Eval, JsonObj, Summary

JobKey = tuple[str, str]
CHILD_COUNT = {"pending": "Pending", "running": "Running", "dead": "Dead"}


class WatchHub:
    """One asyncio.Event per watched key, created by the first waiter, set on change."""

    def __init__(self) -> None:
        self._events: dict[Hashable, list[Any]] = {}

    def notify(self, key: Hashable) -> None:
        entry = self._events.pop(key, None)
        if entry is not None:
            entry[0].set()

    async def wait(self, key: Hashable, timeout: float) -> None:
        entry = self._events.get(key)
        if entry is None:
            entry = self._events[key] = [asyncio.Event(), 0]
        entry[1] += 1
        try:
            async with asyncio.timeout(timeout):
                await entry[0].wait()
        except TimeoutError:
            pass
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._events.get(key) is entry:
                del self._events[key]

    @property
    def active(self) -> bool:
        return bool(self._events)


def job_status(store: Store, key: JobKey, job: JsonObj) -> str:
    """Nomad's getJobStatus."""
    if job.get("Periodic") or (job.get("ParameterizedJob") and not job.get("Dispatched")):
        return "dead" if job.get("Stop") else "running"
    alloc_ids = store.allocs_by_job.get(key, ())
    allocs = store.allocs
    for alloc_id in alloc_ids:
        if not allocs[alloc_id].terminal:
            return "running"
    eval_ids = store.evals_by_job.get(key, ())
    evals = store.evals
    for eval_id in eval_ids:
        if evals[eval_id].status not in TERMINAL_EVAL:
            return "pending"
    if eval_ids or alloc_ids or job.get("Stop"):
        return "dead"
    return "pending"


class Write:
    """One raft entry: every change made through it shares its index and message type."""

    def __init__(self, store: Store, msg_type: str) -> None:
        store.index += 1
        self.store = store
        self.index = store.index
        self.type = msg_type
        self.events: list[Event] = []
        self.keys: set[Hashable] = set()
        self.tables: set[str] = set()
        self.jobs_written: dict[JobKey, JsonObj] = {}
        self.touched: set[JobKey] = set()
        # Nothing can start watching while a write is open (no awaits in between), so
        # without watchers the write need not collect the keys it changed.
        self.watching = store.watch.active

    def __enter__(self) -> Write:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.store.commit(self)

    def put_job(self, job: JsonObj) -> None:
        key = (job["Namespace"], job["ID"])
        self.jobs_written[key] = job
        self.touched.add(key)

    def put_eval(self, ev: Eval, event_type: str = "") -> None:
        store = self.store
        ev.modify_index = self.index
        key = (ev.namespace, ev.job_id)
        if ev.id not in store.evals:  # an update is indexed already
            store.evals_by_job.setdefault(key, {})[ev.id] = None
        store.evals[ev.id] = ev
        self.touched.add(key)
        self.tables.add("evals")
        if self.watching:
            self.keys.update((("eval", ev.id), ("evals",), ("job_evals", *key)))
        self.events.append(
            Event("Evaluation", event_type or self.type, ev.id, ev.namespace, [ev.job_id, ""],
                  self.index, ev)
        )

    def put_node(self, node: JsonObj) -> None:
        """A node's change (its JSON as `GET /v1/node/<id>` answers it), for the event
        stream's Node topic: nodes are no table of the store (`dispatchq.nomadsim.drain`)."""
        self.events.append(Event("Node", self.type, node["ID"], "", None, self.index, node))

    def put_alloc(self, alloc: Alloc) -> None:
        store = self.store
        alloc.modify_index = self.index
        if not alloc.create_index:
            alloc.create_index = self.index
        key = (alloc.namespace, alloc.job_id)
        if alloc.id not in store.allocs:  # an update is indexed already
            store.allocs_by_job.setdefault(key, {})[alloc.id] = None
            store.allocs_by_eval.setdefault(alloc.eval_id, {})[alloc.id] = None
        store.allocs[alloc.id] = alloc
        self.touched.add(key)
        self.tables.add("allocs")
        if self.watching:
            self.keys.update(
                (("alloc", alloc.id), ("allocs",), ("job_allocs", *key),
                 ("eval_allocs", alloc.eval_id))
            )
        self.events.append(
            Event("Allocation", self.type, alloc.id, alloc.namespace, [alloc.job_id, ""],
                  self.index, alloc)
        )

    def delete_job(self, key: JobKey, emit: bool = True) -> None:
        store = self.store
        job = store.jobs.pop(key, None)
        if job is None:
            return
        self.tables.update(("jobs", "job_summary"))
        self.keys.update((("job", *key), ("jobs",), ("summary", *key)))
        store.summaries.pop(key, None)
        store.dead_since.pop(key, None)
        token = job.get("DispatchIdempotencyToken")
        if token:
            store.idempotency.pop((key[0], job["ParentID"], token), None)
        if job.get("ParentID"):
            self._count_child(job, job["Status"], None)
        if emit:
            self.events.append(Event("Job", self.type, key[1], key[0], None, self.index, job))

    def _count_child(self, job: JsonObj, old: str | None, new: str | None) -> None:
        parent_key = (job["Namespace"], job["ParentID"])
        summary = self.store.summaries.get(parent_key)
        if summary is None:
            return
        children = summary.children
        if children is None:
            children = summary.children = {"Pending": 0, "Running": 0, "Dead": 0}
        if old is not None:
            children[CHILD_COUNT[old]] -= 1
        if new is not None:
            children[CHILD_COUNT[new]] += 1
        summary.modify_index = self.index
        if self.watching:
            self.keys.add(("summary", *parent_key))
        self.tables.add("job_summary")

    def finish_jobs(self) -> None:
        """Derive job statuses for every job this write touched (Nomad's setJobStatus)."""
        if not self.touched:
            return
        store = self.store
        jobs, summaries, written_jobs = store.jobs, store.summaries, self.jobs_written
        index, watching = self.index, self.watching
        now = time.monotonic()
        self.tables.add("job_summary")
        for key in self.touched:
            written = written_jobs.get(key)
            old = jobs.get(key)
            job = written if written is not None else old
            if job is None:
                continue
            status = job_status(store, key, job)
            summary = summaries.get(key)
            if summary is None:
                summary = summaries[key] = Summary(index, index)
            summary.modify_index = index
            if watching:
                self.keys.add(("summary", *key))
            if written is None:
                if old is not None and old["Status"] == status:
                    continue
                job = dict(job)
            job["Status"] = status
            job["ModifyIndex"] = index
            if old is None:
                job["CreateIndex"] = index
            jobs[key] = job
            if status == "dead":
                store.dead_since.setdefault(key, now)
            else:
                store.dead_since.pop(key, None)
            if job.get("ParentID"):
                old_status = old["Status"] if old is not None else None
                if old_status != status:
                    self._count_child(job, old_status, status)
            self.tables.add("jobs")
            if watching:
                self.keys.update((("job", *key), ("jobs",)))
            self.events.append(Event("Job", self.type, key[1], key[0], None, index, job))


class Store:
    def __init__(self, event_buffer: int) -> None:
        self.index = 1
        self.jobs: dict[JobKey, JsonObj] = {}
        self.summaries: dict[JobKey, Summary] = {}
        self.evals: dict[str, Eval] = {}
        self.allocs: dict[str, Alloc] = {}
        self.evals_by_job: dict[JobKey, dict[str, None]] = {}
        self.allocs_by_job: dict[JobKey, dict[str, None]] = {}
        self.allocs_by_eval: dict[str, dict[str, None]] = {}
        self.idempotency: dict[tuple[str, str, str], str] = {}
        self.dead_since: dict[JobKey, float] = {}
        self.namespaces: dict[str, JsonObj] = {}
        self.tables: dict[str, int] = {}
        self.watch = WatchHub()
        self.broker = EventBroker(event_buffer)

    def write(self, msg_type: str) -> Write:
        return Write(self, msg_type)

    def commit(self, w: Write) -> None:
        w.finish_jobs()
        for table in w.tables:
            self.tables[table] = w.index
        if self.watch.active:
            for key in w.keys:
                self.watch.notify(key)
        if w.events:
            self.broker.publish(Batch(w.index, w.events))

    def table_index(self, *tables: str) -> int:
        return max((self.tables.get(t, 1) for t in tables), default=1)

    def job_evals(self, key: JobKey) -> list[Eval]:
        return [self.evals[i] for i in self.evals_by_job.get(key, ())]

    def job_allocs(self, key: JobKey) -> list[Alloc]:
        return [self.allocs[i] for i in self.allocs_by_job.get(key, ())]

    def eval_allocs(self, eval_id: str) -> list[Alloc]:
        return [self.allocs[i] for i in self.allocs_by_eval.get(eval_id, ())]

    def summary_json(self, key: JobKey) -> JsonObj | None:
        job = self.jobs.get(key)
        summary = self.summaries.get(key)
        if job is None or summary is None:
            return None
        groups: dict[str, JsonObj] = {}
        for tg in job.get("TaskGroups") or ():
            groups[tg["Name"]] = {
                "Queued": summary.queued.get(tg["Name"], 0),
                "Complete": 0,
                "Failed": 0,
                "Running": 0,
                "Starting": 0,
                "Lost": 0,
                "Unknown": 0,
            }
        names = {"pending": "Starting", "running": "Running", "complete": "Complete",
                 "failed": "Failed", "lost": "Lost", "unknown": "Unknown"}
        for alloc in self.job_allocs(key):
            group = groups.get(alloc.task_group)
            if group is not None:
                group[names[alloc.client_status]] += 1
        return {
            "JobID": key[1],
            "Namespace": key[0],
            "Summary": groups,
            "Children": dict(summary.children or {"Pending": 0, "Running": 0, "Dead": 0}),
            "CreateIndex": summary.create_index,
            "ModifyIndex": summary.modify_index,
        }

    def collect(self, older_than: float) -> int:
        """Remove jobs dead for longer than older_than seconds, with their evals and allocs."""
        cutoff = time.monotonic() - older_than
        expired = [k for k, since in self.dead_since.items() if since < cutoff]
        if not expired:
            return 0
        with self.write("JobBatchDeregister") as w:
            for key in expired:
                w.delete_job(key, emit=False)
                for eval_id in self.evals_by_job.pop(key, {}):
                    self.evals.pop(eval_id, None)
                    self.allocs_by_eval.pop(eval_id, None)
                for alloc_id in self.allocs_by_job.pop(key, {}):
                    self.allocs.pop(alloc_id, None)
            w.tables.update(("evals", "allocs"))
        return len(expired)
