"""Give abandoned messages back to the queue, whatever the pool.

kombu's Redis transport redelivers a message whose worker died (unacknowledged past the
visibility timeout) from a timer of the worker's event loop. Workers on a green pool
(gevent) run Celery's blocking loop instead, where that sweep is never reached
(celery/kombu#1025), so their crashed requests would wait for a worker with an event loop.
This thread runs the same sweep, kombu's own `restore_visible`, on a fixed period, in every
worker: it is cheap (one sorted-set range under kombu's mutex) and idempotent.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from celery import Celery

log = structlog.get_logger(__name__)

BATCH = 100
"""Messages restored per sweep at most (kombu's `num`)."""


class RedeliverySweeper:
    def __init__(self, app: Celery, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatchq-redelivery", daemon=True)

    def start(self) -> RedeliverySweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def sweep(self) -> None:
        with self.app.connection_for_write() as connection:
            channel: Any = connection.default_channel
            channel.qos.restore_visible(num=BATCH, interval=1)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.sweep()
            except Exception as err:  # noqa: BLE001  (a Redis restart must not end the loop)
                log.warning("redelivery.sweep_failed", error=str(err))
