"""Contracts with Celery's and kombu's internals that dispatchq's overrides rely on.

`dispatchq.broker.fetch` replaces kombu's private fetch (`_brpop_start`/`_brpop_read`) and QoS
bookkeeping, `dispatchq.broker.poison` hooks Celery's consumer, `dispatchq.broker.app` builds
Celery's result
meta by hand and the dispatch task turns Celery's own store off per request. None of that is
public API: a new kombu or Celery in the lock (`scripts/lock --upgrade`) may change it
without notice. Each test here fails with a message naming the override to review, so an
upgrade of the lock is safe to try: run the suite, and read what these say first.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Callable
from typing import Any
from unittest.mock import ANY

import pytest
from celery import Celery, states
from celery.app.trace import build_tracer
from celery.backends.redis import RedisBackend
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from dispatchq.broker.app import GuardedRedisBackend
from dispatchq.broker.fetch import InflightQoS, ReliableChannel, ReliableTransport
from dispatchq.broker.poison import (
    PoisonAwareConsumer,
    PoisonSentinelChannel,
    PoisonTransport,
)
from dispatchq.store import keys

OVERRIDES: list[tuple[type, type]] = [
    (ReliableChannel, kombu_redis.Channel),
    (InflightQoS, virtual.QoS),
    (ReliableTransport, kombu_redis.Transport),
    (PoisonTransport, kombu_redis.Transport),
    (PoisonSentinelChannel, kombu_redis.SentinelChannel),
    (PoisonAwareConsumer, Consumer),
    (GuardedRedisBackend, RedisBackend),
]


def _overridden(ours: type, upstream: type) -> list[tuple[str, Callable[..., Any]]]:
    """The methods `ours` defines itself that `upstream` (or a base of it) also has."""
    found: list[tuple[str, Callable[..., Any]]] = []
    for name, value in vars(ours).items():
        if not inspect.isfunction(value) or name.startswith("__"):
            continue
        theirs = getattr(upstream, name, None)
        if inspect.isfunction(theirs):
            found.append((name, theirs))
    return found


def _accepts(ours: inspect.Signature, theirs: inspect.Signature) -> str | None:
    """Why a call made to `theirs` would not fit `ours` (None: it fits)."""
    params = ours.parameters
    catch_all = {p.kind for p in params.values()} & {
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    }
    for name, param in theirs.parameters.items():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if name not in params and not catch_all:
            return f"upstream now passes {name!r}"
    for name, param in params.items():
        required = param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and name not in theirs.parameters:
            return f"ours requires {name!r}, which upstream no longer passes"
    return None


@pytest.mark.parametrize(
    ("ours", "upstream"), OVERRIDES, ids=[o.__qualname__ for o, _ in OVERRIDES]
)
def test_every_override_still_fits_the_upstream_signature(ours: type, upstream: type) -> None:
    overridden = _overridden(ours, upstream)
    assert overridden, f"{ours.__qualname__} overrides nothing of {upstream.__qualname__} any more"
    for name, theirs in overridden:
        mismatch = _accepts(inspect.signature(getattr(ours, name)), inspect.signature(theirs))
        assert mismatch is None, (
            f"review the override {ours.__module__}.{ours.__qualname__}.{name}: "
            f"{upstream.__module__}.{upstream.__qualname__}.{name} changed its signature "
            f"({mismatch}; now {inspect.signature(theirs)})"
        )


def _touched(function: Callable[..., Any]) -> set[str]:
    """The attributes of `self` a method reads, writes or calls."""
    return set(re.findall(r"self\.([A-Za-z_]\w*)", inspect.getsource(function)))


# What kombu 5.x's own methods touch, as reviewed against dispatchq.broker.fetch: ours does the same
# work by other means (BLMOVE into an in-flight list; no priority steps, no key prefix).
# A new attribute here means kombu's fetch does something ours does not.
KOMBU_TOUCHES = {
    "_brpop_start": {
        "_brpop_sent_at", "_in_poll", "_q_for_pri", "_queue_cycle", "active_queues",
        "brpop_timeout", "client", "global_keyprefix", "priority_steps",
    },
    "_brpop_read": {
        "_flush_brpop_reauth", "_in_poll", "_queue_cycle", "client", "connection",
        "connection_errors", "sep",
    },
    "conn_or_acquire": {"_create_client"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(KOMBU_TOUCHES))
def test_kombu_fetch_does_nothing_the_override_does_not(name: str) -> None:
    now = _touched(getattr(kombu_redis.Channel, name))
    assert now == KOMBU_TOUCHES[name], (
        f"review the override dispatchq.broker.fetch.ReliableChannel.{name}: kombu's "
        f"Channel.{name} now touches {sorted(now - KOMBU_TOUCHES[name])} and no longer "
        f"{sorted(KOMBU_TOUCHES[name] - now)}"
    )


def test_kombu_state_the_override_keeps_still_exists() -> None:
    """The poller's health check and re-auth read `_in_poll` and `_brpop_sent_at`, which
    `ReliableChannel._brpop_start` sets as kombu's does."""
    for name in ("_in_poll", "_brpop_sent_at", "_flush_brpop_reauth", "_queue_cycle"):
        source = inspect.getsource(kombu_redis)
        assert f"self.{name}" in source or f"channel.{name}" in source, (
            "review dispatchq.broker.fetch.ReliableChannel: kombu's redis transport no longer "
            f"uses {name}"
        )


def test_kombu_poller_fetches_through_the_overridden_methods() -> None:
    register = inspect.getsource(kombu_redis.MultiChannelPoller._register_BRPOP)  # type: ignore[attr-defined]
    assert "channel._brpop_start()" in register, (
        "review dispatchq.broker.fetch.ReliableChannel._brpop_start: kombu's poller no longer "
        "starts a "
        "fetch with channel._brpop_start()"
    )
    init = inspect.getsource(kombu_redis.Channel.__init__)
    assert "'BRPOP': self._brpop_read" in init, (
        "review dispatchq.broker.fetch.ReliableChannel._brpop_read: kombu's channel no longer "
        "reads a "
        "fetch's reply with its 'BRPOP' handler _brpop_read"
    )


def test_kombu_rejects_an_unwanted_message_through_the_transport() -> None:
    deliver = inspect.getsource(virtual.Transport._deliver)
    assert "self._reject_inbound_message(" in deliver, (
        "review dispatchq.broker.fetch.ReliableTransport._reject_inbound_message: kombu's "
        "Transport._deliver no longer calls it for a message no consumer wants"
    )


def _memory_app() -> Celery:
    app = Celery("contract", set_as_current=False)
    app.conf.update(result_backend="cache+memory://", task_ignore_result=False)
    return app


def test_celery_skips_its_store_when_the_task_sets_ignore_result() -> None:
    """The dispatch task stores its outcome itself and sets `request.ignore_result` before
    returning (dispatchq.worker.tasks.dispatch); Celery must then not store the return value."""
    app = _memory_app()

    @app.task(bind=True, name="contract.self_stored")
    def self_stored(self: Any) -> int:
        self.request.ignore_result = True
        return 1

    @app.task(name="contract.plain")
    def plain() -> int:
        return 1

    for task, expected in ((self_stored, states.PENDING), (plain, states.SUCCESS)):
        task_id = str(uuid.uuid4())
        tracer = build_tracer(task.name, task, app=app, eager=False)
        tracer(task_id, [], {}, {"id": task_id, "delivery_info": {}})
        state = app.AsyncResult(task_id).state
        assert state == expected, (
            "review dispatchq.worker.tasks.dispatch (request.ignore_result): a task that set it "
            "was "
            f"stored as {state}"
            if task is self_stored
            else f"Celery did not store: {state}"
        )


def test_celery_result_meta_is_what_the_backend_builds_by_hand() -> None:
    """`GuardedRedisBackend.success_result` writes the meta Celery's `_get_result_meta`
    would, for a task with no children, under result_extended=False."""
    app = Celery("contract", set_as_current=False)
    app.conf.update(result_backend="redis://127.0.0.1:1/0", result_extended=False)
    backend = GuardedRedisBackend(app=app, url="redis://127.0.0.1:1/0")
    celerys = backend._get_result_meta(
        result={"exit_code": 0}, state=states.SUCCESS, traceback=None, request=None
    )
    stored = backend.success_result("r-1", {"exit_code": 0})
    ours = json.loads(stored.value)
    assert ours == {**celerys, "children": [], "date_done": ANY, "task_id": "r-1"}, (
        "review dispatchq.broker.app.GuardedRedisBackend.success_result: Celery's result meta is "
        f"now {sorted(celerys)}"
    )
    assert stored.key == keys.celery_result("r-1"), (
        "review dispatchq.store.keys.celery_result: Celery's result key changed to "
        f"{backend.get_key_for_task('r-1')!r}"
    )


def test_kombu_publishes_through_put() -> None:
    """`ReliableChannel._put` sends a retry of a batch's request to its lane: kombu's
    publish must still end in the channel's `_put(queue, message, ...)`."""
    publish = inspect.getsource(virtual.Channel.basic_publish)
    assert "self._put(" in publish, (
        "review dispatchq.broker.fetch.ReliableChannel._put: kombu no longer publishes through _put"
    )
