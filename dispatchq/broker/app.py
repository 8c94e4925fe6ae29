"""The Celery configuration object, derived from `Settings`.

Chosen for "nothing lost, nothing doubled": JSON only (pickle refused), acks late with
reject-on-worker-lost, prefetch 1. A message is redelivered only when its worker is gone:
the worker's transport (`dispatchq.broker.fetch`) keeps it in its consumer's in-flight list until
acknowledged, under a lease, rather than in kombu's `unacked` hash with a visibility
timeout. Results go through `GuardedRedisBackend`: Celery's Redis backend, one round trip
per stored outcome.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import orjson
from celery import Celery, states
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.serialization import register
from kombu.utils.encoding import bytes_to_str

from dispatchq.config.settings import Settings
from dispatchq.store.messages import TASK_DISPATCH as TASK_DISPATCH
from dispatchq.store.records import StoredResult
from dispatchq.store.scripts import SCRIPTS

RESULT_SERIALIZER = "dispatchq-json"

REDIS_CONNECTIONS = 4096
"""Upper bound of each Redis pool of a worker process (broker, result backend): above the
greenlets a worker runs at once, so a burst of acknowledgements or stored results never
meets redis-py's or kombu's much lower defaults. Actual use follows the concurrency."""


def _compact_dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson refuses (non-string keys, say) the json module encodes
        return json.dumps(value, separators=(",", ":"))


# Results are JSON without the spaces of the stock serializer: a few percent of every
# stored outcome (see bench/redis_memory), still plain JSON for any reader; encoded by
# orjson, several times faster than the json module at this.
register(
    RESULT_SERIALIZER,
    _compact_dumps,
    json.loads,
    content_type="application/x-dispatchq-json",
    content_encoding="utf-8",
)


class GuardedRedisBackend(RedisBackend):
    """Celery's Redis result backend, storing a result in one round trip instead of two.

    Celery reads the stored result before every write and skips the write if it says
    SUCCESS, so that a late duplicate of a finished task (a redelivery after a crash
    between storing and acknowledging) cannot replace its result: a GET and a decode per
    outcome, then a MULTI/SETEX/PUBLISH/EXEC. Outcomes are not quite idempotent per
    request ID (a resumed duplicate that runs out of retries would store exit code 1 over
    a 0), so the guard stays, atomic besides, in `dispatchq/store/lua/store_result.lua`, which
    stores and publishes with the same `store_result` as the request's done script."""

    # Celery attributes its type stubs do not declare:
    _get_result_meta: Any
    expires: int | None
    failure_expires: int | None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        args = (self.get_key_for_task(task_id), self.encode(meta), expires or 0)
        self.ensure(self._store_unless_succeeded, args)
        return result

    def success_result(self, task_id: str, result: Any) -> StoredResult:
        """What `store_result` would write for a task that succeeded with `result`, for a
        caller that stores it itself, together with other state (the dispatch task: its
        outcome is stored as the request is marked done, `dispatchq.store.records`)."""
        # `_get_result_meta`'s dict for a task with no children, groups or parent, under
        # `result_extended=False` (set above): built here, it costs a tenth of Celery's
        # generic path (config lookups, the current task's stack, dateutil's timezone).
        meta = {
            "status": states.SUCCESS,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": task_id,
        }
        key = bytes_to_str(self.get_key_for_task(task_id))
        return StoredResult(key, self.encode(meta), self.expires or 0)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Nothing. Where joining a result does not block (the gevent pool), Celery would
        subscribe to the result channel of every message it publishes, a retry included,
        and nobody reads that subscription: whoever waits subscribes as it starts waiting
        (`AsyncResult.get`, `dispatchq.producer.api`)."""

    def _store_unless_succeeded(self, key: bytes, value: str, expires: int) -> None:
        self._store_script(keys=[key], args=[value, expires])

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(SCRIPTS["store_result"])


class GuardedSentinelBackend(GuardedRedisBackend, SentinelBackend):
    """The same, for a primary behind Redis Sentinel (a `sentinel://` URL)."""


def celery_config(settings: Settings) -> dict[str, Any]:
    # kombu's Redis pool allows 10 connections by default; a gevent worker acknowledges
    # hundreds of messages at once, so it would fail with "Too many connections".
    target = settings.redis
    options = target.celery_options(max_connections=REDIS_CONNECTIONS)
    backend = GuardedSentinelBackend if target.is_sentinel else GuardedRedisBackend
    backend_url = options.pop("backend_url")
    return {
        **options,
        "result_backend": f"{__name__}:{backend.__name__}+{backend_url}",
        "redis_max_connections": REDIS_CONNECTIONS,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": RESULT_SERIALIZER,
        "accept_content": ["json"],
        "result_accept_content": ["json", RESULT_SERIALIZER],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "task_routes": {TASK_DISPATCH: {"queue": settings.queue}},
        "task_time_limit": settings.task_time_limit,
        "result_expires": settings.result_ttl,
        # A dropped or restarting Redis must not turn a finished request into a failure:
        # the outcome write is retried (bounded: about a minute at most).
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_thread_safe": True,
        "result_extended": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_send_sent_event": False,
    }


def make_app(settings: Settings, name: str = "dispatchq") -> Celery:
    """A Celery app configured from the settings (tasks are registered by `worker`)."""
    app = Celery(name, set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app
