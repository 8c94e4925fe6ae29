"""The scheduler worker: evaluations, placements, blocked evals, the NextEval knob, GC.

- Evaluations are taken from a FIFO queue (one at a time after `schedule_delay` when
  it is set, otherwise in batches). Each eval is planned on its own; a batch's
  placements (`PlanResult` events) and eval outcomes (`EvaluationUpdated` events) are
  written as one entry.
- A task group that does not fit gets FailedTGAllocs and a blocked eval. When an
  alloc frees capacity, blocked evals that could now place go back to `pending` (oldest
  first, only as many as the freed capacity could take) and are re-evaluated; one that
  still cannot place is blocked again (Nomad's ReblockEval). A newer blocked eval for
  the same job cancels the older one.
- `fail_next`: the next N evaluations end `failed` (delivery limit) with a NextEval
  follow-up that is scheduled after `followup_wait` seconds (the NextEval knob).
- Allocs then run on the simulated clients (clients.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from dispatchq.nomadsim.clients import Clients
from dispatchq.nomadsim.config import SimConfig
from dispatchq.nomadsim.jsonshape import go_quote, new_uuid, now_ns
from dispatchq.nomadsim.model import Alloc, Eval, JsonObj, Node, evolve
from dispatchq.nomadsim.placement import Placer, make_nodes
from dispatchq.nomadsim.policies import reschedule_eligible, scaled_policy
from dispatchq.nomadsim.reconcile import FOLLOWUP, RESCHEDULED, reconcile_group
from dispatchq.nomadsim.state import JobKey, Store, Write

DELIVERY_LIMIT = 3
#: Evals planned per scheduler round (their writes are shared).
BATCH = 256


@dataclass
class Plan:
    ev: Eval
    key: JobKey
    placed: list[Alloc]
    failed: dict[str, JsonObj]
    queued: dict[str, int]
    #: Existing allocs this plan changes (lost, rescheduled, FollowupEvalID).
    updates: list[Alloc]
    followups: list[Eval]
    #: Allocs this plan stops whose tasks their client still runs (migrations).
    stopping: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, store: Store, config: SimConfig) -> None:
        self.store = store
        self.config = config
        self.nodes = make_nodes(
            config.nodes, config.node_cpu, config.node_memory, config.datacenter
        )
        self.placer = Placer(self.nodes)
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.blocked: dict[JobKey, str] = {}
        self.loop = asyncio.get_running_loop()
        self.clients = Clients(store, config, self.capacity_freed,
                               lambda w, alloc: alloc_failed(self, w, alloc))
        self.down: set[str] = set()
        self.fail_next = config.fail_evals
        self.unblock_pending = False
        self.processed = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._collector())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def enqueue(self, eval_id: str) -> None:
        self.queue.append(eval_id)
        self.wake.set()

    def new_eval(self, job: JsonObj, triggered_by: str, index: int, priority: int = 0) -> Eval:
        now = now_ns()
        return Eval(
            id=new_uuid(),
            namespace=job["Namespace"],
            priority=priority or job["Priority"],
            type=job["Type"],
            triggered_by=triggered_by,
            job_id=job["ID"],
            job_modify_index=job.get("JobModifyIndex") or index,
            status="pending",
            create_index=index,
            modify_index=index,
            create_time=now,
            modify_time=now,
        )

    async def _worker(self) -> None:
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            if self.config.schedule_delay > 0:
                await asyncio.sleep(self.config.schedule_delay)
                batch = [self.queue.popleft()] if self.queue else []
            else:
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), BATCH))]
            self.process(batch)
            self.processed += len(batch)
            await asyncio.sleep(0)

    async def _collector(self) -> None:
        if self.config.gc_after <= 0:
            return
        while True:
            await asyncio.sleep(self.config.gc_interval)
            self.store.collect(self.config.gc_after)
            for key in [k for k in self.blocked if k not in self.store.jobs]:
                del self.blocked[key]

    # -- evaluation ------------------------------------------------------------------

    def process(self, eval_ids: list[str]) -> None:
        """Schedule a batch of evals: one plan write for all placements, then one eval
        update write (each eval is still planned on its own, in queue order)."""
        plans: list[Plan] = []
        batch_allocs: dict[JobKey, list[Alloc]] = {}
        batch_updates: dict[str, Alloc] = {}
        for eval_id in eval_ids:
            ev = self.store.evals.get(eval_id)
            if ev is None or ev.status != "pending":
                continue
            if self.fail_next > 0 and ev.triggered_by != "failed-follow-up":
                self.fail_next -= 1
                self._fail(ev)
                continue
            key = (ev.namespace, ev.job_id)
            job = self.store.jobs.get(key)
            if job is None or job["Stop"]:
                self._stop_job(ev, key)
                continue
            plans.append(self._plan(ev, key, job, batch_allocs.setdefault(key, []),
                                    batch_updates))
        if plans:
            self._apply(plans)

    def _fail(self, ev: Eval) -> None:
        wait_ns = int(self.config.followup_wait * 1e9)
        store = self.store
        with store.write("EvaluationUpdated") as w:
            follow = evolve(
                ev,
                id=new_uuid(),
                triggered_by="failed-follow-up",
                status="pending",
                previous_eval=ev.id,
                wait_ns=wait_ns,
                create_index=w.index,
                create_time=now_ns(),
                modify_time=now_ns(),
            )
            w.put_eval(follow)
            w.put_eval(
                evolve(
                    ev,
                    status="failed",
                    status_description=f"evaluation reached delivery limit ({DELIVERY_LIMIT})",
                    next_eval=follow.id,
                    modify_time=now_ns(),
                )
            )
        asyncio.get_running_loop().call_later(self.config.followup_wait, self.enqueue, follow.id)

    def _stop_job(self, ev: Eval, key: JobKey) -> None:
        store = self.store
        allocs = [a for a in store.job_allocs(key) if not a.terminal]
        if allocs:
            with store.write("PlanResult") as w:
                for alloc in allocs:
                    w.put_alloc(
                        evolve(
                            alloc,
                            desired_status="stop",
                            desired_description="alloc not needed due to job update",
                            modify_time=now_ns(),
                        )
                    )
                    self.clients.release(alloc.id)
                    self.clients.stop(alloc.id)
        blocked_id = self.blocked.pop(key, None)
        with store.write("EvaluationUpdated") as w:
            blocked = store.evals.get(blocked_id or "")
            if blocked is not None and not blocked.terminal and blocked.id != ev.id:
                w.put_eval(evolve(blocked, status="canceled",
                                   status_description="job stopped", modify_time=now_ns()))
            w.put_eval(evolve(ev, status="complete", modify_time=now_ns(), snapshot_index=w.index))
        if allocs:
            self.capacity_freed()

    def _plan(self, ev: Eval, key: JobKey, job: JsonObj, in_batch: list[Alloc],
              batch_updates: dict[str, Alloc]) -> Plan:
        """Placements for one eval (reconcile.py; allocs of the same job earlier in the
        batch count, with the changes made to them)."""
        existing = [batch_updates.get(a.id, a) for a in self.store.job_allocs(key)] + in_batch
        now = now_ns()
        placed: list[Alloc] = []
        failed: dict[str, JsonObj] = {}
        queued: dict[str, int] = {}
        updates: dict[str, Alloc] = {}
        later: list[tuple[Alloc, int]] = []
        stopping: list[str] = []
        for group in job["TaskGroups"]:
            name = group["Name"]
            plan = reconcile_group(ev.id, f"{job['ID']}.{name}", group, existing,
                                   down=self.down, now=now, scale=self.config.time_scale)
            updates.update(plan.updates)
            later.extend(plan.later)
            stopping.extend(plan.stopping)
            queued[name] = 0
            want = len(plan.place)
            for slot, place in enumerate(plan.place):
                node, metric = self.placer.select(job, group)
                if node is None:
                    metric["CoalescedFailures"] = want - slot - 1
                    failed[name] = metric
                    queued[name] = want - slot
                    break
                alloc = self._new_alloc(ev, job, group, node, metric=metric, name=place.name)
                previous = place.previous
                if previous is not None:
                    alloc.previous_allocation = previous.id
                    alloc.reschedule_tracker = place.tracker
                    prev = updates.get(previous.id, previous)
                    if place.tracker is not None:
                        prev = evolve(prev, desired_status="stop",
                                      desired_description=RESCHEDULED)
                    updates[previous.id] = evolve(prev, next_allocation=alloc.id,
                                                  modify_time=now)
                placed.append(alloc)
        followups: list[Eval] = []
        if later:
            follow = self.new_eval(job, "alloc-failure", self.store.index + 1)
            follow.status_description = FOLLOWUP
            follow.wait_until = min(when for _, when in later)
            follow.previous_eval = ev.id
            followups.append(follow)
            for alloc, _ in later:
                updates[alloc.id] = evolve(updates.get(alloc.id, alloc),
                                           followup_eval_id=follow.id, modify_time=now)
        in_batch.extend(placed)
        batch_updates.update(updates)
        return Plan(ev, key, placed, failed, queued, list(updates.values()), followups,
                    stopping)

    def _apply(self, plans: list[Plan]) -> None:
        """Write the plans' allocs (`PlanResult` events) and the evals' outcomes
        (`EvaluationUpdated` events) as one entry: Nomad applies the plan and then
        updates the eval in two raft entries; sharing one index changes nothing a client
        can rely on and halves the commits per dispatch."""
        store = self.store
        now = now_ns()
        loop = asyncio.get_running_loop()
        with store.write("PlanResult") as w:
            for plan in plans:
                for alloc in plan.updates:
                    w.put_alloc(alloc)
                for alloc_id in plan.stopping:
                    self.clients.release(alloc_id)
                    self.clients.stop(alloc_id)
                for alloc in plan.placed:
                    w.put_alloc(alloc)
                    self.clients.place(alloc.id)
                for follow in plan.followups:
                    follow.create_index = w.index
                    w.put_eval(follow, "EvaluationUpdated")
                    wait = max(0.0, (follow.wait_until - now) / 1e9)
                    loop.call_later(wait, self.enqueue, follow.id)
            for plan in plans:
                ev, key, failed, queued = plan.ev, plan.key, plan.failed, plan.queued
                summary = store.summaries.get(key)
                if summary is not None:
                    summary.queued = queued
                if failed and self.blocked.get(key) == ev.id:
                    w.put_eval(evolve(ev, status="blocked", failed_tg_allocs=failed,
                                      queued_allocations=queued, modify_time=now),
                               "EvaluationUpdated")
                    continue
                blocked_id = ""
                if failed:
                    blocked_id = self._block(ev, key, failed, w)
                elif self.blocked.get(key) == ev.id:
                    del self.blocked[key]
                w.put_eval(
                    evolve(
                        ev,
                        status="complete",
                        failed_tg_allocs=failed or None,
                        queued_allocations=queued,
                        blocked_eval=blocked_id,
                        snapshot_index=w.index - 1,
                        modify_time=now,
                    ),
                    "EvaluationUpdated",
                )

    def _block(self, ev: Eval, key: JobKey, failed: dict[str, JsonObj], w: Write) -> str:
        now = now_ns()
        blocked = evolve(
            ev,
            id=new_uuid(),
            status="blocked",
            triggered_by="queued-allocs",
            status_description="created to place remaining allocations",
            previous_eval=ev.id,
            next_eval="",
            blocked_eval="",
            failed_tg_allocs=failed,
            queued_allocations=None,
            class_eligibility={},
            create_index=w.index,
            create_time=now,
            modify_time=now,
        )
        w.put_eval(blocked, "EvaluationUpdated")
        older = self.store.evals.get(self.blocked.get(key, ""))
        if older is not None and older.status == "blocked":
            w.put_eval(
                evolve(
                    older,
                    status="canceled",
                    status_description=(
                        f"existing blocked evaluation exists for job {go_quote(key[1])}"
                    ),
                    modify_time=now,
                ),
                "EvaluationUpdated",
            )
        self.blocked[key] = blocked.id
        return blocked.id

    def _new_alloc(
        self, ev: Eval, job: JsonObj, group: JsonObj, node: Node, *, metric: JsonObj, name: str
    ) -> Alloc:
        info = self.placer.info(job, group)
        now = now_ns()
        alloc = Alloc(
            id=new_uuid(),
            namespace=job["Namespace"],
            eval_id=ev.id,
            name=name,
            node_id=node.id,
            node_name=node.name,
            job_id=job["ID"],
            job=job,
            task_group=group["Name"],
            tasks=info.tasks,
            desired_status="run",
            client_status="pending",
            create_index=0,
            modify_index=0,
            create_time=now,
            modify_time=now,
            metrics=metric,
        )
        self.clients.hold(alloc.id, node, info.cpu, info.memory_mb)
        return alloc

    # -- blocked evals ---------------------------------------------------------------

    def capacity_freed(self) -> None:
        if self.blocked and not self.unblock_pending:
            self.unblock_pending = True
            asyncio.get_running_loop().call_soon(self._unblock)

    def _unblock(self) -> None:
        self.unblock_pending = False
        store = self.store
        free = {n.id: [n.cpu - n.used_cpu, n.memory_mb - n.used_memory_mb] for n in self.nodes}
        ready: list[Eval] = []
        for key, eval_id in list(self.blocked.items()):
            ev = store.evals.get(eval_id)
            job = store.jobs.get(key)
            if ev is None or ev.status != "blocked" or job is None:
                continue
            groups = [g for g in job["TaskGroups"] if g["Name"] in (ev.failed_tg_allocs or {})]
            if any(self.placer.could_fit(job, g, free) for g in groups):
                ready.append(ev)
        if not ready:
            return
        with store.write("EvaluationUpdated") as w:
            for ev in ready:
                w.put_eval(evolve(ev, status="pending", modify_time=now_ns()))
        for ev in ready:
            self.enqueue(ev.id)


def alloc_failed(scheduler: Scheduler, w: Write, alloc: Alloc) -> None:
    """As nomad/node_endpoint.go UpdateAlloc: a failed alloc whose reschedule policy still
    allows an attempt, and that has no FollowupEvalID yet, gets an `alloc-failure`
    evaluation in the same write as the client's update."""
    if alloc.desired_status != "run" or alloc.followup_eval_id:
        return
    job = scheduler.store.jobs.get((alloc.namespace, alloc.job_id))
    if job is None or job["Stop"]:
        return
    group = next((g for g in job["TaskGroups"] if g["Name"] == alloc.task_group), None)
    policy = group.get("ReschedulePolicy") if group else None
    if not policy:
        return
    events = (alloc.reschedule_tracker or {}).get("Events") or []
    if not reschedule_eligible(events, scaled_policy(policy, scheduler.config.time_scale),
                               now_ns()):
        return
    ev = scheduler.new_eval(job, "alloc-failure", w.index)
    w.put_eval(ev)
    scheduler.loop.call_soon(scheduler.enqueue, ev.id)
