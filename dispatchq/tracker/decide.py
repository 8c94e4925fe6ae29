"""How a followed child ended, from `GET /v1/job/<child>` and its allocations: pure.

The child has ended when its job is `dead` with every allocation terminal. Then the last
allocation of each reschedule chain (no `NextAllocation` among those listed) decides:

- exit 0 (`finished`): every chain's last allocation `complete`, no task `Failed`, and not
  stopped for exceeding `max_run_duration`;
- exit 2 (`failed`): a chain ended `failed` (a task failed after its restarts and
  reschedules, a start error) or was stopped by `max_run_duration`; also (`unplaced`) the
  wait timeout ran out with nothing placed yet (the evaluation was blocked);
- exit 1 (`error`): anything else: `lost` without a replacement, `stopped` by someone else
  (the job's `Stop`), `collected` (404: garbage-collected before its end was seen),
  `wait_timeout` while it ran, `unreachable` (Nomad did not answer for too long).

A child with a failed chain and one stopped or lost counts as failed (2): it ran and a
task failed, which is what a caller acts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINISHED = "finished"
FAILED = "failed"
UNPLACED = "unplaced"
ERROR = "error"

LOST, STOPPED, COLLECTED = "lost", "stopped", "collected"
WAIT_TIMEOUT, UNREACHABLE = "wait_timeout", "unreachable"

TERMINAL_CLIENT = frozenset({"complete", "failed", "lost"})
STOP_DESIRED = frozenset({"stop", "evict"})
MAX_RUN = "max_run_duration"

SCHEDULED, RUNNING = "scheduled", "running"


@dataclass(frozen=True)
class Verdict:
    """`ended` False: still going, at `stage`. True: `status`, its exit code, the error kind
    and message for exit 1 (and a message for 2), and the child's end (`child`)."""

    ended: bool
    stage: str = SCHEDULED
    status: str = ""
    exit_code: int = 0
    error_kind: str = ""
    message: str = ""
    child: dict[str, Any] = field(default_factory=dict)


def terminal(alloc: dict[str, Any]) -> bool:
    """Nomad's `Allocation.TerminalStatus`: desired stop/evict, or a terminal client."""
    return (
        alloc.get("DesiredStatus") in STOP_DESIRED or alloc.get("ClientStatus") in TERMINAL_CLIENT
    )


def chain_ends(allocs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last allocation of each reschedule (or replacement) chain listed, by creation."""
    ids = {a.get("ID") for a in allocs}
    replaced = {a.get("PreviousAllocation") for a in allocs} - {None, ""}
    ends = [
        a
        for a in allocs
        if a.get("ID") not in replaced and a.get("NextAllocation") not in ids - {None, ""}
    ]
    return sorted(ends, key=lambda a: int(a.get("CreateIndex") or 0))


def stage(allocs: list[dict[str, Any]]) -> str:
    """`running` while an allocation runs, else `scheduled` (placed, pending, waiting)."""
    return RUNNING if any(a.get("ClientStatus") == "running" for a in allocs) else SCHEDULED


def decide(
    job: dict[str, Any] | None,
    allocs: list[dict[str, Any]],
    *,
    now: float = 0.0,
    deadline: float | None = None,
) -> Verdict:
    """The verdict on one child; `job` None means Nomad answered 404 for it."""
    if job is None:
        return Verdict(True, SCHEDULED, ERROR, 1, COLLECTED,
                       "the child job was garbage-collected before its end was seen")  # fmt: skip
    child = child_end(job, allocs)
    if job.get("Status") == "dead" and all(terminal(a) for a in allocs):
        return _ended(job, allocs, child)
    where = stage(allocs)
    if deadline is not None and now >= deadline:
        if not allocs:
            why = "still waiting for placement when the wait timeout ran out"
            return Verdict(True, where, UNPLACED, 2, "", why, child)
        return Verdict(True, where, ERROR, 1, WAIT_TIMEOUT,
                       f"the wait timeout ran out while the child was {where}", child)  # fmt: skip
    return Verdict(False, where)


def _ended(job: dict[str, Any], allocs: list[dict[str, Any]], child: dict[str, Any]) -> Verdict:
    ends = chain_ends(allocs)
    verdicts = [_chain(a) for a in ends]
    failed = [why for kind, why in verdicts if kind == FAILED]
    if ends and not failed and all(kind == FINISHED for kind, _ in verdicts):
        return Verdict(True, SCHEDULED, FINISHED, 0, child=child)
    if failed:
        return Verdict(True, SCHEDULED, FAILED, 2, "", "; ".join(failed), child)
    if job.get("Stop"):
        return Verdict(True, SCHEDULED, ERROR, 1, STOPPED,
                       "the child job was stopped before it ended", child)  # fmt: skip
    if not ends:
        return Verdict(True, SCHEDULED, ERROR, 1, STOPPED,
                       "the child job ended without an allocation", child)  # fmt: skip
    lost = [why for kind, why in verdicts if kind == LOST]
    if lost:
        return Verdict(True, SCHEDULED, ERROR, 1, LOST, "; ".join(lost), child)
    others = [why for kind, why in verdicts if kind != FINISHED]
    return Verdict(True, SCHEDULED, ERROR, 1, STOPPED, "; ".join(others), child)


def _chain(alloc: dict[str, Any]) -> tuple[str, str]:
    """How one chain ended: (finished | failed | lost | stopped, why), in Nomad's words:
    its task events, and the allocation's desired description (why the server stopped
    it: `alloc is lost since its node is down`, `alloc is being migrated`) before its
    client description (what its client last said, which may be stale)."""
    group = alloc.get("TaskGroup")
    name = f"allocation {str(alloc.get('ID', ''))[:8]}" + (f' (group "{group}")' if group else "")
    status = alloc.get("ClientStatus")
    description = str(alloc.get("ClientDescription") or "")
    desired = str(alloc.get("DesiredDescription") or "")
    states = alloc.get("TaskStates") or {}
    failed_tasks = [t for t, s in states.items() if (s or {}).get("Failed")]
    if status == "failed" or failed_tasks:
        tasks = ", ".join(_task_why(t, states[t] or {}) for t in failed_tasks) or description
        return FAILED, f"{name} failed: {tasks}"
    if MAX_RUN in description:
        return FAILED, f"{name}: {description}"
    if status == "complete" and alloc.get("DesiredStatus") not in STOP_DESIRED:
        return FINISHED, ""
    if status == "lost":
        return LOST, f"{name} was lost without a replacement ({desired or 'node down'})"
    return STOPPED, f"{name} was stopped ({desired or description or 'by its job'})"


def _task_why(task: str, state: dict[str, Any]) -> str:
    code = _exit_code(state)
    message = _last_detail(state, "driver_error") or _last_detail(state, "exit_message")
    if code is not None:
        return f"task {task} exited with code {code}" + (f" ({message})" if message else "")
    return f"task {task} failed" + (f": {message}" if message else "")


def _last_detail(state: dict[str, Any], key: str) -> str:
    for event in reversed(state.get("Events") or []):
        value = (event.get("Details") or {}).get(key)
        if value:
            return str(value)
    return ""


def _exit_code(state: dict[str, Any]) -> int | None:
    for event in reversed(state.get("Events") or []):
        if event.get("Type") == "Terminated":
            raw = (event.get("Details") or {}).get("exit_code", event.get("ExitCode"))
            try:
                return int(raw)
            except (TypeError, ValueError):
                return None
    return None


def _signal(state: dict[str, Any]) -> int | None:
    for event in reversed(state.get("Events") or []):
        if event.get("Type") == "Terminated":
            try:
                return int((event.get("Details") or {}).get("signal") or event.get("Signal") or 0)
            except (TypeError, ValueError):
                return None
    return None


_FRACTION = re.compile(r"(\.\d{6})\d+")


def unix_time(value: Any) -> float | None:
    """An RFC 3339 time (Go's, nanoseconds) as Unix seconds to the millisecond; None for
    Go's zero time or anything unreadable."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    try:
        moment = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None
    return round(moment.timestamp(), 3)


def child_end(
    job: dict[str, Any], allocs: list[dict[str, Any]], *, every: bool = False
) -> dict[str, Any]:
    """The outcome's `child`: the job's status and, for the last allocation of each chain,
    its ID, group, client status and description, desired description (why the server
    stopped it), reschedules, and per task its state,
    Failed, restarts, exit code, signal, exit message and start/finish times (Unix).
    Empty values are left out (compact: this is stored with every outcome). With `every`,
    every allocation, oldest first: a progress view (`progress.changes`), in which an
    allocation that a reschedule replaced still shows how it ended."""
    out: dict[str, Any] = {"status": job.get("Status") or ""}
    rows = []
    chosen = sorted(allocs, key=lambda a: a.get("CreateIndex") or 0) if every else None
    for alloc in chain_ends(allocs) if chosen is None else chosen:
        tracker = alloc.get("RescheduleTracker") or {}
        row: dict[str, Any] = {
            "id": alloc.get("ID", ""),
            "task_group": alloc.get("TaskGroup", ""),
            "client_status": alloc.get("ClientStatus", ""),
            "client_description": alloc.get("ClientDescription") or "",
            "desired_description": alloc.get("DesiredDescription") or "",
            "reschedules": len(tracker.get("Events") or []),
            "tasks": {
                name: _task(state or {}) for name, state in (alloc.get("TaskStates") or {}).items()
            },
        }
        rows.append({k: v for k, v in row.items() if v or k == "reschedules"})
    out["allocations"] = rows
    return out


def _task(state: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "state": state.get("State") or "",
        "failed": bool(state.get("Failed")),
        "restarts": int(state.get("Restarts") or 0),
        "exit_code": _exit_code(state),
        "signal": _signal(state) or None,
        "message": _last_detail(state, "driver_error") or _last_detail(state, "exit_message"),
        "started_at": unix_time(state.get("StartedAt")),
        "finished_at": unix_time(state.get("FinishedAt")),
    }
    keep = ("state", "failed", "restarts")
    return {k: v for k, v in row.items() if k in keep or v not in (None, "")}
