"""Poison messages: what the worker cannot run goes to the dead-letter list, and the worker
keeps consuming.

Out of the box a bad queue item either vanishes with a log line (Celery acks or rejects an
undecodable body, an unknown task) or stops the worker for good (kombu raises out of its
event loop on an item that is not JSON, and Celery's request parser on a JSON body that is
not `[args, kwargs, embed]`: "Unrecoverable error"). Here every such item is caught where
it surfaces, dead-lettered with the reason and, when it names one of our requests, given
an exit-1 outcome so that nobody waits for it forever:

- `PoisonTransport` (kombu level): items that are not JSON (JSON `null` included), or not
  a kombu envelope. Once dead-lettered they leave the in-flight list (`dispatchq.broker.fetch`);
  never delivered, they have nothing to acknowledge.
- `PoisonAwareConsumer` (Celery level): bodies that do not decode or are not protocol 2,
  content types other than JSON (pickle is refused), any task name but dispatchq's own
  (Celery's built-in `celery.chord_unlock` or `celery.backend_cleanup`, sent by anyone,
  would otherwise run, or retry forever), an `eta` (a countdown) further ahead than
  dispatchq's own retries go (`eta_problem`),
  messages Celery refuses, and requests past the delivery cap (`dispatchq.store.dlq`). These are
  acknowledged once dead-lettered: if the dead-letter write fails they stay
  unacknowledged and come back, so a bad message is never dropped unrecorded.

A request of ours gets its exit-1 outcome (`dispatchq.core.service.fail_message`): its record,
if there is one, says which job and batch it belongs to, and whether the refused message
is that request at all (its digest).

`dispatchq.worker.app` installs both (`broker_transport`, `worker_consumer`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
import redis.sentinel
import structlog
from celery.utils.saferepr import saferepr
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.transport import redis as kombu_redis
from vine import promise

from dispatchq.broker.app import TASK_DISPATCH, GuardedRedisBackend
from dispatchq.broker.deadletter import dead_letter
from dispatchq.broker.fetch import UNCOUNTABLE, Counted, ReliableChannel, ReliableTransport
from dispatchq.config.settings import Settings, load_settings, worker_redis
from dispatchq.core.service import fail_message
from dispatchq.store import dlq, keys, lanes
from dispatchq.store.records import RecordStore, RequestState

log = structlog.get_logger(__name__)
_ack_log = logging.getLogger(__name__)  # kombu's ack_log_error wants a stdlib logger


@dataclass(frozen=True)
class _Sink:
    """Where the main process writes dead letters: built once, after settings load."""

    settings: Settings
    redis: redis.Redis


@functools.cache
def _sink() -> _Sink:
    settings = load_settings()
    return _Sink(settings, worker_redis(settings))


def envelope_problem(raw: Any) -> str | None:
    """Why a decoded queue item is not a message kombu can deliver, or None if it is."""
    if not isinstance(raw, dict):
        return f"a queue message must be a JSON object, not {type(raw).__name__}"
    props = raw.get("properties")
    if not isinstance(props, dict):
        return "the message has no 'properties' object"
    if not isinstance(props.get("delivery_tag"), str) or not props["delivery_tag"]:
        return "properties.delivery_tag must be a non-empty string"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(name), str) for name in ("exchange", "routing_key")
    ):
        return "properties.delivery_info must be an object with exchange and routing_key"
    for name in ("headers",):
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            return f"'{name}' must be an object"
    for name in ("content-type", "content-encoding"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            return f"'{name}' must be a string"
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        return "'body' must be a string"
    encoding = props.get("body_encoding")
    if body and encoding:
        if encoding != "base64":
            return f"unknown properties.body_encoding {encoding!r}"
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the body is not valid base64"
    return None


_STRING_HEADERS = ("id", "root_id", "parent_id", "group", "shadow", "origin", "lang",
                   "argsrepr", "kwargsrepr")  # fmt: skip


def headers_problem(headers: Any) -> str | None:
    """Why protocol-2 headers would trip Celery's consumer itself (which stops the worker on
    e.g. a task name that is not a string), or None. Celery reports the rest."""
    if not isinstance(headers, dict) or "task" not in headers:
        return None  # Celery's on_unknown_message reports it
    if not isinstance(headers["task"], str):
        return "the 'task' header must be a string"
    for name in _STRING_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"the {name!r} header must be a string"
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "the 'id' header (the task ID) is missing"
    retries = headers.get("retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        return "the 'retries' header must be a whole number"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(v is None or type(v) in (int, float) for v in limits)
    ):
        return "the 'timelimit' header must be [soft, hard]"
    for name in ("ignore_result",):
        if headers.get(name) is not None and not isinstance(headers[name], bool):
            return f"the {name!r} header must be true or false"
    return None


ETA_SLACK = 5.0
"""Seconds an `eta` may lie beyond the longest retry delay (`retry_cap`)."""


def eta_problem(eta: Any, retry_cap: float) -> str | None:
    """Why an `eta` header (what Celery's `countdown` sends) is refused, or None. dispatchq's
    own retries and requeues use it, up to `retry_cap` seconds ahead; one further ahead
    would hold the message unacknowledged in a worker for as long as its sender likes."""
    if eta is None or not isinstance(eta, str):
        return None  # absent; or not a string, which Celery refuses itself (invalid_task)
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None  # Celery refuses it (invalid_task)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ahead = (when - datetime.now(UTC)).total_seconds()
    if ahead <= retry_cap + ETA_SLACK:
        return None
    return (
        f"the message asks to run {ahead:.0f} s from now (eta/countdown): dispatchq runs a "
        f"request when a worker takes it, or retries it within {retry_cap + ETA_SLACK:g} s "
        "(DISPATCHQ_RETRY_CAP + 5); refused"
    )


def body_problem(body: Any) -> str | None:
    """Why a decoded body is not Celery protocol 2 (`[args, kwargs, embed]`), or None."""
    if (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
        and (body[2] is None or isinstance(body[2], dict))
    ):
        return None
    return "the body is not a Celery protocol-2 body [args, kwargs, embed]"


class PoisonChannel(ReliableChannel):
    def counted(self) -> Counted:
        """Requests' deliveries are counted as they are fetched where a fetch can (the
        consumer counts the others): see `PoisonAwareConsumer._over_delivery_cap`."""
        ttl = _sink().settings.result_ttl
        return Counted(TASK_DISPATCH, keys.request(""), ttl)

    def weights(self) -> dict[str, int]:
        return _sink().settings.tenant_weights

    def lane_of(self, message: Any) -> tuple[str, str] | None:
        """A retry of a batch's request goes back to its batch's lane."""
        return lanes.lane_of(message, TASK_DISPATCH)

    def _decode(self, item: bytes) -> Any:
        try:
            decoded = super()._decode(item)
        except ValueError:  # not UTF-8, or not JSON
            reason, kind = "the queue item is not JSON", "undecodable"
        else:
            if decoded is not None:
                return decoded
            reason, kind = "a queue message must be a JSON object, not null", "malformed"
        dead_letter(
            _sink().redis,
            reason=reason,
            kind=kind,
            queue=_sink().settings.queue,
            message=item.decode("utf-8", "replace"),
        )
        return None


class PoisonSentinelChannel(PoisonChannel, kombu_redis.SentinelChannel):
    """The same channel, its pool Sentinel's: it connects to whichever server the
    Sentinels name the primary, and again after a failover.

    The Sentinels' addresses come from the `sentinels` transport option, where kombu's
    channel reads them from the connection's alternate URLs (`sentinel://a;sentinel://b`).
    Given those, kombu would also, on a lost connection, switch to the next URL, and with
    it to its own Sentinel transport: a worker that reconnected after a failover would
    fetch with BRPOP, from no batch lane, and keep nothing in flight. So the broker URL is
    the first Sentinel alone (`dispatchq.config.connection`), and redis-py's Sentinel
    client asks each in turn."""

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options, "sentinels")
    sentinels: list[tuple[str, int]] = []  # noqa: RUF012  (kombu's option, set per channel)
    master_name: str
    min_other_sentinels: int = 0
    sentinel_kwargs: dict[str, Any] | None = None
    _connparams: Any

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        params = self._connparams(asynchronous)
        params.pop("host", None)
        params.pop("port", None)
        manager = redis.sentinel.Sentinel(
            [(str(host), int(port)) for host, port in self.sentinels],
            min_other_sentinels=self.min_other_sentinels,
            sentinel_kwargs=self.sentinel_kwargs,
            **params,
        )
        if asynchronous:  # kept, so that kombu closes its connections to the Sentinels
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        return manager.master_for(self.master_name, redis.Redis, **credentials).connection_pool


class PoisonTransport(ReliableTransport):
    """The reliable Redis transport, with bad queue items dead-lettered instead of raised."""

    Channel = PoisonChannel

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = envelope_problem(message)
        if problem is None:
            if queue is not None:
                # A retry is published to the routing key: to the list the message came
                # from, whatever a foreign producer wrote there (Celery's default, "celery",
                # is a list no dispatchq worker reads).
                message["properties"]["delivery_info"]["routing_key"] = queue
            super()._deliver(message, queue)
            return
        headers = message.get("headers") if isinstance(message, dict) else None
        task_id, task = _named(headers)
        dead_letter(
            _sink().redis,
            reason=problem,
            kind="malformed",
            task_id=task_id,
            task=task,
            queue=queue,
            message=json.dumps(message),
        )
        if task == TASK_DISPATCH and task_id:
            from dispatchq.worker.app import app  # noqa: PLC0415  (loaded by now: it loads this module)

            backend = cast(GuardedRedisBackend, app.backend)
            _fail(backend, task_id, "malformed", problem, _kwargs_of(message))


class PoisonSentinelTransport(PoisonTransport):
    """The same transport, for `sentinel://` URLs (`dispatchq.config.connection`)."""

    Channel = PoisonSentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port


REPR_MAXSIZE = 1024
"""Characters of a filled-in argsrepr/kwargsrepr, Celery's own default bound."""


def _fill_reprs(headers: Any, body: list[Any]) -> None:
    """Celery's clients send `argsrepr`/`kwargsrepr` headers, which its task events, so
    Flower, show as the task's arguments; a hand-built or celery-node message has none,
    and would show none. Made here from the body when missing."""
    if isinstance(headers, dict) and not headers.get("kwargsrepr"):
        headers["argsrepr"] = saferepr(body[0], REPR_MAXSIZE)
        headers["kwargsrepr"] = saferepr(body[1], REPR_MAXSIZE)


class PoisonAwareConsumer(Consumer):
    """Celery's consumer, with every refused message dead-lettered (see the module doc)."""

    def create_task_handler(self, promise: Any = promise) -> Any:
        run = super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return received(message)
            except (redis.ResponseError, redis.DataError) as err:
                # Redis refused a command for this one message (a key of another type...):
                # it goes to the dead letters, and the worker goes on (Celery would stop).
                reason = f"Redis refused a command for this message: {str(err)[:300]}"
                try:
                    return self._refuse(message, "store", reason)
                except redis.RedisError as again:  # unacknowledged: it comes back later
                    log.error("message.refuse_failed", error=str(again)[:200], reason=reason)
                    return None

        def received(message: Any) -> Any:
            problem = headers_problem(message.headers)
            if problem is not None:
                return self._refuse(message, "malformed", problem)
            headers = message.headers if isinstance(message.headers, dict) else {}
            if "task" in headers and headers["task"] != TASK_DISPATCH:
                reason = f"{headers['task']!r} is not a dispatchq task: only {TASK_DISPATCH!r} runs"
                return self._refuse(message, "unknown_task", reason)
            problem = eta_problem(headers.get("eta"), _sink().settings.retry_cap)
            if problem is not None:
                return self._refuse(message, "invalid_task", problem)
            try:
                body = message.decode()
            except (DecodeError, ContentDisallowed):
                return run(message)  # Celery's path: on_decode_error / on_invalid_task
            problem = body_problem(body)
            if problem is not None:
                return self._refuse(message, "malformed", problem, body)
            _fill_reprs(message.headers, body)
            if isinstance(message.headers, dict) and message.headers.get("task") == TASK_DISPATCH:
                if getattr(message.channel, "deliveries", None) == UNCOUNTABLE:
                    reason = (
                        f"its request record ({keys.request(str(headers.get('id')))!r}) holds "
                        "another type of value: Redis refused to count its deliveries"
                    )
                    return self._refuse(message, "store", reason, body)
                over = self._over_delivery_cap(message)
                if over is not None:
                    return self._refuse(message, "delivery_cap", over, body)
            return run(message)

        return on_task_received

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        kind = "content" if isinstance(exc, DecodeError | ContentDisallowed) else "malformed"
        self._refuse(message, kind, f"cannot decode the message: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._refuse(message, "malformed", "the message names no task (no 'task' header)", body)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name = message.headers.get("task") if isinstance(message.headers, dict) else None
        self._refuse(message, "unknown_task", f"no task named {name!r} on this worker", body)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        kind = "content" if isinstance(exc, ContentDisallowed) else "invalid_task"
        self._refuse(message, kind, f"invalid task message: {exc}", body)

    def _over_delivery_cap(self, message: Any) -> str | None:
        task_id = message.headers.get("id")
        if not isinstance(task_id, str) or not task_id:
            return None
        sink = _sink()
        deliveries = getattr(message.channel, "deliveries", None)  # counted as it was fetched
        if not isinstance(deliveries, int):
            deliveries = dlq.count_delivery(sink.redis, task_id, sink.settings.result_ttl)
        retries = message.headers.get("retries")
        allowed = sink.settings.max_deliveries + (retries if isinstance(retries, int) else 0)
        if deliveries <= allowed:
            return None
        record = RecordStore(sink.redis, sink.settings.result_ttl).load(task_id)
        if record is not None and record.state == RequestState.DONE:
            return None  # a late duplicate of a finished request: let it resume harmlessly
        return (
            f"delivered {deliveries} times (cap {sink.settings.max_deliveries} besides its "
            "retries): it may be killing its workers"
        )

    def _refuse(self, message: Any, kind: str, reason: str, body: Any = None) -> None:
        """Dead-letter, give a request of ours its exit-1 outcome, then acknowledge."""
        sink = _sink()
        task_id, task = _named(message.headers)
        delivery_info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
        dead_letter(
            sink.redis,
            reason=reason,
            kind=kind,
            task_id=task_id,
            task=task,
            queue=delivery_info.get("routing_key") or sink.settings.queue,
            message=_original(message),
        )
        if task == TASK_DISPATCH and task_id:
            kwargs = body[1] if body_problem(body) is None else {}
            try:
                _fail(cast(GuardedRedisBackend, self.app.backend), task_id, kind, reason, kwargs)
            except (redis.ResponseError, redis.DataError) as err:  # dead-lettered all the same
                log.error("message.outcome_not_stored", task_id=task_id, error=str(err)[:200])
        message.ack_log_error(_ack_log, self.connection_errors)  # type: ignore[attr-defined]


def _fail(
    backend: GuardedRedisBackend,
    task_id: str,
    kind: str,
    reason: str,
    kwargs: dict[str, Any] | None,
) -> None:
    sink = _sink()
    records = RecordStore(sink.redis, sink.settings.result_ttl, sink.settings.event_stream)
    fail_message(records, backend.success_result, task_id, kind=kind, reason=reason, kwargs=kwargs)


def _named(headers: Any) -> tuple[str | None, str | None]:
    """The task ID and task name the headers give, where they are strings."""
    if not isinstance(headers, dict):
        return None, None
    task_id, task = headers.get("id"), headers.get("task")
    return (
        task_id if isinstance(task_id, str) and task_id else None,
        task if isinstance(task, str) else None,
    )


def _kwargs_of(message: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of an envelope's body, where they can be read; else {}."""
    body = message.get("body")
    if not isinstance(body, str) or len(body) > 1 << 20:
        return {}
    try:
        decoded = json.loads(base64.b64decode(body, validate=True))
    except (ValueError, binascii.Error):
        return {}
    return decoded[1] if body_problem(decoded) is None else {}


def _original(message: Any) -> str | None:
    """The queue item as it was received (what `replay` pushes back), if kombu kept it."""
    raw = getattr(message, "_raw", None)
    return json.dumps(raw) if isinstance(raw, dict) else None
