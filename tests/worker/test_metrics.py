"""Worker metrics: counted from Celery's task signals, served over HTTP, read by Prometheus.

The unit tests call the signal handlers directly; the integration test runs a real worker
with `DISPATCHQ_METRICS_PORT` and task events on (as docker-compose.yml runs it), scrapes
/metrics over HTTP and listens to the events Flower shows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import requests
from celery.exceptions import Retry
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from dispatchq.broker.app import TASK_DISPATCH, make_app
from dispatchq.config.settings import Settings
from dispatchq.devstack.ports import free_port
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.errors import NomadError
from dispatchq.producer.enqueue import Enqueuer, NewRequest
from dispatchq.store import keys
from dispatchq.worker.metrics import WorkerMetrics
from tests.support.nomad_jobs import add_fault
from tests.support.stack import QUEUE, Stack

WAIT = 60


def dispatch_task(retries: int = 0) -> SimpleNamespace:
    """The dispatch task as the signals see it during a run: `request` is that run's."""
    return SimpleNamespace(name=TASK_DISPATCH, request=SimpleNamespace(retries=retries))


DISPATCH = dispatch_task()
METRICS = (
    "dispatchq_dispatch_latency_seconds",
    "dispatchq_task_seconds",
    "dispatchq_outcomes",
    "dispatchq_retries",
    "dispatchq_in_flight",
    "dispatchq_queue_depth",
    "dispatchq_dead_letters",
    "dispatchq_dispatch_rate",
    "dispatchq_lane_depth",
    "dispatchq_tenant_depth",
)


def stored_outcome(exit_code: int, status: str, dispatch_seconds: float | None) -> dict[str, Any]:
    """The shape of the task's return value, `Outcome.to_stored()`."""
    return {
        "v": 2,
        "status": status,
        "exit_code": exit_code,
        "job_id": "encode",
        "timings": [1_700_000_000.0, dispatch_seconds, 0.2],
        "events": [],
    }


UNIT_QUEUE = "metrics-unit"
"""Not the queue of the stack's workers, which would take what the unit tests push."""


@pytest.fixture
def metrics(redis_client: redis.Redis) -> Iterator[WorkerMetrics]:
    yield WorkerMetrics(redis_client, UNIT_QUEUE, rate_ceiling=500.0)
    redis_client.delete(UNIT_QUEUE, keys.DLQ)


def value(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_an_outcome_is_counted_with_its_latencies(metrics: WorkerMetrics) -> None:
    metrics.on_prerun(task_id="r1", task=DISPATCH)
    assert value(metrics, "dispatchq_in_flight") == 1
    outcome = stored_outcome(2, "placement_failed", 0.03)
    metrics.on_postrun(task_id="r1", task=DISPATCH, retval=outcome, state="SUCCESS")

    assert value(metrics, "dispatchq_in_flight") == 0
    labels = {"exit_code": "2", "status": "placement_failed", "error_kind": ""}
    assert value(metrics, "dispatchq_outcomes_total", **labels) == 1
    assert value(metrics, "dispatchq_dispatch_latency_seconds_count") == 1
    assert value(metrics, "dispatchq_dispatch_latency_seconds_sum") == pytest.approx(0.03)
    assert value(metrics, "dispatchq_dispatch_latency_seconds_bucket", le="0.05") == 1
    assert value(metrics, "dispatchq_dispatch_latency_seconds_bucket", le="0.025") == 0
    assert value(metrics, "dispatchq_task_seconds_count", state="success") == 1


def test_an_outcome_without_a_dispatch_has_no_dispatch_latency(metrics: WorkerMetrics) -> None:
    outcome = stored_outcome(1, "error", None) | {"error_kind": "payload"}
    metrics.on_prerun(task_id="r1", task=DISPATCH)
    metrics.on_postrun(task_id="r1", task=DISPATCH, retval=outcome, state="SUCCESS")
    labels = {"exit_code": "1", "status": "error", "error_kind": "payload"}
    assert value(metrics, "dispatchq_outcomes_total", **labels) == 1
    assert value(metrics, "dispatchq_dispatch_latency_seconds_count") == 0


def test_retries_and_failures(metrics: WorkerMetrics) -> None:
    metrics.on_prerun(task_id="r1", task=DISPATCH)
    leader = NomadError("No cluster leader", status=500)
    metrics.on_retry(sender=DISPATCH, reason=Retry(exc=leader))
    metrics.on_postrun(task_id="r1", task=DISPATCH, retval=None, state="RETRY")
    metrics.on_prerun(task_id="r1", task=dispatch_task(1))
    metrics.on_retry(sender=DISPATCH, reason=Retry(exc=redis.ConnectionError("gone")))
    metrics.on_postrun(task_id="r1", task=dispatch_task(1), retval=None, state="RETRY")
    metrics.on_prerun(task_id="r1", task=dispatch_task(2))
    error = RuntimeError("bug")
    metrics.on_postrun(task_id="r1", task=dispatch_task(2), retval=error, state="FAILURE")

    assert value(metrics, "dispatchq_retries_total", kind="nomad") == 1
    assert value(metrics, "dispatchq_retries_total", kind="ConnectionError") == 1
    assert value(metrics, "dispatchq_task_seconds_count", state="retry") == 2
    assert value(metrics, "dispatchq_task_seconds_count", state="failure") == 1
    labels = {"exit_code": "1", "status": "task_failed", "error_kind": "RuntimeError"}
    assert value(metrics, "dispatchq_outcomes_total", **labels) == 1
    assert value(metrics, "dispatchq_in_flight") == 0


def test_a_retry_that_starts_before_its_predecessor_ends(metrics: WorkerMetrics) -> None:
    """The retry's message is published before the retried run's RETRY state is stored,
    and under gevent the retry can start in between (the worker saw it happen)."""
    metrics.on_prerun(task_id="r1", task=DISPATCH)
    metrics.on_prerun(task_id="r1", task=dispatch_task(1))
    assert value(metrics, "dispatchq_in_flight") == 2
    metrics.on_postrun(task_id="r1", task=DISPATCH, retval=None, state="RETRY")
    outcome = stored_outcome(0, "complete", 0.01)
    metrics.on_postrun(task_id="r1", task=dispatch_task(1), retval=outcome, state="SUCCESS")
    labels = {"exit_code": "0", "status": "complete", "error_kind": ""}
    assert value(metrics, "dispatchq_outcomes_total", **labels) == 1
    assert value(metrics, "dispatchq_in_flight") == 0


def test_other_tasks_are_not_counted(metrics: WorkerMetrics) -> None:
    other = SimpleNamespace(name="celery.ping")
    metrics.on_prerun(task_id="p1", task=other)
    assert value(metrics, "dispatchq_in_flight") == 0
    metrics.on_postrun(task_id="p1", task=other, retval={"exit_code": 0}, state="SUCCESS")
    metrics.on_retry(sender=other, reason=RuntimeError("x"))
    families = {f.name: f for f in metrics.registry.collect()}
    assert families["dispatchq_outcomes"].samples == []
    assert families["dispatchq_retries"].samples == []


def test_queue_gauges_are_read_at_scrape_time(
    metrics: WorkerMetrics, redis_client: redis.Redis
) -> None:
    assert value(metrics, "dispatchq_queue_depth", queue=UNIT_QUEUE) == 0
    redis_client.lpush(UNIT_QUEUE, "a", "b", "c")
    redis_client.lpush(keys.DLQ, "x", "y")
    assert value(metrics, "dispatchq_queue_depth", queue=UNIT_QUEUE) == 3
    assert value(metrics, "dispatchq_dead_letters") == 2


def test_lane_gauges_show_the_backlog_per_lane_tenant_and_batch(
    metrics: WorkerMetrics, redis_client: redis.Redis
) -> None:
    enqueuer = Enqueuer(redis_client, queue=UNIT_QUEUE, result_ttl=60, blob_ttl=60)
    enqueuer.enqueue(
        [NewRequest("encode", request_id=f"lm-{n}", batch_id="m1", tenant="t") for n in range(3)]
        + [NewRequest("encode", request_id="lane-m-x", batch_id="m2")]
        + [NewRequest("encode", request_id="lane-i")]
    )
    try:
        assert value(metrics, "dispatchq_queue_depth", queue=UNIT_QUEUE) == 5
        lane = "dispatchq_lane_depth"
        assert value(metrics, lane, queue=UNIT_QUEUE, lane="interactive", tenant="", batch="") == 1
        assert value(metrics, lane, queue=UNIT_QUEUE, lane="batch", tenant="t", batch="m1") == 3
        assert value(metrics, lane, queue=UNIT_QUEUE, lane="batch", tenant="-", batch="m2") == 1
        assert value(metrics, "dispatchq_tenant_depth", queue=UNIT_QUEUE, tenant="t") == 3
    finally:
        redis_client.delete(keys.lane("m1"), keys.lane("m2"), keys.lanes(UNIT_QUEUE))


def test_the_dispatch_rate_gauge_shows_a_slowdown(
    metrics: WorkerMetrics, redis_client: redis.Redis
) -> None:
    assert value(metrics, "dispatchq_dispatch_rate") == 500
    redis_client.hset(keys.RATE, mapping={"rate": 100.0, "cut_at": time.time()})
    slowed = value(metrics, "dispatchq_dispatch_rate")
    assert slowed is not None
    assert 100 <= slowed < 150  # climbing back


def test_queue_gauges_are_absent_while_redis_cannot_be_read() -> None:
    unreachable = redis.Redis(port=free_port(), retry=RedisRetry(NoBackoff(), 0))
    metrics = WorkerMetrics(unreachable, UNIT_QUEUE, rate_ceiling=500.0)
    names = {f.name for f in metrics.registry.collect()}
    assert "dispatchq_queue_depth" not in names
    assert "dispatchq_outcomes" in names  # the rest is still served


# --- a real worker --------------------------------------------------------------------


def scrape(port: int) -> dict[str, Any]:
    """Every family on the worker's /metrics, by name."""
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of one sample; 0 when the labelled series does not exist yet."""
    family = name.removesuffix("_total").removesuffix("_count")
    for s in families[family].samples:
        if s.name == name and s.labels == labels:
            return float(s.value)
    return 0.0


class Events:
    """What Flower sees: task events from the workers, captured by Celery's own receiver."""

    def __init__(self, redis_url: str) -> None:
        self.app = make_app(Settings(redis_url=redis_url, queue=QUEUE))
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers={"*": self.seen.append})
            for _ in receiver.consume(limit=None, timeout=None, wakeup=False):
                if self._stop.is_set():
                    return

    def start(self) -> None:
        """Capture, and return once a probe event went round: the subscription is live."""
        self._thread.start()
        with self.app.events.default_dispatcher() as dispatcher:
            deadline = time.monotonic() + 15
            while not any(e["type"] == "dispatchq-probe" for e in self.seen):
                assert time.monotonic() < deadline, "no event received"
                dispatcher.send("dispatchq-probe")
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        with self.app.events.default_dispatcher() as dispatcher:
            dispatcher.send("dispatchq-probe")  # wakes the receiver up to see the stop
        self._thread.join(10)


@pytest.fixture(scope="module")
def metrics_worker(stack: Stack) -> Iterator[int]:
    """A worker with metrics on a free port and task events on, as in docker-compose.yml;
    its port. The tests look at what their requests add to its counters."""
    port = free_port()
    env = {**stack.env, "DISPATCHQ_METRICS_PORT": str(port), "DISPATCHQ_METRICS_ADDR": "127.0.0.1"}
    worker = WorkerProcess(
        env=env, name="metrics", log_path=stack.log_dir / "metrics.log", extra_args=["-E"]
    )
    with worker:
        yield port


def test_a_worker_serves_its_metrics(clean: Stack, metrics_worker: int) -> None:
    before = scrape(metrics_worker)
    for name in METRICS:
        assert before[name].documentation, f"{name} has no help text"
    # Four 500s: more than the client's three attempts in place, so the task retries once.
    add_fault(clean.sim.address, {"kind": "error", "route": "dispatch", "count": 4})
    with clean.producer() as producer:
        first = producer.enqueue("encode", meta={"profile": "hd"})
        assert producer.wait([first], timeout=WAIT)[first].done
        ids = [producer.enqueue("huge"), producer.enqueue("encode", meta={"wrong": "x"})]
        statuses = producer.wait(ids, timeout=WAIT)
    assert all(s.done for s in statuses.values())

    # The outcome is stored before the task's postrun signal counts it: wait for the count.
    outcome_labels = [
        {"exit_code": "0", "status": "complete", "error_kind": ""},
        {"exit_code": "2", "status": "placement_failed", "error_kind": ""},
        {"exit_code": "1", "status": "error", "error_kind": "validation"},
    ]
    deadline = time.monotonic() + 10
    while True:
        after = scrape(metrics_worker)
        gained = [
            sample(after, "dispatchq_outcomes_total", **labels)
            - sample(before, "dispatchq_outcomes_total", **labels)
            for labels in outcome_labels
        ]
        if gained == [1, 1, 1] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert gained == [1, 1, 1]

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("dispatchq_retries_total", kind="server") >= 1  # the 500s
    assert delta("dispatchq_dispatch_latency_seconds_count") == 3
    assert delta("dispatchq_task_seconds_count", state="success") == 3
    assert delta("dispatchq_task_seconds_count", state="retry") >= 1
    assert sample(after, "dispatchq_in_flight") == 0
    assert sample(after, "dispatchq_queue_depth", queue=QUEUE) == 0
    assert sample(after, "dispatchq_dead_letters") == 0
    assert sample(after, "process_resident_memory_bytes") > 0


def test_flower_sees_named_tasks_with_readable_arguments(clean: Stack, metrics_worker: int) -> None:
    events = Events(clean.redis.url)
    events.start()
    try:
        with clean.producer() as producer:
            rid = producer.enqueue("encode", meta={"profile": "hd"})
            assert producer.wait([rid], timeout=WAIT)[rid].done
            deadline = time.monotonic() + 10
            while not any(e["type"] == "task-succeeded" for e in events.seen):
                assert time.monotonic() < deadline, "no task-succeeded event"
                time.sleep(0.05)
    finally:
        events.stop()
    received = [e for e in events.seen if e["type"] == "task-received" and e["uuid"] == rid]
    assert len(received) == 1
    assert received[0]["name"] == TASK_DISPATCH
    assert "encode" in received[0]["kwargs"]  # the job, readable in Flower's task list
    succeeded = [e for e in events.seen if e["type"] == "task-succeeded" and e["uuid"] == rid]
    assert "'exit_code': 0" in succeeded[0]["result"]
