"""The Celery app: `celery -A dispatchq.worker worker` (or `dispatchq worker`) runs it.

The tasks module (`dispatchq.worker.tasks`) and with it the process runtime
(`dispatchq.worker.runtime`, which
closes itself at process shutdown) load from here by name only: this module imports
neither, so nothing it imports imports it back but them."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_ready, worker_shutdown

from dispatchq.broker.app import make_app
from dispatchq.broker.redelivery import RedeliverySweeper
from dispatchq.config.logging import configure_logging
from dispatchq.config.settings import load_settings
from dispatchq.store.liveness import Heartbeat
from dispatchq.worker.health import warn_about_redis
from dispatchq.worker.metrics import WorkerMetrics

settings = load_settings()
configure_logging(settings.log_format, settings.log_level)
# Celery logs every task's return value at INFO, built with saferepr whether or not the line
# is shown: 5-8 % of a worker's CPU at high rates. Our own `request.done` line says it.
logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
# Likewise its "Task ... received" line: `request.dispatched` names the request, with its
# job and evaluation IDs.
logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
app: Celery = make_app(settings)
app.conf.include = ["dispatchq.worker.tasks"]
# The default app of this process, not only its current one (thread-local): Flower started
# the Celery way (`celery -A dispatchq.worker flower`) reads results through
# `AsyncResult(task_id)` with no app named, from threads of its own.
app.set_default()


@celeryd_init.connect
def _reliable_fetch(conf: Any = None, **_: Any) -> None:
    """In a worker only (`celery worker` sends this first): the reliable fetch, with poison
    messages going to the dead-letter list instead of stopping or bypassing the worker.
    Other commands on this app (Flower) keep kombu's own Redis transport, whose broker URL
    they can read."""
    transport = "PoisonSentinelTransport" if settings.redis.is_sentinel else "PoisonTransport"
    conf.broker_transport = f"dispatchq.broker.poison:{transport}"
    conf.worker_consumer = "dispatchq.broker.poison:PoisonAwareConsumer"


_background: list[Heartbeat | RedeliverySweeper | WorkerMetrics] = []
# Prometheus metrics (DISPATCHQ_METRICS_PORT, 0 = off): counted from task signals from now
# on, served over HTTP once the worker is ready.
_metrics = WorkerMetrics.from_settings(settings).connect() if settings.metrics_port else None


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    warn_about_redis(settings)
    if _metrics is not None:  # serving before the first heartbeat: "seen alive" means scrapable
        pool = getattr(sender, "pool", None)
        _background.append(_metrics.serve(settings.metrics_addr, settings.metrics_port, pool))
    _background.append(RedeliverySweeper().start())
    client = settings.redis.client()
    beat = Heartbeat(client, settings.queue, getattr(sender, "hostname", "worker"))
    beat.start()
    _background.append(beat)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    while _background:
        _background.pop().stop()
