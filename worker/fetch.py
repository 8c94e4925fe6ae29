"""A fetch from the Redis queue that a SIGKILL cannot lose.

kombu's Redis transport takes a message with `BRPOP` and only then records it in its
`unacked` hash. A worker killed in between (the reply can wait in the socket buffer for a
while on a busy machine) takes the message with it: it is in neither place, and nothing
ever redelivers it. The fault suite saw this: 3 of 1,000 requests lost to 4 SIGKILLs.

`ReliableChannel` fetches with `BLMOVE` instead, into a list of its own (`keys.inflight`),
and removes the message from there only once kombu has recorded it as unacknowledged. Each
consumer keeps a lease (`keys.lease`, renewed while it consumes); every few seconds each
consumer gives back to their queue the in-flight messages of consumers whose lease is gone,
and its own strays (a read interrupted by a connection error). A message can so be
delivered twice (harmless: see `dispatch.service`), never zero times.

`BLMOVE` takes one source list: queue priorities are not used (one list per queue), and a
worker consuming several queues takes from one at a time, in turn.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis import Redis

from dispatch import keys

RENEW_EVERY = 5.0
"""Seconds between lease renewals and sweeps for abandoned in-flight messages."""

# Give a consumer's in-flight messages back to their queue if it is gone (no lease) or if
# it is the caller (its own strays). KEYS: lease, in-flight list, queue, registry.
_RECLAIM_LUA = """
if ARGV[2] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local moved = 0
while redis.call('RPOPLPUSH', KEYS[2], KEYS[3]) do moved = moved + 1 end
if ARGV[2] == '0' then redis.call('SREM', KEYS[4], ARGV[1]) end
return moved
"""


class ReliableChannel(kombu_redis.Channel):
    priority_steps = [0]  # noqa: RUF012  (kombu's attribute: one list per queue)
    # kombu attributes its type stubs do not declare:
    _queue_cycle: Any
    _flush_brpop_reauth: Any
    _create_client: Any
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumer_id = uuid.uuid4().hex
        self._renew_at = 0.0
        self._fetching_from = ""
        self._shared: Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: Redis | None = None) -> Iterator[Redis]:
        """kombu builds a new redis-py client for every acknowledgement, in-flight removal
        and publish (a tenth of a worker's CPU at high rates); one client over the
        channel's pool serves them all, since a pooled client is safe to share between
        threads and greenlets. A new pool (after a fork or a close) gets a new client."""
        if client is not None:
            yield client
            return
        pool = self.pool
        if self._shared is None or self._shared.connection_pool is not pool:
            self._shared = self._create_client()
        yield self._shared

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._look_after(queues)
        queue = self._fetching_from = queues[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command(
            "BLMOVE", queue, keys.inflight(self.consumer_id, queue), "RIGHT", "LEFT", wait or 0
        )

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._fetching_from
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            message = self._decode(item)
            if message is not None:
                self.connection._deliver(message, queue)
            # Only now that kombu holds it in `unacked` may it leave the in-flight list.
            with self.conn_or_acquire() as client:
                client.lrem(keys.inflight(self.consumer_id, queue), 1, item)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _decode(self, item: bytes) -> Any:
        """The queue item as kombu's envelope; None for an item this channel disposed of."""
        return loads(bytes_to_str(item))

    def _look_after(self, queues: list[str]) -> None:
        """Every RENEW_EVERY seconds: renew the lease, take back this consumer's strays and
        the in-flight messages of consumers that are gone."""
        now = time.monotonic()
        if now < self._renew_at:
            return
        self._renew_at = now + RENEW_EVERY
        mine = [f"{self.consumer_id}:{queue}" for queue in queues]
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.lease(self.consumer_id), 1, ex=keys.LEASE_TTL)
            pipe.sadd(keys.INFLIGHT, *mine)
            pipe.smembers(keys.INFLIGHT)
            members = {bytes_to_str(m) for m in pipe.execute()[-1]}
            reclaim = client.register_script(_RECLAIM_LUA)
            for member in sorted(members):
                consumer, _, queue = member.partition(":")
                reclaim(
                    keys=[
                        keys.lease(consumer),
                        keys.inflight(consumer, queue),
                        queue,
                        keys.INFLIGHT,
                    ],
                    args=[member, "1" if member in mine else "0"],
                )
