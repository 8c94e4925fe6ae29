"""Every Redis key dispatchq writes, with its TTL, in one place.

| key                              | type   | written by        | TTL                        |
|----------------------------------|--------|-------------------|----------------------------|
| `dispatchq:request:<request id>` | hash   | producer, worker  | result_ttl                 |
| `dispatchq:blob:<sha256 hex>`    | string | producer          | blob_ttl                   |
| `dispatchq:dlq`                  | list   | worker            | DLQ_TTL, renewed per write |
| `celery-task-meta-<request id>`  | string | Celery's backend  | result_ttl (result_expires) |
| `dispatchq:workers`              | zset   | worker heartbeat  | WORKER_TTL, renewed/beat   |
| `dispatchq:batch:<id>`           | hash   | producer, worker  | result_ttl, renewed/100 ends |
| `dispatchq:batches`              | zset   | producer          | none; trimmed to result_ttl |
| `dispatchq:batch-requests:<id>`  | list   | producer          | result_ttl                 |
| `dispatchq:batch-errors:<id>`    | list   | worker            | result_ttl                 |
| `dispatchq:batch-items:<id>`     | hash   | producer          | result_ttl                 |
| `dispatchq:batch-attempts:<id>`  | hash   | producer, tracker | result_ttl                 |
| `dispatchq:retry`                | zset   | worker, tracker   | none: members leave when claimed |
| `dispatchq:rate`                 | hash   | worker gate       | RATE_TTL, renewed/write    |
| `dispatchq:children:<ns>:<job>`  | hash   | worker gate       | CHILDREN_TTL, renewed      |
| `dispatchq:children-refresh:<ns>:<job>` | string | worker gate | CHILDREN_REFRESH_LOCK ms |
| `dispatchq:events` (setting) | stream | worker (done.lua) | none; events_maxlen (*)   |
| `dispatchq:lane:<batch id>`      | list   | producer, worker  | none (a broker list)       |
| `dispatchq:lanes:<queue>`        | hash   | producer, worker  | none (emptied by fetch)    |
| `dispatchq:tenants:<queue>`      | list   | producer, worker  | none (emptied by fetch)    |
| `dispatchq:tenant:<tenant>:<queue>` | list | producer, worker | none (emptied by fetch)    |
| `dispatchq:credit:<queue>`       | hash   | worker fetch      | none (emptied by fetch)    |
| `dispatchq:follow`               | zset   | worker, tracker   | none: members leave when done |
| `dispatchq:partial:<request id>` | string | worker, tracker   | result_ttl, renewed/check  |
| `dispatchq:tracker:lease`        | string | tracker           | TRACKER_LEASE_MS, renewed  |
| `dispatchq:trackers`             | zset   | tracker           | TRACKER_TTL, renewed       |
| `dispatchq:backlog:<queue>`      | list   | tracker (leader)  | BACKLOG_TTL, renewed       |
| `dispatchq:progress:<request id>`| channel| tracker           | (pub/sub: nothing stored)  |
| `dispatchq:receipt`              | channel| producer (receipt) | (pub/sub: nothing stored) |

(*) trimmed to about events_maxlen entries, never past one the notifier has not read.

**One key space per kind of object.** A key is a fixed prefix that names its kind
(`dispatchq:request:`, `dispatchq:batch-items:`, ...) followed by the object's ID, and
nothing is ever appended after an ID: whatever characters an ID holds (':' included), it
cannot name another object's key or a key of another kind, because no prefix is the start
of another (`PREFIXES`, checked by tests/store/test_keys.py against generated IDs). Where
a key holds two names, every name but the last is one that cannot hold ':' (a tenant, a
Nomad namespace, a consumer ID). An ID that ends in `~<digits>` is dispatchq's own (an
attempt of a batch item, `attempt_id`): producers may not use one (`is_reserved_id`).

The request hash is both the caller-visible state (queued, dispatching, monitoring) and the
worker's write-ahead record: once `dispatched_job_id` is in it, a redelivered request resumes
monitoring instead of dispatching again.

Broker keys carry no TTL by design, since a queue must not expire: kombu's queue list
`<queue>` (plus `<queue>\\x06\\x16<n>` per priority) and `_kombu.binding.*`, and the
in-flight lists of `dispatchq.broker.fetch` (below). They hold only messages waiting or in flight.
The batch lanes and their registry (below) are broker keys too: a lane list vanishes when
its last message is fetched (Redis deletes an empty list), and the fetch that finds a lane
empty takes it out of the registry, so they hold nothing once the batches have drained.
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "dispatchq"

DLQ: Final = f"{PREFIX}:dlq"
DLQ_TTL: Final = 14 * 86_400
"""Dead letters are kept two weeks after the last one arrived. The list is bounded besides:
the newest `dlq.MAX_ENTRIES` (1,000) entries, each at most `dlq.MAX_ENTRY_BYTES` (32 KiB),
so 32 MiB at most (`dispatchq.store.dlq`)."""

WORKERS: Final = f"{PREFIX}:workers"
"""Live consumers: member `<queue>|<hostname>`, score = time of the last heartbeat."""
WORKER_BEAT: Final = 1.0
WORKER_TTL: Final = 15
"""A worker not heard from for this many seconds is taken for gone."""

CELERY_RESULT_PREFIX: Final = "celery-task-meta-"

RATE: Final = f"{PREFIX}:rate"
"""The global dispatch rate (`dispatchq.core.backpressure`): the next free slot (`tat`) and,
after a slow-down, the rate it cut to and when (`rate`, `cut_at`)."""
RATE_TTL: Final = 3_600
CHILDREN_TTL: Final = 60
"""A job's unfinished-children count outlives its last use by this much."""
CHILDREN_REFRESH_LOCK: Final = 5_000
"""Milliseconds one worker has to read a job's summary before another may try."""

BATCHES: Final = f"{PREFIX}:batches"
"""Every batch, by creation time (score): what the dashboard lists, newest first, without
a scan. A batch submit also trims the members older than result_ttl, whose batch records
have expired."""

RECEIPT: Final = f"{PREFIX}:receipt"
"""A channel nobody listens on: a producer that must wait for replicas (the
`redis_min_replicas` setting) publishes an empty message here, on the connection it wrote
its requests with, before `WAIT`. A publish is replicated, so it moves that connection's
replication offset to now: WAIT then also covers an enqueue that wrote nothing (a retry of
a request ID the primary already had, whose first write may not have reached a replica)."""

EVENTS: Final = f"{PREFIX}:events"
"""The completion event stream (`dispatchq.store.completion`): one entry per request that ends and
per batch that finishes. No TTL (consumers may be away for a while); trimmed instead to
about EVENTS_MAXLEN entries (the `events_maxlen` setting), but never past an entry the
notifier's group has not acknowledged (`lua/_events.lua`)."""
EVENTS_MAXLEN: Final = 100_000
"""Entries the event stream keeps, about (Redis trims whole nodes: `~`); some 50 MB."""
CAPPED: Final = frozenset({EVENTS})
"""Keys bounded by their length instead of a TTL (the event stream at its default key)."""
NOTIFIER_GROUP: Final = "dispatchq-notifier"
"""The consumer group of `dispatchq notifier` on the event stream."""

INFLIGHT: Final = f"{PREFIX}:inflight"
"""Broker keys of `dispatchq.broker.fetch` (no TTL, like kombu's): the set of consumer IDs, and per
consumer `<INFLIGHT>:<id>:<queue>`, the list a message sits in from leaving the queue until
it is acknowledged or rejected: the one record of an unacknowledged message."""
LEASE_TTL: Final = 15
"""`<PREFIX>:lease:<consumer id>` lives this long unless its worker renews it; a consumer
without a lease is gone, and its in-flight messages go back to their queue."""


LANE: Final = f"{PREFIX}:lane:"
"""Fair queueing (`dispatchq.broker.fetch`, `dispatchq/store/lua/_lanes.lua`): the documented queue
list is
the interactive lane; a batch's messages wait in a lane of their own, `<LANE><batch id>`
(batch IDs are global, like `batch()`), registered per queue: `lanes()` maps each batch
with a lane that may hold messages to its tenant, `tenants()` is the ring of tenants with
such batches (the next in turn at its right end) and `tenant_ring()` each tenant's ring of
batches; `credit()` counts what the tenant in turn has taken of its weight. No TTL: the
fetch that finds a lane empty unregisters it, and a tenant without batches leaves the ring."""


def lane(batch_id: str) -> str:
    """The messages of one batch waiting to be fetched. No TTL (a broker list)."""
    return f"{LANE}{batch_id}"


def lanes(queue: str) -> str:
    """Registered lanes of a queue: batch ID -> tenant ('' for none). No TTL."""
    return f"{PREFIX}:lanes:{queue}"


def tenants(queue: str) -> str:
    """The ring of tenants with registered lanes of a queue. No TTL."""
    return f"{PREFIX}:tenants:{queue}"


def tenant_ring(queue: str, tenant: str) -> str:
    """A tenant's ring of registered batches (tenant names hold no ':'). No TTL."""
    return f"{PREFIX}:tenant:{tenant}:{queue}"


def credit(queue: str) -> str:
    """Takes of the tenant in turn since its turn began (weighted round robin). No TTL."""
    return f"{PREFIX}:credit:{queue}"


def lane_keys(queue: str) -> list[str]:
    """The key prefixes the lane scripts take as arguments, in their order: lane, lanes,
    tenants, tenant ring (before the tenant), tenant ring suffix (after it), credit."""
    return [LANE, lanes(queue), tenants(queue), f"{PREFIX}:tenant:", f":{queue}", credit(queue)]


FOLLOW: Final = f"{PREFIX}:follow"
"""The children followed to their end (`until` finished): member = request ID, score = the
Unix time of its next forced check. No TTL: a member leaves when its request is done (the
script that stores the outcome removes it); its request record holds the rest."""
TRACKER_LEASE: Final = f"{PREFIX}:tracker:lease"
"""The leading tracker's ID (SET NX PX): one tracker follows children at a time."""
TRACKER_LEASE_MS: Final = 10_000
"""The lease lives this long unless its tracker renews it (every third of it)."""
TRACKERS: Final = f"{PREFIX}:trackers"
"""Live trackers, the leader and its standbys: member = tracker ID, score = the time it last
tried for the lease (`lua/lease.lua`, every third of the lease)."""
TRACKER_TTL: Final = 15
"""A tracker not heard from for this many seconds is taken for gone."""


def backlog(queue: str) -> str:
    """The queue's backlog over time (`dispatchq.store.backlog`): one sample per
    `BACKLOG_EVERY` seconds, newest first, the last `BACKLOG_SAMPLES` kept. TTL:
    BACKLOG_TTL, renewed per sample (it goes when no tracker samples it)."""
    return f"{PREFIX}:backlog:{queue}"


BACKLOG_EVERY: Final = 5
BACKLOG_SAMPLES: Final = 720
BACKLOG_TTL: Final = BACKLOG_EVERY * BACKLOG_SAMPLES


def partial(request_id: str) -> str:
    """A followed child's outcome so far (until its end is stored). TTL: result_ttl,
    renewed with its record's at every check."""
    return f"{PREFIX}:partial:{request_id}"


def progress(request_id: str) -> str:
    """The pub/sub channel where the tracker announces a followed child's changes (JSON
    lines) for `dispatchq job dispatch -wait`; nothing is stored."""
    return f"{PREFIX}:progress:{request_id}"


def inflight(consumer_id: str, queue: str) -> str:
    return f"{INFLIGHT}:{consumer_id}:{queue}"


def lease(consumer_id: str) -> str:
    """A consumer's liveness. TTL: LEASE_TTL, renewed while it consumes."""
    return f"{PREFIX}:lease:{consumer_id}"


def request(request_id: str) -> str:
    """The request record: state and write-ahead fields. TTL: settings.result_ttl."""
    return f"{PREFIX}:request:{request_id}"


def blob(sha256_hex: str) -> str:
    """A content-addressed inline payload. TTL: settings.blob_ttl."""
    return f"{PREFIX}:blob:{sha256_hex}"


def batch(batch_id: str) -> str:
    """A batch: job, total, state and counters per state and exit code (`dispatchq.store.batches`
    lists its fields). TTL: result_ttl."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_requests(batch_id: str) -> str:
    """The batch's request IDs in item order (for `batch results`). TTL: result_ttl."""
    return f"{PREFIX}:batch-requests:{batch_id}"


def batch_items(batch_id: str) -> str:
    """Per request ID of the batch, what re-running its item needs: JSON `{"line", "payload_ref",
    "meta"}` (`batch results --failed`). TTL: result_ttl."""
    return f"{PREFIX}:batch-items:{batch_id}"


def batch_attempts(batch_id: str) -> str:
    """Per item of the batch retried at least once (its first request ID), its latest
    attempt (2, 3, ...; an item not in it is at attempt 1). Attempt n > 1 of item `<id>` is
    the request `attempt_id(<id>, n)`. Written only by lua/retry.lua. TTL: result_ttl."""
    return f"{PREFIX}:batch-attempts:{batch_id}"


def attempt_id(request_id: str, attempt: int) -> str:
    """The request ID of an item's attempt: its first request ID for attempt 1, else
    `<first request ID>~<attempt>` (`dispatchq batch retry`, `--max-attempts`)."""
    return request_id if attempt <= 1 else f"{request_id}~{attempt}"


_RESERVED = re.compile(r"~[0-9]+\Z")


def is_reserved_id(some_id: str) -> bool:
    """Whether an ID ends in `~<digits>`: the form of an item's attempt (`attempt_id`) and
    of a batch's n-th finish event, which only dispatchq makes. A producer's request or
    batch ID may not, so that no request from outside can become an attempt of a batch
    item, and no batch's event ID can be another's."""
    return _RESERVED.search(some_id) is not None


RETRY_DUE: Final = f"{PREFIX}:retry"
"""Batch items whose run failed (exit 2) with attempts left (`--max-attempts`): member
`<batch id>\x1f<item's first request ID>`, score the Unix time it failed. Added by
lua/done.lua in the step that stores the failure, removed by lua/retry.lua when the next
attempt is claimed (`dispatchq.store.retries`, drained by the leading tracker). No TTL: members
leave when claimed, and a crash between the two leaves the item here, not lost."""


def batch_errors(batch_id: str) -> str:
    """The first errors of a batch, as JSON entries. TTL: result_ttl."""
    return f"{PREFIX}:batch-errors:{batch_id}"


def celery_result(request_id: str) -> str:
    """Where the outcome is stored, as Celery's Redis backend stores it (the dispatch task's
    outcome is written with its record, `records.RecordStore.mark_done`). TTL: result_ttl."""
    return f"{CELERY_RESULT_PREFIX}{request_id}"


def is_broker_key(key: str, queue: str) -> bool:
    """True for the broker's keys, which carry no TTL by design (see the module docstring)."""
    return key in (queue, INFLIGHT, lanes(queue), tenants(queue), credit(queue)) or key.startswith(
        (f"{queue}\x06\x16", "_kombu.binding", f"{INFLIGHT}:", LANE, f"{PREFIX}:tenant:")
    )


def children(namespace: str, job_id: str) -> str:
    """A parameterized job's unfinished children as last read from its JobSummary, plus
    the dispatches admitted since. TTL: CHILDREN_TTL, renewed on every refresh."""
    return f"{PREFIX}:children:{namespace}:{job_id}"


def children_refresh(namespace: str, job_id: str) -> str:
    """Held by the worker reading the job's summary. TTL: CHILDREN_REFRESH_LOCK ms."""
    return f"{PREFIX}:children-refresh:{namespace}:{job_id}"


PREFIXES: Final = {
    "request": request(""),
    "partial": partial(""),
    "progress": progress(""),
    "blob": blob(""),
    "batch": batch(""),
    "batch-requests": batch_requests(""),
    "batch-items": batch_items(""),
    "batch-attempts": batch_attempts(""),
    "batch-errors": batch_errors(""),
    "lane": LANE,
    "lanes": lanes(""),
    "backlog": backlog(""),
    "tenants": tenants(""),
    "tenant": f"{PREFIX}:tenant:",
    "credit": credit(""),
    "inflight": f"{INFLIGHT}:",
    "lease": lease(""),
    "children": f"{PREFIX}:children:",
    "children-refresh": f"{PREFIX}:children-refresh:",
    "result": CELERY_RESULT_PREFIX,
}
"""The prefix of every kind of key that ends in a name (the one-key-space rule above): none
is the start of another, nor of a fixed key (`FIXED`)."""
FIXED: Final = frozenset(
    {DLQ, WORKERS, RATE, EVENTS, INFLIGHT, FOLLOW, TRACKER_LEASE, TRACKERS, RETRY_DUE,
     RECEIPT, BATCHES}
)
"""The keys whose name holds no ID."""


def acl_rules(queue: str) -> list[str]:
    """The Redis ACL rules (`ACL SETUSER <user> on ><password> ...`) of a user that may touch
    dispatchq's keys and nothing else, for a deployment whose queue is `queue`: its own
    keys, Celery's results, kombu's queue list and bindings and each worker's
    remote-control queue (`<hostname>.celery.pidbox`); every pub/sub channel (kombu
    subscribes to patterns, which an ACL matches literally); every command but the dangerous
    ones (CONFIG, INFO, KEYS...: a worker's start-up checks of the set-up are skipped)."""
    return [
        "resetkeys", f"~{PREFIX}:*", f"~{CELERY_RESULT_PREFIX}*", f"~{queue}", "~_kombu.*",
        "~*.celery.pidbox",
        "allchannels", "+@all", "-@dangerous",
    ]  # fmt: skip
