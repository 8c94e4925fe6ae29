"""Restart and reschedule policies: defaults, the restart tracker, reschedule timing.

- Defaults and merging follow api/tasks.go (TaskGroup.Canonicalize): a group's
  `RestartPolicy` is the job type's default with the given fields over it; its
  `ReschedulePolicy` is the default, then the job's `Reschedule`, then the group's.
  Durations are Go durations in nanoseconds, as on the wire.
- `RestartTracker.decide` is client/allocrunner/taskrunner/restarts/restarts.go's
  GetState (reason texts, 25 % jitter, the interval window, mode fail/delay).
- `next_delay`, `reschedule_eligible` and `reschedule_info` follow nomad/structs/alloc.go
  (NextDelay, RescheduleEligible, nextRescheduleTime) and structs.go (RescheduleTracker).

Every duration taken from a job is multiplied by the `--time-scale` when it is waited
for (`scaled`), so a test runs a 15 s restart delay in 15 ms with `--time-scale 0.001`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from dispatchq.nomadsim.jsonshape import go_duration
from dispatchq.nomadsim.model import JsonObj

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
MINUTE = 60 * SECOND

RESTART_DEFAULTS: dict[str, JsonObj] = {
    "batch": {"Attempts": 3, "Interval": 24 * HOUR, "Delay": 15 * SECOND, "Mode": "fail",
              "RenderTemplates": False},
    "service": {"Attempts": 2, "Interval": 30 * MINUTE, "Delay": 15 * SECOND, "Mode": "fail",
                "RenderTemplates": False},
}
RESCHEDULE_DEFAULTS: dict[str, JsonObj] = {
    "batch": {"Attempts": 1, "Interval": 24 * HOUR, "Delay": 5 * SECOND,
              "DelayFunction": "constant", "MaxDelay": 0, "Unlimited": False},
    "service": {"Attempts": 0, "Interval": 0, "Delay": 30 * SECOND,
                "DelayFunction": "exponential", "MaxDelay": HOUR, "Unlimited": True},
}
REASON_NO_RESTARTS = "Policy allows no restarts"
REASON_UNRECOVERABLE = "Error was unrecoverable"
REASON_WITHIN_POLICY = "Restart within policy"
REASON_DELAY = "Exceeded allowed attempts, applying a delay"
REASON_SUCCESS = "Restart unnecessary as task terminated successfully"
JITTER = 0.25


def _merge(base: JsonObj, over: Any) -> JsonObj:
    out = dict(base)
    if isinstance(over, dict):
        for key, value in over.items():
            if key in out and value is not None:
                out[key] = type(out[key])(value)
    return out


def canonicalize_group(job: JsonObj, group: JsonObj) -> None:
    """Fill the group's RestartPolicy and ReschedulePolicy (system jobs get none)."""
    kind = "batch" if job["Type"] in ("batch", "sysbatch") else "service"
    group["RestartPolicy"] = _merge(RESTART_DEFAULTS[kind], group.get("RestartPolicy"))
    if job["Type"] in ("system", "sysbatch"):
        group["ReschedulePolicy"] = None
    else:
        policy = _merge(RESCHEDULE_DEFAULTS[kind], job.get("Reschedule"))
        group["ReschedulePolicy"] = _merge(policy, group.get("ReschedulePolicy"))
    mrd = group.get("MaxRunDuration")
    group["MaxRunDuration"] = int(mrd) if mrd else None


@dataclass(slots=True)
class Decision:
    state: str  # "Terminated", "Not Restarting" or "Restarting"
    reason: str
    delay_ns: int = 0


class RestartTracker:
    """One task's restart tracker; times are loop seconds, policy durations ns; the
    delay it decides is real (scaled) ns."""

    __slots__ = ("count", "on_success", "policy", "scale", "start")

    def __init__(self, policy: JsonObj, batch: bool, now: float, scale: float) -> None:
        self.policy = policy
        self.on_success = not batch
        self.count = 0
        self.start = now
        self.scale = scale

    def decide(self, now: float, *, success: bool, start_error: bool,
               recoverable: bool) -> Decision:
        policy = self.policy
        attempts = policy["Attempts"]
        if attempts == 0:
            if not self.on_success and success:
                return Decision("Terminated", REASON_NO_RESTARTS)
            return Decision("Not Restarting", REASON_NO_RESTARTS)
        interval = policy["Interval"] * self.scale / SECOND
        if now > self.start + interval:
            self.count = 0
            self.start = now
        self.count += 1
        if start_error:
            if not recoverable:
                return Decision("Not Restarting", REASON_UNRECOVERABLE)
        elif success and not self.on_success:
            return Decision("Terminated", REASON_SUCCESS)
        if self.count > attempts:
            if policy["Mode"] == "fail":
                return Decision(
                    "Not Restarting",
                    f"Exceeded allowed attempts {attempts} in interval "
                    f'{go_duration(policy["Interval"])} and mode is "fail"',
                )
            remaining = self.start + interval - now
            return Decision("Restarting", REASON_DELAY, max(0, int(remaining * SECOND)))
        delay = max(1, int(policy["Delay"] * self.scale))
        return Decision("Restarting", REASON_WITHIN_POLICY,
                        delay + int(random.randrange(delay) * JITTER))  # noqa: S311


# -- rescheduling (times in unix ns, like the wire fields) ---------------------------------


def scaled_policy(policy: JsonObj, scale: float) -> JsonObj:
    """A reschedule policy with its durations in real (scaled) ns: what the scheduler
    waits and what RescheduleEvent.Delay records."""
    if scale == 1.0:
        return policy
    out = dict(policy)
    for key in ("Interval", "Delay", "MaxDelay"):
        out[key] = int(policy[key] * scale)
    return out


def reschedule_info(events: list[JsonObj], policy: JsonObj, fail_ns: int) -> tuple[int, int]:
    attempts, attempted = policy["Attempts"], 0
    interval = policy["Interval"]
    if attempts > 0:
        attempted = sum(1 for e in events if fail_ns - e["RescheduleTime"] < interval)
    return attempted, attempts


def reschedule_eligible(events: list[JsonObj], policy: JsonObj | None, fail_ns: int) -> bool:
    """RescheduleTracker.RescheduleEligible."""
    if policy is None:
        return False
    if policy["Unlimited"]:
        return True
    if policy["Attempts"] <= 0:
        return False
    if not events:
        return True
    attempted, attempts = reschedule_info(events, policy, fail_ns)
    return attempted < attempts


def next_delay(events: list[JsonObj], policy: JsonObj, fail_ns: int) -> int:
    """Allocation.NextDelay in ns."""
    delay: int = policy["Delay"]
    if not events:
        return delay
    function = policy["DelayFunction"]
    if function == "exponential":
        delay = events[-1]["Delay"] * 2
    elif function == "fibonacci":
        if len(events) >= 2:
            last, before = events[-1]["Delay"], events[-2]["Delay"]
            if before == policy["MaxDelay"] and last == policy["Delay"]:
                delay = last
            else:
                delay = last + before
    else:
        return delay
    max_delay = policy["MaxDelay"]
    if max_delay > 0 and delay > max_delay:
        delay = max_delay
        if fail_ns - events[-1]["RescheduleTime"] > delay:
            delay = policy["Delay"]
    return delay


def next_reschedule(events: list[JsonObj], policy: JsonObj | None,
                    fail_ns: int) -> tuple[int, bool]:
    """Allocation.nextRescheduleTime: (when in unix ns, eligible)."""
    if policy is None or (policy["Attempts"] == 0 and not policy["Unlimited"]):
        return 0, False
    delay = next_delay(events, policy, fail_ns)
    eligible = policy["Unlimited"] or (policy["Attempts"] > 0 and not events)
    if policy["Attempts"] > 0 and events:
        attempted, attempts = reschedule_info(events, policy, fail_ns)
        eligible = attempted < attempts and delay < policy["Interval"]
    return fail_ns + delay, eligible


def tracker_events(events: list[JsonObj], policy: JsonObj, now_ns: int) -> list[JsonObj]:
    """The events a replacement carries over (UpdateRescheduleTracker)."""
    if policy["Attempts"] > 0:
        interval = policy["Interval"]
        return [e for e in events if interval > 0 and now_ns - e["RescheduleTime"] <= interval]
    return events[-5:]
