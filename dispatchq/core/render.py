"""The lines `nomad job dispatch` prints (v0.8.3 style: no timestamps), from events.

`render(event, verbose=...)` returns the event's lines; the caller writes each to stdout,
or to stderr when `Line.stderr` is set. IDs are cut to 8 characters unless verbose, except
where the CLI prints them in full (the dispatched job ID, the job that triggered the
evaluation, and the ID in "No evaluation with id"). Go ranges over maps in random order;
here task groups and metric keys are sorted so that output is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatchq.core.durations import go_duration
from dispatchq.core.transcript import (
    AllocationPlaced,
    AllocationsReadFailed,
    AllocationStatusChanged,
    BlockedEvalWaiting,
    Dispatched,
    DispatchFailed,
    EvalFinished,
    EvalReadFailed,
    EvalStatusChanged,
    Event,
    MonitorStarted,
    NextEvalScheduled,
    TaskGroupFailed,
    TriggeredByJob,
    TriggeredByNode,
    WithinDeployment,
)

SHORT_ID = 8
INFO = "==> "  # cli.PrefixedUi InfoPrefix and ErrorPrefix
OUTPUT = "    "  # cli.PrefixedUi OutputPrefix
METRIC = "  "  # formatAllocMetrics' own prefix, inside OUTPUT


@dataclass(frozen=True)
class Line:
    text: str
    stderr: bool = False


def limit(identifier: str, verbose: bool) -> str:
    """The CLI's `limit`: the first 8 characters unless verbose."""
    return identifier if verbose else identifier[:SHORT_ID]


def go_quote(text: str) -> str:
    """Go's `%q` for a string: double quotes, with Go's escapes."""
    escapes = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t"}
    escapes |= {"\v": r"\v", "\\": r"\\", '"': r"\""}
    out = []
    for char in text:
        code = ord(char)
        if char in escapes:
            out.append(escapes[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def format_kv(pairs: list[tuple[str, str]]) -> list[str]:
    """The CLI's formatKV: keys padded to the longest, joined to values with " = "."""
    width = max((len(key) for key, _ in pairs), default=0)
    return [f"{key.ljust(width)} = {value}" for key, value in pairs]


def metric_lines(metric: dict[str, Any]) -> list[str]:
    """formatAllocMetrics (v0.8.3 wording), without the indentation."""
    lines = []
    if not metric.get("NodesEvaluated"):
        lines.append("* No nodes were eligible for evaluation")
    for dc, available in sorted((metric.get("NodesAvailable") or {}).items()):
        if available == 0:
            lines.append(f"* No nodes are available in datacenter {go_quote(dc)}")
    for node_class, count in sorted((metric.get("ClassFiltered") or {}).items()):
        lines.append(f"* Class {go_quote(node_class)} filtered {count} nodes")
    for constraint, count in sorted((metric.get("ConstraintFiltered") or {}).items()):
        lines.append(f"* Constraint {go_quote(constraint)} filtered {count} nodes")
    if exhausted := metric.get("NodesExhausted"):
        lines.append(f"* Resources exhausted on {exhausted} nodes")
    for node_class, count in sorted((metric.get("ClassExhausted") or {}).items()):
        lines.append(f"* Class {go_quote(node_class)} exhausted on {count} nodes")
    for dimension, count in sorted((metric.get("DimensionExhausted") or {}).items()):
        lines.append(f"* Dimension {go_quote(dimension)} exhausted on {count} nodes")
    for quota in metric.get("QuotaExhausted") or []:
        lines.append(f"* Quota limit hit {go_quote(quota)}")
    return lines


def _task_group_failed(event: TaskGroupFailed) -> list[str]:
    noun = "allocation" if event.failures == 1 else "allocations"
    head = f"Task Group {go_quote(event.task_group)} (failed to place {event.failures} {noun}):"
    # The CLI prints each line of the metrics block; an empty block is one empty line.
    body = [OUTPUT + METRIC + line for line in metric_lines(event.metric)] or [""]
    return [OUTPUT + head, *body]


def render(event: Event, *, verbose: bool = False) -> list[Line]:
    """The CLI's lines for one event (possibly none)."""
    out = _render_stdout(event, verbose)
    if out is not None:
        return [Line(text) for text in out]
    if isinstance(event, DispatchFailed):
        return [Line(f"Failed to dispatch job: {event.text}", stderr=True)]
    if isinstance(event, EvalReadFailed):
        return [Line(f"{INFO}No evaluation with id {go_quote(event.eval_id)} found", True)]
    if isinstance(event, AllocationsReadFailed):
        return [Line(f"{INFO}Error reading allocations: {event.text}", stderr=True)]
    raise TypeError(f"no rendering for {event!r}")


def _render_stdout(event: Event, verbose: bool) -> list[str] | None:
    if isinstance(event, Dispatched):
        pairs = [("Dispatched Job ID", event.dispatched_job_id)]
        if event.eval_id:
            pairs.append(("Evaluation ID", limit(event.eval_id, verbose)))
        return format_kv(pairs) + ([""] if event.followed else [])
    if isinstance(event, MonitorStarted):
        return [f"{INFO}Monitoring evaluation {go_quote(limit(event.eval_id, verbose))}"]
    if isinstance(event, TriggeredByNode):
        return [f"{OUTPUT}Evaluation triggered by node {go_quote(limit(event.node_id, verbose))}"]
    if isinstance(event, TriggeredByJob):
        return [f"{OUTPUT}Evaluation triggered by job {go_quote(event.job_id)}"]
    if isinstance(event, WithinDeployment):
        deployment = go_quote(limit(event.deployment_id, verbose))
        return [f"{OUTPUT}Evaluation within deployment: {deployment}"]
    if isinstance(event, AllocationPlaced):
        verb = "modified" if event.modified else "created"
        alloc = go_quote(limit(event.alloc_id, verbose))
        node = go_quote(limit(event.node_id, verbose))
        group = go_quote(event.task_group)
        return [f"{OUTPUT}Allocation {alloc} {verb}: node {node}, group {group}"]
    if isinstance(event, AllocationStatusChanged):
        alloc = go_quote(limit(event.alloc_id, verbose))
        change = f"{go_quote(event.old)} -> {go_quote(event.new)}"
        detail = f" ({event.description})" if event.description else ""
        return [f"{OUTPUT}Allocation {alloc} status changed: {change}{detail}"]
    if isinstance(event, EvalStatusChanged):
        change = f"{go_quote(event.old)} -> {go_quote(event.new)}"
        return [f"{OUTPUT}Evaluation status changed: {change}"]
    if isinstance(event, EvalFinished):
        text = f"Evaluation {go_quote(limit(event.eval_id, verbose))} finished with status "
        text += go_quote(event.status)
        if event.placement_failed:
            text += " but failed to place all allocations:"
        return [INFO + text]
    if isinstance(event, TaskGroupFailed):
        return _task_group_failed(event)
    if isinstance(event, BlockedEvalWaiting):
        blocked = go_quote(limit(event.eval_id, verbose))
        return [f"{OUTPUT}Evaluation {blocked} waiting for additional capacity to place remainder"]
    if isinstance(event, NextEvalScheduled):
        if not event.wait_ns:
            return []
        following = go_quote(limit(event.eval_id, verbose))
        return [f"{INFO}Monitoring next evaluation {following} in {go_duration(event.wait_ns)}"]
    return None
