"""Run times: a histogram per batch of how long its requests took, kept as counters.

Each ending adds one to the batch's `rt:<bucket>` counter in the same step that counts it
done (`lua/done.lua`), so the dashboard draws the histogram from the one HGETALL that reads
the batch's progress, whatever its size. What is timed: for a child followed to its end
(`--until finished`), the child's own run, from the first of its tasks to start to the
last to finish (reschedules and restarts included); for any other request, the worker's
part: dispatch and evaluation. An attempt that ended is counted, a retried one too, so
the histogram may hold more runs than the batch has items. A request with nothing to time
(no child dispatched, or a child that never started) is not counted.
"""

from __future__ import annotations

from typing import Any

BOUNDS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
"""The buckets' upper bounds, in seconds; the last bucket is everything longer."""
FIELD_PREFIX = "rt:"


def bucket(seconds: float) -> int:
    """The index of the bucket `seconds` falls in (0 .. len(BOUNDS))."""
    for index, bound in enumerate(BOUNDS):
        if seconds < bound:
            return index
    return len(BOUNDS)


def label(index: int) -> str:
    """A bucket as people read it: "< 0.1 s", "1-2 s", "30 s-1 min", "> 2 h"."""
    if index == 0:
        return "< " + " ".join(_short(BOUNDS[0]))
    if index >= len(BOUNDS):
        return "> " + " ".join(_short(BOUNDS[-1]))
    (low, low_unit), (high, high_unit) = _short(BOUNDS[index - 1]), _short(BOUNDS[index])
    if low_unit == high_unit:
        return f"{low}-{high} {high_unit}"
    return f"{low} {low_unit}-{high} {high_unit}"


def _short(seconds: float) -> tuple[str, str]:
    if seconds >= 3600:
        return f"{seconds / 3600:g}", "h"
    if seconds >= 60:
        return f"{seconds / 60:g}", "min"
    return f"{seconds:g}", "s"


def run_seconds(stored: dict[str, Any]) -> float | None:
    """How long the request ran, from its stored outcome (`Outcome.to_stored`): the child's
    run when it was followed to its end, else dispatch plus evaluation; None for a request
    that dispatched nothing, or a child that never ran."""
    if not stored.get("dispatched_job_id"):
        return None
    child = stored.get("child")
    if isinstance(child, dict):
        starts, ends = [], []
        for alloc in child.get("allocations") or []:
            for task in (alloc.get("tasks") or {}).values():
                if isinstance(task.get("started_at"), int | float):
                    starts.append(task["started_at"])
                if isinstance(task.get("finished_at"), int | float):
                    ends.append(task["finished_at"])
        return max(0.0, max(ends) - min(starts)) if starts and ends else None
    timings = stored.get("timings")
    if not isinstance(timings, list) or len(timings) < 3 or timings[1] is None:
        return None
    return float(timings[1]) + float(timings[2] or 0.0)


def field_of(stored: dict[str, Any] | None) -> str:
    """The batch counter an ending adds one to, "" when there is nothing to time."""
    seconds = run_seconds(stored) if stored else None
    return "" if seconds is None else f"{FIELD_PREFIX}{bucket(seconds)}"


def histogram(fields: dict[str, str]) -> list[int]:
    """The counts per bucket (len(BOUNDS) + 1 of them) from a batch hash's fields."""
    counts = [0] * (len(BOUNDS) + 1)
    for name, value in fields.items():
        if name.startswith(FIELD_PREFIX):
            index = int(name[len(FIELD_PREFIX):])
            if 0 <= index < len(counts):
                counts[index] = int(value)
    return counts
