"""Keep the leases of this process's consumers, and give back the messages of consumers
that are gone, whatever the pool.

A consumer renews its lease and sweeps for dead consumers' in-flight messages when it
fetches (`dispatchq.broker.fetch`). One with every slot busy does not fetch, yet its lease must not
lapse while it holds messages (they would be redelivered while they run), and the sweep
must not wait for a fetch either. This thread runs `look_after` for every open channel on
a short period, in every worker; it costs nothing until a renewal is due (every
RENEW_EVERY seconds), and a failure (Redis restarting) is only logged.
"""

from __future__ import annotations

import threading

import structlog

from dispatchq.broker.fetch import look_after_open_channels

log = structlog.get_logger(__name__)

TICK = 1.0
"""Seconds between checks: a renewal is never more than this late."""


class RedeliverySweeper:
    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatchq-redelivery", daemon=True)

    def start(self) -> RedeliverySweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                look_after_open_channels()
            except Exception as err:  # noqa: BLE001  (a Redis restart must not end the loop)
                log.warning("redelivery.sweep_failed", error=str(err))
