"""Prometheus metrics of a worker process, served over HTTP on `DISPATCHQ_METRICS_PORT`.

- `dispatchq_dispatch_latency_seconds` (histogram): from a worker taking a request to
  Nomad's answer to the dispatch call (payload read and in-place retries included).
- `dispatchq_task_seconds{state}` (histogram): one run of the dispatch task, dispatch and
  monitoring; `state` is `success` (an outcome was stored), `retry` or `failure`.
- `dispatchq_outcomes_total{exit_code,status,error_kind}` (counter): outcomes stored.
- `dispatchq_retries_total{kind}` (counter): task retries, by the kind of error retried.
- `dispatchq_in_flight` (gauge): requests this process is working on now.
- `dispatchq_queue_depth{queue}` (gauge): requests waiting in the queue, every lane
  together (read at scrape, `dispatchq.store.lanes.backlog`).
- `dispatchq_lane_depth{queue,lane,tenant,batch}` (gauge): requests waiting per lane:
  `lane="interactive"` (requests in no batch), and `lane="batch"` per batch with a
  backlog, with its tenant (`-` for none); a drained batch's series goes away.
- `dispatchq_tenant_depth{queue,tenant}` (gauge): requests waiting per tenant's batches.
- `dispatchq_dead_letters` (gauge): entries in the dead-letter list (LLEN at scrape).
- `dispatchq_dispatch_rate` (gauge): the dispatches/s every worker may make now, the
  backpressure rate (`dispatchq.core.backpressure`): `dispatch_rate` unless Nomad pushed back.

plus the `process_*` metrics of prometheus_client (CPU, memory, open files).

The task metrics are counted from Celery's task signals, in the process that runs the
tasks: with the gevent, threads or solo pool that is the worker's one process, which also
serves them. With prefork they would be counted in the pool's children and never served,
so a prefork worker serves only the queue gauges (and says so in its log).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Self
from wsgiref.simple_server import WSGIServer

import redis
import structlog
from celery.signals import task_postrun, task_prerun, task_retry
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatchq.broker.app import TASK_DISPATCH
from dispatchq.config.settings import Settings
from dispatchq.core.backpressure import shared_rate
from dispatchq.store import keys, lanes

log = structlog.get_logger(__name__)

DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
SCRAPE_TIMEOUT = 2.0
"""Seconds a scrape waits for Redis before leaving the queue gauges out."""


class RedisGauges(Collector):
    """Queue depth, dead letters and the shared dispatch rate, read from Redis when
    Prometheus scrapes."""

    def __init__(self, client: redis.Redis, queue: str, rate_ceiling: float) -> None:
        self.client = client
        self.queue = queue
        self.rate_ceiling = rate_ceiling

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        depth = GaugeMetricFamily(
            "dispatchq_queue_depth", "Requests waiting in the queue.", labels=["queue"]
        )
        lane = GaugeMetricFamily(
            "dispatchq_lane_depth",
            "Requests waiting per lane (interactive, or a batch's).",
            labels=["queue", "lane", "tenant", "batch"],
        )
        tenant = GaugeMetricFamily(
            "dispatchq_tenant_depth",
            "Requests waiting in a tenant's batches.",
            labels=["queue", "tenant"],
        )
        dead = GaugeMetricFamily("dispatchq_dead_letters", "Entries in the dead-letter list.")
        rate = GaugeMetricFamily(
            "dispatchq_dispatch_rate", "Dispatches per second the workers may make now."
        )
        return depth, dead, rate, lane, tenant

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The names alone, so that registering does not read Redis."""
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            backlog = lanes.backlog(self.client, self.queue)
            dead_letters = self.client.llen(keys.DLQ)
            allowed = shared_rate(self.client, self.rate_ceiling)
        except redis.RedisError as err:
            # Absent rather than a made-up 0: an alert on the depth must not go quiet.
            log.warning("metrics.redis_unavailable", error=str(err))
            return ()
        families = depth, dead, rate, lane, tenant = self._families()
        depth.add_metric([self.queue], backlog.total)
        dead.add_metric([], dead_letters)
        rate.add_metric([], allowed)
        lane.add_metric([self.queue, lanes.INTERACTIVE, "", ""], backlog.interactive)
        for name, batches in backlog.batches.items():
            for batch_id, waiting in batches.items():
                lane.add_metric([self.queue, "batch", name, batch_id], waiting)
        for name, waiting in backlog.tenants.items():
            tenant.add_metric([self.queue, name], waiting)
        return families


def _attempt(task_id: str, task: Any) -> tuple[str, int]:
    """One run of a task: the retry of a request can start before the run that retried it
    has finished (its postrun waits for the RETRY state to be written), so the task ID
    alone does not tell them apart."""
    return task_id, getattr(getattr(task, "request", None), "retries", None) or 0


class WorkerMetrics:
    """The metrics of one worker process: `connect()` the signals, `serve()` over HTTP."""

    def __init__(self, client: redis.Redis, queue: str, rate_ceiling: float) -> None:
        self.registry = CollectorRegistry()
        self.dispatch_latency = Histogram(
            "dispatchq_dispatch_latency_seconds",
            "From a worker taking a request to Nomad's answer to the dispatch call.",
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "dispatchq_task_seconds",
            "One run of the dispatch task (dispatch and monitoring), by its end state.",
            ["state"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "dispatchq_outcomes",
            "Outcomes stored by this worker.",
            ["exit_code", "status", "error_kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "dispatchq_retries",
            "Task retries, by the kind of error retried.",
            ["kind"],
            registry=self.registry,
        )
        in_flight = Gauge(
            "dispatchq_in_flight",
            "Requests this worker process is working on now.",
            registry=self.registry,
        )
        in_flight.set_function(lambda: len(self._started))
        self.registry.register(RedisGauges(client, queue, rate_ceiling))
        ProcessCollector(registry=self.registry)
        self._client = client
        self._started: dict[tuple[str, int], float] = {}  # _attempt -> monotonic start
        self._server: WSGIServer | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerMetrics:
        client = settings.redis.client(
            socket_timeout=SCRAPE_TIMEOUT,
            socket_connect_timeout=SCRAPE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # a scrape answers now, not after retries
        )
        return cls(client, settings.queue, settings.dispatch_rate)

    def connect(self) -> Self:
        """Count from Celery's task signals from now on."""
        task_prerun.connect(self.on_prerun, weak=False)
        task_postrun.connect(self.on_postrun, weak=False)
        task_retry.connect(self.on_retry, weak=False)
        return self

    def on_prerun(self, task_id: str = "", task: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) == TASK_DISPATCH:
            self._started[_attempt(task_id, task)] = time.monotonic()

    def on_postrun(
        self,
        task_id: str = "",
        task: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        started = self._started.pop(_attempt(task_id, task), None)
        if started is None:
            return  # not a dispatch task
        self.task_seconds.labels(state=(state or "unknown").lower()).observe(
            time.monotonic() - started
        )
        if state == "SUCCESS" and isinstance(retval, dict) and "exit_code" in retval:
            self._count_outcome(retval)  # (a refused message has none: it made no outcome)
        elif state == "FAILURE":
            # An exception no outcome was made for: waiters see Celery's failure, exit 1.
            kind = type(retval).__name__ if isinstance(retval, BaseException) else "unknown"
            self.outcomes.labels(exit_code="1", status="task_failed", error_kind=kind).inc()

    def _count_outcome(self, outcome: dict[str, Any]) -> None:
        """`outcome` is the task's return value, `Outcome.to_stored()` (or, for a request
        handed to the tracker, no outcome yet: only its dispatch latency counts here)."""
        if outcome.get("status") != "handed_off":
            self.outcomes.labels(
                exit_code=str(outcome.get("exit_code", "")),
                status=str(outcome.get("status", "")),
                error_kind=str(outcome.get("error_kind") or ""),
            ).inc()
        timings = outcome.get("timings")  # [started_at, dispatch_seconds, monitor_seconds]
        if isinstance(timings, list) and len(timings) > 1:
            dispatch_seconds = timings[1]
            if isinstance(dispatch_seconds, int | float):
                self.dispatch_latency.observe(dispatch_seconds)

    def on_retry(self, sender: Any = None, reason: Any = None, **_: Any) -> None:
        """`reason` is Celery's Retry exception; the error retried is its `exc`."""
        if getattr(sender, "name", None) != TASK_DISPATCH:
            return
        error = getattr(reason, "exc", None) or reason
        kind = getattr(error, "kind", None) or type(error).__name__
        self.retries.labels(kind=str(kind)).inc()

    def serve(self, addr: str, port: int, pool: Any = None) -> Self:
        """Serve /metrics on addr:port from a background thread (a greenlet under gevent).

        A port that cannot be bound is logged, not raised: a worker without its metrics
        still dispatches."""
        if type(pool).__module__ == "celery.concurrency.prefork":
            log.warning(
                "metrics.prefork",
                problem="task metrics are counted in the pool's child processes and not "
                "served; use --pool gevent, threads or solo to export them",
            )
        try:
            self._server, _thread = start_http_server(port, addr, registry=self.registry)
        except OSError as err:
            log.error("metrics.unavailable", addr=addr, port=port, error=str(err))
        else:
            log.info("metrics.serving", addr=addr, port=port)
        return self

    def stop(self) -> None:
        """Stop serving (worker shutdown)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._client.close()
