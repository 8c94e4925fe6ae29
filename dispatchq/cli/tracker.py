"""`dispatchq tracker`: follow every child of an `until` finished request to its end.

The runner of `dispatchq.tracker.follower` (the logic): settings, clients, the Celery result
encoding of outcomes (the same as a worker's), Prometheus metrics on
DISPATCHQ_METRICS_PORT, SIGTERM. Run one or more: one leads, the others stand by.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Iterator
from typing import Any, cast

import redis
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

from dispatchq.broker.app import GuardedRedisBackend, make_app
from dispatchq.config.logging import configure_logging, register_secrets, url_secrets
from dispatchq.config.settings import Settings, load_settings, worker_redis
from dispatchq.core.outcome import Outcome
from dispatchq.core.retry import RetryPolicy
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.store import keys
from dispatchq.store.completion import open_stream
from dispatchq.store.records import RecordStore
from dispatchq.store.retries import BatchRetrier
from dispatchq.tracker.follower import TOPICS, Checked, Follower, FollowPolicy, Tracker
from dispatchq.tracker.leader import Lease

log = structlog.get_logger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "tracker",
        help="follow dispatched children to their end (requests with until=finished)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sweep", type=float, default=FollowPolicy.sweep,
        help="seconds between forced checks of a child no event woke (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--unreachable-after", type=float, default=FollowPolicy.unreachable_after,
        help="seconds of Nomad failing a child's reads before it ends as unreachable "
        "(default %(default)s)",
    )  # fmt: skip
    parser.set_defaults(handler=run)


class TrackerMetrics:
    """Children followed (ZCARD when scraped), running (as last checked) and finished, the
    lease, and the process's CPU and memory (README, Metrics)."""

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


def build(settings: Settings, policy: FollowPolicy, nomad: NomadConfig | None = None) -> Tracker:
    nomad = nomad or NomadConfig.from_env()
    register_secrets([nomad.token, nomad.http_auth, *settings.secrets, *url_secrets(nomad.address)])
    client = worker_redis(settings)
    nomad_client = NomadClient(
        nomad, retry=RetryPolicy(attempts=3, floor=0.1, cap=1.0), pool_size=policy.threads + 2
    )
    backend = cast(GuardedRedisBackend, make_app(settings).backend)
    store = RecordStore(client, settings.result_ttl, settings.event_stream)
    open_stream(client, settings.event_stream)  # before the first event is appended
    follower = Follower(nomad_client, store, backend.success_result, policy=policy)
    retrier = BatchRetrier(client, queue=settings.queue, ttl=settings.result_ttl)

    def events(connected: Any) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        start = nomad_client.current_index()
        return nomad_client.event_stream(
            topics=TOPICS, index=start + 1, namespace="*", on_open=lambda _r: connected()
        )

    return Tracker(client, follower, Lease(client), events, policy, chores=retrier.drain_due)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    policy = FollowPolicy(sweep=args.sweep, unreachable_after=args.unreachable_after)
    tracker = build(settings, policy)
    metrics = TrackerMetrics(tracker.client, tracker)
    check = tracker.follower.check

    def counted(request_id: str) -> Checked:
        checked = check(request_id)
        metrics.checked(checked)
        return checked

    tracker.follower.check = counted  # type: ignore[method-assign]
    tracker.follower.on_finished = metrics.on_finished
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.metrics_addr, registry=metrics.registry)
        log.info("metrics.serving", addr=settings.metrics_addr, port=settings.metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: tracker.stop())
    signal.signal(signal.SIGINT, lambda *_: tracker.stop())
    log.info("tracker.started", holder=tracker.lease.holder, started=time.time())
    tracker.run()
    log.info("tracker.stopped", holder=tracker.lease.holder)
    return 0
