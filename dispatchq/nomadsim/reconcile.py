"""What an evaluation does with a task group's existing allocations (scheduler/reconciler).

For each allocation at the end of its chain (`NextAllocation == ""`):
- on a node that is down and not terminal: `lost` (DesiredStatus stop, `alloc is lost
  since its node is down`), and a replacement with `PreviousAllocation`;
- marked to migrate (DesiredTransition.Migrate: `POST /v1/allocation/<id>/stop`, a node
  drain) and not terminal: stopped (`alloc is being migrated`), its tasks killed, and a
  replacement with `PreviousAllocation` (no RescheduleTracker: not a reschedule);
- `failed` with DesiredStatus run: if its reschedule policy allows another attempt
  (alloc.go nextRescheduleTime), it is replaced now when the time has come (within a
  1 s window) or when this evaluation is its follow-up; otherwise a follow-up
  evaluation (`alloc-failure`, `created for delayed rescheduling`, WaitUntil) is made
  and the alloc gets its `FollowupEvalID`. A replacement carries the
  RescheduleTracker (generic_sched.go UpdateRescheduleTracker) and the failed alloc
  is stopped with `alloc was rescheduled because it failed`. A failed alloc that may
  not be rescheduled stays as it is and counts (a batch job does not replace it);
- any other alloc with DesiredStatus run counts toward the group's Count.
The remaining Count is placed in new slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatchq.nomadsim.model import Alloc, JsonObj, evolve
from dispatchq.nomadsim.policies import (
    SECOND,
    next_delay,
    next_reschedule,
    scaled_policy,
    tracker_events,
)

LOST = "alloc is lost since its node is down"
MIGRATING = "alloc is being migrated"
RESCHEDULED = "alloc was rescheduled because it failed"
FOLLOWUP = "created for delayed rescheduling"


@dataclass
class Placement:
    name: str
    previous: Alloc | None = None
    tracker: JsonObj | None = None


@dataclass
class GroupPlan:
    place: list[Placement] = field(default_factory=list)
    #: Existing allocs changed by this plan (lost, FollowupEvalID), by ID.
    updates: dict[str, Alloc] = field(default_factory=dict)
    #: Failed allocs to be rescheduled later, with the unix ns of that.
    later: list[tuple[Alloc, int]] = field(default_factory=list)
    #: Allocs stopped by this plan that a client still runs (migrated: drain.py).
    stopping: list[str] = field(default_factory=list)


def reconcile_group(eval_id: str, prefix: str, group: JsonObj, allocs: list[Alloc], *,
                    down: set[str], now: int, scale: float) -> GroupPlan:
    """The plan for one group; prefix is `<job ID>.<group>` (alloc names)."""
    plan = GroupPlan()
    name = group["Name"]
    policy = group.get("ReschedulePolicy")
    real = scaled_policy(policy, scale) if policy else None
    window = int(SECOND * scale)
    used: set[str] = set()
    have = 0
    for alloc in allocs:
        if alloc.task_group != name or alloc.next_allocation:
            continue
        used.add(alloc.name)
        if alloc.node_id in down and not alloc.terminal:
            lost = evolve(alloc, desired_status="stop", desired_description=LOST,
                          client_status="lost", modify_time=now)
            plan.updates[alloc.id] = lost
            plan.place.append(Placement(alloc.name, lost))
            continue
        if alloc.client_status == "lost":
            plan.place.append(Placement(alloc.name, alloc))
            continue
        if alloc.migrate and not alloc.terminal:
            moved = evolve(alloc, desired_status="stop", desired_description=MIGRATING,
                           modify_time=now)
            plan.updates[alloc.id] = moved
            plan.stopping.append(alloc.id)
            plan.place.append(Placement(alloc.name, moved))
            continue
        if alloc.desired_status != "run":
            used.discard(alloc.name)
            continue
        if alloc.client_status != "failed" or real is None:
            have += 1
            continue
        events = list((alloc.reschedule_tracker or {}).get("Events") or ())
        # Allocation.LastEventTime: the latest FinishedAt, else ModifyTime
        failed_at = alloc.last_event or alloc.modify_time
        when, eligible = next_reschedule(events, real, failed_at)
        if alloc.followup_eval_id and alloc.followup_eval_id != eval_id:
            have += 1  # waiting for its follow-up evaluation
        elif not eligible:
            have += 1
        elif alloc.followup_eval_id == eval_id or when <= now + window:
            delay = next_delay(events, real, failed_at)
            carried = tracker_events(events, real, now)
            event = {"RescheduleTime": now, "PrevAllocID": alloc.id,
                     "PrevNodeID": alloc.node_id, "Delay": delay}
            plan.place.append(Placement(alloc.name, alloc,
                                        {"Events": [*carried, event], "LastReschedule": "ok"}))
        else:
            plan.later.append((alloc, when))
            have += 1
    free = (f"{prefix}[{i}]" for i in range(1_000_000))
    for _ in range(group["Count"] - have - len(plan.place)):
        slot = next(n for n in free if n not in used)
        used.add(slot)
        plan.place.append(Placement(slot))
    return plan
