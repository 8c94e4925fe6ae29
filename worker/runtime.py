"""What one worker process holds: settings, the Nomad client, Redis, the payload resolver.

Built once per process on first use (after the fork, so prefork children never share a
socket), and shared by the threads or greenlets of that process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, cast

import redis
import structlog
from celery.signals import worker_process_shutdown

from dispatchq.broker.app import GuardedRedisBackend
from dispatchq.config.logging import register_secrets, url_secrets
from dispatchq.config.settings import Settings, load_settings, worker_redis
from dispatchq.core.backpressure import DispatchGate, GatePolicy, unfinished_children
from dispatchq.core.evalfeed import EvaluationFeed
from dispatchq.core.retry import RetryPolicy
from dispatchq.core.service import DispatchService
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.payload.resolve import PayloadPolicy, PayloadResolver
from dispatchq.store.completion import open_stream
from dispatchq.store.records import RecordStore
from dispatchq.worker.app import app

# Fast in-place retries for blips; longer outages go to the task's retry policy, which
# frees the worker slot while it waits.
CLIENT_RETRY = RetryPolicy(attempts=3, floor=0.1, cap=1.0)
NOMAD_CONNECTIONS = 15
"""Connections to Nomad per worker process, the event stream's included: the pool blocks,
so however many tasks run at once, a process never opens more."""


log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    service: DispatchService

    def close(self) -> None:
        if self.service.feed is not None:
            self.service.feed.stop()
        self.service.client.close()
        self.service.resolver.close()
        self.redis.close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def build_runtime(settings: Settings | None = None, nomad: NomadConfig | None = None) -> Runtime:
    settings = settings or load_settings()
    nomad = nomad or NomadConfig.from_env()
    register_secrets([nomad.token, nomad.http_auth, *settings.secrets, *url_secrets(nomad.address)])
    client = worker_redis(settings)
    try:
        open_stream(client, settings.event_stream)  # before the first event is appended
    except redis.ConnectionError as err:  # the notifier and the tracker create it too
        log.warning("events.group_not_created", error=str(err)[:200])
    resolver = PayloadResolver(
        PayloadPolicy.of(
            settings.payload_file_roots, settings.payload_http_hosts, settings.payload_http_timeout
        ),
        client,
    )
    nomad_client = NomadClient(nomad, retry=CLIENT_RETRY, pool_size=NOMAD_CONNECTIONS)
    feed = EvaluationFeed(nomad_client, nomad.namespace or None) if settings.event_feed else None
    gate = DispatchGate(
        client,
        GatePolicy(
            rate=settings.dispatch_rate,
            burst=settings.dispatch_burst,
            max_unfinished_children=settings.max_unfinished_children,
            max_wait=settings.dispatch_max_wait,
        ),
        lambda job_id, namespace: unfinished_children(
            nomad_client.job_summary(job_id, namespace=namespace)
        ),
    )
    nomad_client.on_rate_limited = lambda: gate.overloaded("429")
    service = DispatchService(
        client=nomad_client,
        feed=feed.start() if feed else None,
        resolver=resolver,
        records=RecordStore(client, settings.result_ttl, settings.event_stream),
        gate=gate,
        results=cast(GuardedRedisBackend, app.backend).success_result,
    )
    return Runtime(settings, client, service)


def runtime() -> Runtime:
    """The process's runtime, built on first use."""
    global _runtime  # noqa: PLW0603  (one per process, by design)
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build_runtime()
    return _runtime


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    reset_runtime()


def reset_runtime() -> None:
    """Close and forget the process's runtime (worker shutdown, tests)."""
    global _runtime  # noqa: PLW0603
    with _lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
