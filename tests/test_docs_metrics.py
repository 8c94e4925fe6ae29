"""The documentation's metrics tables (docs/operations.md) name exactly what the worker and
the tracker export."""

from __future__ import annotations

import re
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry

from dispatchq.tracker.metrics import TrackerMetrics
from dispatchq.worker.metrics import WorkerMetrics

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
_ROW = re.compile(r"^\| `([a-z_*]+)` \|")


def readme_tables() -> list[set[str]]:
    """The metric names of each table of the "Metrics" section, in order."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text[text.index("\n## Metrics\n") :]
    section = section[: (section + "\n## ").index("\n## ", 1)]
    tables: list[set[str]] = []
    inside = False
    for line in section.splitlines():
        match = _ROW.match(line)
        if line.startswith("| metric |"):
            tables.append(set())
            inside = True
        elif match and inside:
            tables[-1].add(match.group(1))
        elif not line.startswith("|"):
            inside = False
    return tables


def exported(registry: CollectorRegistry) -> set[str]:
    """The names a scrape shows, counters with their `_total`, `process_*` as one."""
    names = set()
    for family in registry.collect():
        if family.name.startswith("process_"):
            names.add("process_*")
        else:
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_the_readme_lists_every_worker_and_tracker_metric(redis_client: redis.Redis) -> None:
    worker_table, tracker_table = readme_tables()
    worker = WorkerMetrics(redis_client, "readme-metrics", rate_ceiling=100.0)
    assert worker_table == exported(worker.registry)
    tracker = TrackerMetrics(redis_client)
    assert tracker_table == exported(tracker.registry)
    assert {"dispatchq_children_running", "dispatchq_children_finished_total"} <= tracker_table
