"""The tracker's Prometheus metrics (docs/operations.md, Metrics): children followed, running and
finished by outcome, whether this tracker leads, and its process's CPU and memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from dispatchq.core.outcome import Outcome
from dispatchq.store import keys
from dispatchq.tracker.follower import Checked, Tracker


class TrackerMetrics:
    """Children followed (ZCARD when scraped), running (as last checked) and finished, the
    lease, and the process's CPU and memory (docs/operations.md, Metrics)."""

    def __init__(self, client: redis.Redis, tracker: Tracker | None = None) -> None:
        self.registry = CollectorRegistry()
        self.finished = Counter(
            "dispatchq_children_finished", "followed children ended, by outcome",
            ["status", "exit_code", "error_kind"], registry=self.registry,
        )  # fmt: skip
        self.running = Gauge(
            "dispatchq_children_running", "followed children seen running at their last check",
            registry=self.registry,
        )  # fmt: skip
        self._running: set[str] = set()
        self._client, self.tracker = client, tracker
        self.registry.register(cast(Any, self))
        ProcessCollector(registry=self.registry)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        followed = GaugeMetricFamily("dispatchq_children_followed", "children being followed")
        leader = GaugeMetricFamily("dispatchq_tracker_leader", "1 while this tracker leads")
        try:
            followed.add_metric([], float(self._client.zcard(keys.FOLLOW)))
            yield followed
        except redis.RedisError:
            pass
        leader.add_metric([], 1.0 if self.tracker and self.tracker.leading else 0.0)
        yield leader

    def checked(self, checked: Checked) -> None:
        verdict = checked.verdict
        if verdict is None or verdict.ended:
            self._running.discard(checked.request_id)
        elif verdict.stage == "running":
            self._running.add(checked.request_id)
        else:
            self._running.discard(checked.request_id)
        self.running.set(len(self._running))

    def on_finished(self, checked: Checked, outcome: Outcome) -> None:
        self._running.discard(checked.request_id)
        self.finished.labels(
            status=outcome.status, exit_code=str(outcome.exit_code),
            error_kind=outcome.error_kind or "",
        ).inc()  # fmt: skip
