"""Webhooks: POST each completion event that names a `notify_url` to it, signed.

`dispatchq notifier` runs one `Notifier`: it reads the completion stream
(`dispatchq.store.completion`) in the consumer group `keys.NOTIFIER_GROUP`, so several notifiers
share the work and one that dies leaves its unacknowledged entries to the others
(`XAUTOCLAIM` of entries idle longer than `claim_idle`); an entry is acknowledged (`XACK`)
only after a 2xx answer, or once it is dead-lettered: delivery is at least once, and the
receiver de-duplicates with `X-Dispatchq-Event-Id`.

A POST carries the event's JSON as its body and the headers:

- `X-Dispatchq-Event-Id`: the event's `event_id`;
- `X-Dispatchq-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the
  `notify_secret` setting as key (`sign`; a receiver checks it with `verify`).

A URL is parsed once, strictly (`dispatchq.payload.http.parse_http_url`): that parse decides
whether its host is on the `notify_hosts` allow-list and is where the connection goes. A
host not on the list, or a URL that does not parse, is dead-lettered at once. https is
verified against certifi's CA bundle; redirects are not followed. Each POST has one total
deadline (`notify_timeout`: connecting, sending and reading together).

A failed POST (no answer, or not 2xx) is tried again after 1 s, then 2, 4... up to 60 s
between tries, until `notify_retry_for` seconds after the event was appended (its stream
entry ID says when, so a restarted notifier keeps the same window); then it is
dead-lettered (kind `webhook`, `dispatchq dlq list`) and acknowledged. How each try
settled is kept on the batch or request it is about (`dispatchq.store.webhook_status`).

What the notifier holds in memory is bounded (`max_pending` events, being posted or waiting
for their next try): when it is full it stops reading the stream, so a slow receiver
holds back only webhooks (the stream keeps the rest), never the workers, which only ever
append to the stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import http.client
import json
import queue
import ssl
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import certifi
import redis
import structlog
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error

from dispatchq.errors import PayloadError
from dispatchq.payload.http import _Watchdog, mask_userinfo, parse_http_url, short
from dispatchq.store import dlq, keys, webhook_status
from dispatchq.store.completion import EventStream, open_stream, parse_entry

log = structlog.get_logger("dispatchq.notifier")

SIGNATURE_HEADER = "X-Dispatchq-Signature"
EVENT_ID_HEADER = "X-Dispatchq-Event-Id"
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
_READ_LIMIT = 64 * 1024
"""Bytes of a receiver's answer read at most (then the connection is closed)."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, tolerance: float = 300.0) -> bool:
    """For receivers: whether `header` signs `body` with `secret`, sent within `tolerance`
    seconds of now (against replays)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1')}")


@dataclass(frozen=True)
class NotifyPolicy:
    hosts: Collection[str]
    secret: bytes
    retry_for: float = 3_600.0
    timeout: float = 10.0


class Refused(Exception):
    """A notify_url that will never be called (malformed, or its host not allowed)."""


def post(url_text: str, body: bytes, headers: dict[str, str], policy: NotifyPolicy) -> int:
    """POST `body`; the answer's status. Raises Refused for a URL that may not be called,
    OSError (with the reason) for no answer within the deadline."""
    try:
        url = parse_http_url(url_text)
    except PayloadError as err:
        raise Refused(str(err).replace("payload URL", "notify_url")) from None
    if not url.allowed(policy.hosts):
        raise Refused(f"notify_url host {url.origin!r} is not in DISPATCHQ_NOTIFY_HOSTS")
    conn: HTTPConnection
    host = url.host.strip("[]")
    if url.scheme == "https":
        conn = HTTPSConnection(host, url.port, timeout=policy.timeout, ca_certs=certifi.where())
    else:
        conn = HTTPConnection(host, url.port, timeout=policy.timeout)
    sent = {"Content-Type": "application/json", "User-Agent": "dispatchq", **headers}
    watchdog = _Watchdog(conn, policy.timeout)
    try:
        conn.request("POST", url.target, body=body, headers=sent, preload_content=False)
        response = conn.getresponse()
        response.read(_READ_LIMIT)
        if watchdog.fired:
            raise OSError(_no_answer(policy))
        return int(response.status)
    except (ssl.SSLError, http.client.HTTPException, Urllib3Error) as err:
        raise OSError(mask_userinfo(str(err))[:200] or type(err).__name__) from None
    except OSError as err:
        if watchdog.fired:
            raise OSError(_no_answer(policy)) from None
        raise OSError(mask_userinfo(str(err))[:200] or type(err).__name__) from None
    finally:
        watchdog.cancel()
        conn.close()


def _no_answer(policy: NotifyPolicy) -> str:
    return f"no answer within {policy.timeout:g} s (DISPATCHQ_NOTIFY_TIMEOUT)"


@dataclass(order=True)
class Delivery:
    """One event to POST, and how its tries went."""

    due: float
    entry_id: str = field(compare=False)
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    event: dict[str, Any] = field(compare=False)
    attempts: int = field(default=0, compare=False)
    last_error: str = field(default="", compare=False)

    @property
    def appended_at(self) -> float:
        """Unix time the event was appended: its stream entry ID's milliseconds."""
        return int(self.entry_id.split("-")[0]) / 1000


class Notifier:
    """Reads the event stream in its group and POSTs what names a URL (module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        stream: EventStream,
        policy: NotifyPolicy,
        *,
        consumer: str,
        group: str = keys.NOTIFIER_GROUP,
        threads: int = 8,
        max_pending: int = 1_000,
        claim_idle: float = 60.0,
        block: float = 1.0,
    ) -> None:
        self.client = client
        self.stream = stream.key
        self.policy = policy
        self.consumer = consumer
        self.group = group
        self.threads = threads
        self.max_pending = max_pending
        self.claim_idle = claim_idle
        self.block = block
        self.delivered = 0
        self.dead = 0
        self._work: queue.Queue[Delivery | None] = queue.Queue()
        self._later: list[Delivery] = []
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def ensure_group(self) -> None:
        """The group, reading from the stream's start (no event appended before the first
        notifier ran is skipped)."""
        if self.group == keys.NOTIFIER_GROUP:
            open_stream(self.client, EventStream(self.stream))
            return
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: read, claim, post; then let the threads finish their try."""
        self.ensure_group()
        workers = [
            threading.Thread(target=self._post_loop, daemon=True) for _ in range(self.threads)
        ]
        for thread in workers:
            thread.start()
        next_claim = 0.0
        while not stop.is_set():
            try:
                next_claim = self._read(stop, next_claim)
            except redis.RedisError as err:  # Redis away or refusing: entries stay pending
                log.error("notifier.read_failed", error=str(err)[:200])
                stop.wait(BACKOFF_FIRST)
        for _ in workers:
            self._work.put(None)
        for thread in workers:
            thread.join(timeout=self.policy.timeout + 1)

    # -- reading -------------------------------------------------------------------------

    def _read(self, stop: threading.Event, next_claim: float) -> float:
        """One turn of the loop: claim and release what is due, read new entries; returns
        when to claim next."""
        now = time.time()
        if now >= next_claim:
            self._claim_stale()
            self._touch_held()
            next_claim = now + max(self.claim_idle / 3, 0.05)
        self._release_due(now)
        room = self.max_pending - self._holding()
        if room <= 0:
            stop.wait(0.05)
            return next_claim
        answer: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=min(room, 200),
            block=int(self.block * 1000),
        )  # fmt: skip
        for _, entries in answer or []:
            for entry_id, fields in entries:
                self._take(entry_id, fields)
        return next_claim

    def _holding(self) -> int:
        with self._lock:
            return len(self._held)

    def _take(self, raw_id: bytes | str, fields: Any) -> None:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        try:
            event, url = parse_entry(fields or {})
        except (ValueError, TypeError):
            event, url = {}, ""
        if not url:
            self.client.xack(self.stream, self.group, entry_id)
            return
        with self._lock:
            if entry_id in self._held:
                return
            self._held.add(entry_id)
        body = json.dumps(event, separators=(",", ":")).encode()
        self._work.put(Delivery(0.0, entry_id, url, body, event))

    def _claim_stale(self) -> None:
        """Take over the entries a dead notifier left unacknowledged."""
        cursor = "0-0"
        while (room := self.max_pending - self._holding()) > 0:
            answer: Any = self.client.xautoclaim(
                self.stream, self.group, self.consumer, int(self.claim_idle * 1000),
                start_id=cursor, count=min(room, 100),
            )  # fmt: skip
            cursor_raw, entries = answer[0], answer[1]
            for entry_id, fields in entries:
                if fields is not None:
                    self._take(entry_id, fields)
            cursor = cursor_raw.decode() if isinstance(cursor_raw, bytes) else str(cursor_raw)
            if cursor == "0-0" or not entries:
                return

    def _touch_held(self) -> None:
        """Reset the idle time of the entries held here, so no other notifier claims one
        that is waiting for its next try."""
        with self._lock:
            held: list[Any] = list(self._held)
        for start in range(0, len(held), 500):
            self.client.xclaim(
                self.stream, self.group, self.consumer, 0, held[start : start + 500],
                justid=True,
            )  # fmt: skip

    def _release_due(self, now: float) -> None:
        with self._lock:
            while self._later and self._later[0].due <= now:
                self._work.put(heapq.heappop(self._later))

    # -- posting -------------------------------------------------------------------------

    def _post_loop(self) -> None:
        while (delivery := self._work.get()) is not None:
            try:
                self._attempt(delivery)
            except redis.RedisError as err:  # try again later; the entry stays pending
                log.warning("notifier.redis_error", error=str(err)[:200])
                self._retry_later(delivery, time.time() + BACKOFF_FIRST)

    def _attempt(self, delivery: Delivery) -> None:
        event_id = str(delivery.event.get("event_id", ""))
        now = int(time.time())
        headers = {
            EVENT_ID_HEADER: event_id,
            SIGNATURE_HEADER: sign(self.policy.secret, now, delivery.body),
        }
        delivery.attempts += 1
        try:
            status = post(delivery.url, delivery.body, headers, self.policy)
        except Refused as err:
            self._dead_letter(delivery, str(err))
            return
        except OSError as err:
            delivery.last_error = str(err)
        else:
            if 200 <= status < 300:
                self._done(delivery)
                self._note(delivery, webhook_status.DELIVERED)
                self.delivered += 1
                return
            delivery.last_error = f"HTTP {status}"
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (delivery.attempts - 1))
        if time.time() + delay > delivery.appended_at + self.policy.retry_for:
            self._dead_letter(
                delivery,
                f"webhook not delivered within {self.policy.retry_for:g} s "
                f"(DISPATCHQ_NOTIFY_RETRY_FOR): {delivery.last_error}",
            )
            return
        log.info("notifier.retry", event_id=event_id, url=short(delivery.url),
                 attempts=delivery.attempts, error=delivery.last_error)  # fmt: skip
        self._note(delivery, webhook_status.RETRYING, delivery.last_error)
        self._retry_later(delivery, time.time() + delay)

    def _retry_later(self, delivery: Delivery, due: float) -> None:
        delivery.due = due
        with self._lock:
            heapq.heappush(self._later, delivery)

    def _done(self, delivery: Delivery) -> None:
        self.client.xack(self.stream, self.group, delivery.entry_id)
        with self._lock:
            self._held.discard(delivery.entry_id)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        event = delivery.event
        dlq.append(
            self.client,
            dlq.DeadLetter(
                reason=reason,
                kind="webhook",
                task_id=event.get("request_id") or event.get("batch_id"),
                message=delivery.body.decode(),
                details={
                    "event_id": event.get("event_id"),
                    "notify_url": short(delivery.url),
                    "attempts": delivery.attempts,
                    "stream_entry": delivery.entry_id,
                },
            ),
        )
        self.dead += 1
        log.warning("notifier.dead_lettered", event_id=event.get("event_id"), reason=reason)
        self._done(delivery)
        self._note(delivery, webhook_status.DEAD, reason)

    def _note(self, delivery: Delivery, state: str, error: str = "") -> None:
        """Keep how the try went on its batch or request; after the acknowledgement, so
        that Redis failing here never makes a delivered webhook be POSTed again."""
        with contextlib.suppress(redis.RedisError):
            webhook_status.record(self.client, delivery.event, state, delivery.attempts, error)


def pending(client: redis.Redis, stream: EventStream, group: str = keys.NOTIFIER_GROUP) -> int:
    """Entries delivered to the notifiers and not yet acknowledged."""
    with contextlib.suppress(redis.ResponseError):
        info: Any = client.xpending(stream.key, group)
        return int(info["pending"])
    return 0
