"""A tracker process: settings, clients, the Celery result encoding of outcomes (the same as
a worker's), metrics on DISPATCHQ_METRICS_PORT, SIGTERM. Run one or more: one leads, the
others stand by (`dispatchq tracker`)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any, cast

import structlog
from prometheus_client import start_http_server

from dispatchq.broker.app import GuardedRedisBackend, make_app
from dispatchq.config.logging import configure_logging, register_secrets, url_secrets
from dispatchq.config.settings import Settings, worker_redis
from dispatchq.core.retry import RetryPolicy
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.store.backlog import BacklogSampler
from dispatchq.store.completion import open_stream
from dispatchq.store.records import RecordStore
from dispatchq.store.retries import BatchRetrier
from dispatchq.tracker.follower import TOPICS, Follower, FollowPolicy, Tracker
from dispatchq.tracker.leader import Lease
from dispatchq.tracker.metrics import TrackerMetrics

log = structlog.get_logger(__name__)


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

    sampler = BacklogSampler(client, settings.queue)

    def chores() -> None:
        retrier.drain_due()
        sampler.due()

    return Tracker(client, follower, Lease(client), events, policy, chores=chores)


def serve(settings: Settings, policy: FollowPolicy) -> int:
    """Run a tracker until SIGTERM or SIGINT: `dispatchq tracker`."""
    configure_logging(settings.log_format, settings.log_level)
    tracker = build(settings, policy)
    metrics = TrackerMetrics(tracker.client, tracker)
    tracker.follower.on_checked = metrics.checked
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
