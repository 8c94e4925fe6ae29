"""The lines of `dispatchq job dispatch -wait` after the seed's: what changed between two
views of a child (`decide.child_end` plus its `stage`), and the final line. Pure.

A view holds the last allocation of each reschedule chain; a change worth a line is an
allocation placed (a first one, a reschedule, or a replacement of a lost one), running,
lost or failed, stopped by the server (an operator's stop, a drain: its desired
description), a task started, restarting, or exited (with its code)."""

from __future__ import annotations

from typing import Any

from dispatchq.core.outcome import Outcome


def _short(alloc_id: str, verbose: bool) -> str:
    return alloc_id if verbose else alloc_id[:8]


def changes(
    before: dict[str, Any] | None, after: dict[str, Any], *, verbose: bool = False
) -> list[str]:
    """One line per change worth seeing from `before` (None: nothing seen) to `after`."""
    seen = {a["id"]: a for a in (before or {}).get("allocations", [])}
    lines: list[str] = []
    for alloc in after.get("allocations", []):
        name = f'Allocation "{_short(alloc["id"], verbose)}"'
        old = seen.get(alloc["id"])
        if old is None:
            if alloc.get("reschedules"):
                lines.append(f"{name} placed: rescheduled (attempt {alloc['reschedules']})")
            elif seen:
                lines.append(f"{name} placed: replaces an allocation that ended")
            else:
                lines.append(f'{name} placed in group "{alloc.get("task_group", "")}"')
        status = alloc.get("client_status", "")
        desired = alloc.get("desired_description", "")
        if status != (old or {}).get("client_status") and status in ("running", "lost", "failed"):
            # why, in Nomad's words: the server's reason (a lost node) before the client's
            why = (desired if status == "lost" else "") or alloc.get("client_description", "")
            lines.append(f"{name} {status}" + (f": {why}" if why and status != "running" else ""))
        elif (desired and desired != (old or {}).get("desired_description")
              and status not in ("lost", "failed")):  # fmt: skip
            lines.append(f"{name} stopped: {desired}")  # by an operator, a drain, its job
        old_tasks = (old or {}).get("tasks", {})
        for task, state in alloc.get("tasks", {}).items():
            lines += _task_lines(task, old_tasks.get(task), state)
    return lines


def _task_lines(task: str, old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    old = old or {}
    lines = []
    name = f'Task "{task}"'
    if new.get("restarts", 0) > old.get("restarts", 0):
        code = new.get("exit_code")
        after = f" after exit code {code}" if code is not None else ""
        lines.append(f"{name} restarting{after} (restart {new['restarts']})")
    if new.get("state") == "running" and old.get("state") != "running":
        lines.append(f"{name} started")
    if new.get("state") == "dead" and old.get("state") != "dead":
        if "exit_code" in new:
            lines.append(f"{name} exited with code {new['exit_code']}"
                         + (" (failed)" if new.get("failed") else ""))  # fmt: skip
        elif new.get("failed"):
            lines.append(f"{name} failed: {new.get('message') or 'no exit code'}")
        else:
            lines.append(f"{name} finished")
    return lines


def final_line(outcome: Outcome, child_id: str) -> str:
    """The job's end: `Job "<child>" finished|failed|...: <why> (exit code N)`."""
    end = {
        "finished": "completed: every allocation's tasks succeeded",
        "failed": f"failed: {outcome.error_message or 'a task failed'}",
        "unplaced": f"still waiting for placement: {outcome.error_message or ''}".rstrip(": "),
    }.get(outcome.status, f"ended ({outcome.error_kind}): {outcome.error_message or ''}")
    return f'Job "{child_id}" {end} (exit code {outcome.exit_code})'
