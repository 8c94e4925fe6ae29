"""Fetching from the Redis queue, and holding unacknowledged messages, so that a SIGKILL
cannot lose one.

kombu's Redis transport takes a message with `BRPOP` and only then records it in its
`unacked` hash. A worker killed in between (the reply can wait in the socket buffer for a
while on a busy machine) takes the message with it: it is in neither place, and nothing
ever redelivers it. The fault suite saw this: 3 of 1,000 requests lost to 4 SIGKILLs.

`ReliableChannel` fetches with `BLMOVE` instead, into a list of its own consumer
(`keys.inflight`), and the message stays there until it is acknowledged (`LREM`: those of
a worker at about the same time in one round trip) or rejected (`LREM`, and back to its
queue if requeued): the in-flight list is the one record
of an unacknowledged message, and kombu's QoS keeps only its bookkeeping in memory
(`InflightQoS`), where kombu's own would write a hash and a sorted set on delivery and
again on acknowledgement.

Each consumer holds a lease (`keys.lease`) while its channel is open, renewed every
RENEW_EVERY seconds whether or not it fetches (a consumer with every slot busy does not:
`dispatchq.broker.redelivery` renews on a timer too). Every consumer gives back to their queue the
in-flight messages of consumers whose lease is gone, so a killed worker's messages come
back within LEASE_TTL + RENEW_EVERY seconds, and a worker that lives is never redelivered
from, however long its requests run. A closing channel (warm shutdown, a lost connection)
gives its own back at once, as kombu restores its unacknowledged messages then. A message
can so be delivered twice (harmless: see `dispatchq.core.service`), never zero times.

Fair queueing: the queue list is the interactive lane (requests in no batch, and whatever
any Celery client pushes there); a batch's messages wait in a lane of their own
(`keys.lane`), registered per queue in a ring of tenants, each with a ring of its batches
(`dispatchq/store/lua/_lanes.lua`). A fetch that does not block
(`dispatchq/store/lua/fetch_fair.lua`) takes up to FETCH_MOST messages (fewer if kombu's
prefetch limit says so): from the interactive lane first, else one per turn from the next
tenant in turn (weighted round robin: a tenant takes `weights()[tenant]` messages, 1 unless
named, before the next one's turn) and that tenant's next batch in turn (a lone tenant's
lone batch gives them all at once), and moves them into the in-flight list in the same
step; for a message of the task a subclass names (`counted`) it also counts its delivery
in its request record, where the consumer would spend a round trip of its own on it (the
delivery cap, `dispatchq.broker.poison`). They are handed to kombu one after the other.
A message from a lane is kept in the in-flight
list as "\x1e<tenant>\x1e<batch>\x1e<item>", so that a requeue, a give-back or a reclaim
returns it to its own lane (registering the lane again); acknowledgement removes it as
stored. A retry of a batch's message is published to its lane (`lane_of`).

The non-blocking fetch follows a fetch that found a message; after one that found nothing
the interactive lane is waited on with `BLMOVE` for at most `brpop_timeout` (kombu's, 1 s),
after which the lanes are looked at again: a batch submitted to an idle worker waits at
most that long.

`BLMOVE` takes one source list: queue priorities are not used (one list per queue), and a
worker consuming several queues takes from one at a time, in turn.
The in-flight list of a consumer is per queue; its lane messages are in it, wrapped.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from queue import Empty
from typing import Any, NamedTuple

import structlog
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis import Redis, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from dispatchq.store import keys
from dispatchq.store.group import GroupCommit
from dispatchq.store.scripts import SCRIPTS

log = structlog.get_logger(__name__)

UNCOUNTABLE = -2
"""The fetch's deliveries when Redis refused to count them (`fetch_fair.lua`)."""
FETCH_REFUSED_PAUSE = 0.5
"""Seconds a worker waits after Redis refused a fetch before the next."""

FETCH_MOST = 16
"""Messages a fetch takes at most (`fetch_fair.lua`): one round trip and one script run for
up to this many, with the same fairness as one at a time."""

RENEW_EVERY = 5.0
"""Seconds between lease renewals and sweeps for the messages of consumers that are gone."""


class Counted(NamedTuple):
    """Whose deliveries a fetch counts, and where: the `deliveries` field of the request
    record (`dispatchq/store/lua/fetch_fair.lua`, owned by `dispatchq.store.records`)."""

    task: str
    record_prefix: str
    ttl: int


Fetched = tuple[str, str, bytes]
"""A message in an in-flight list: the list, the queue it came from, the item as stored
there (wrapped if it came from a batch's lane: `unwrap`)."""

LANE_MARK = b"\x1e"


def unwrap(stored: bytes) -> bytes:
    """The message of an in-flight item (as a lane's item is stored: see the docstring)."""
    if stored[:1] == LANE_MARK:
        parts = stored.split(LANE_MARK, 3)
        if len(parts) == 4:
            return parts[3]
    return stored


def _lrem_each(client: Redis) -> Callable[[Sequence[Fetched]], list[int]]:
    """A group of in-flight removals as one pipeline: an LREM each."""

    def run(items: Sequence[Fetched]) -> list[int]:
        pipe = client.pipeline(transaction=False)
        for inflight, _queue, item in items:
            pipe.lrem(inflight, 1, item)  # type: ignore[arg-type]
        return list(pipe.execute())

    return run


_open: weakref.WeakSet[ReliableChannel] = weakref.WeakSet()


def look_after_open_channels() -> None:
    """`ReliableChannel.look_after` for every open channel of this process."""
    for channel in list(_open):
        channel.look_after()


class NoConsumer(Exception):
    """A fetched message for a queue that nobody on this connection consumes any more."""


class InflightQoS(virtual.QoS):
    """kombu's QoS (prefetch, delivery tags) in memory only: an unacknowledged message stays
    in its consumer's in-flight list, so an acknowledgement is one `LREM`."""

    channel: ReliableChannel
    _delivered: Any

    def __init__(self, channel: ReliableChannel, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        self._held: dict[str, Fetched] = {}

    def append(self, message: Any, delivery_tag: str) -> None:
        fetched = self.channel.take_fetched()
        if fetched is not None:
            self._held[delivery_tag] = fetched
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        fetched = self._held.get(delivery_tag)
        if fetched is not None:
            self.channel.drop(fetched)
            self._held.pop(delivery_tag, None)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        fetched = self._held.get(delivery_tag)
        if fetched is not None:
            if requeue:
                self.channel.requeue(fetched)
            else:
                self.channel.drop(fetched)
            self._held.pop(delivery_tag, None)
        super().ack(delivery_tag)  # virtual.QoS.reject would restore through kombu's hash

    def restore_unacked(self) -> None:
        """Called as the channel closes (`basic_recover` is refused), which gives its whole
        in-flight list back: nothing is left to restore but the bookkeeping."""
        self._held.clear()
        self._delivered.clear()


class ReliableChannel(kombu_redis.Channel):
    # kombu's stubs want its Redis QoS here, a subclass of the virtual one that ours extends.
    QoS = InflightQoS  # type: ignore[assignment]
    priority_steps = [0]  # noqa: RUF012  (kombu's attribute: one list per queue)
    # kombu attributes its type stubs do not declare:
    _queue_cycle: Any
    _flush_brpop_reauth: Any
    _create_client: Any
    _closing: bool
    closed: bool
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumer_id = uuid.uuid4().hex
        self._lists: set[str] = set()  # the queues this consumer has an in-flight list for
        self._renew_at = 0.0
        self._fetching_from = ""
        self._fetch_command = "BLMOVE"
        self._fetch_script: str | None = None  # its SHA, once loaded
        self._poll_lanes = True  # the next fetch: the non-blocking script over every lane
        self._fetched: Fetched | None = None
        self.deliveries: int | None = None
        """While a message is handed over: its deliveries, if the fetch counted them
        (`UNCOUNTABLE`: Redis refused to count them)."""
        self._shared: Redis | None = None
        self._drops: tuple[Redis, GroupCommit[Fetched, int]] | None = None
        _open.add(self)

    @contextmanager
    def conn_or_acquire(self, client: Redis | None = None) -> Iterator[Redis]:
        """kombu builds a new redis-py client for every acknowledgement, in-flight removal
        and publish (a tenth of a worker's CPU at high rates); one client over the
        channel's pool serves them all, since a pooled client is safe to share between
        threads and greenlets. A new pool (after a fork or a close) gets a new client.

        A closed channel (kombu closes it when its connection is lost, and a publisher may
        still hold it) raises a connection error, which kombu's `ensure` answers by
        reconnecting and trying again on a new channel: kombu's own would fail on the
        closed connection with an AttributeError, and the publish of a task's retry with
        it."""
        if client is not None:
            yield client
            return
        if self.connection is None:
            raise RedisConnectionError("this channel is closed (its connection was lost)")
        pool = self.pool
        if self._shared is None or self._shared.connection_pool is not pool:
            self._shared = self._create_client()
        yield self._shared

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = self._fetching_from = queues[0]
        if queue not in self._lists:  # registered, with a lease, before its first fetch
            self._lists.add(queue)
            self._renew_at = 0.0
        self.look_after()
        inflight = keys.inflight(self.consumer_id, queue)
        if self._poll_lanes and self._fetch_script is None:
            with self.conn_or_acquire() as client:
                self._fetch_script = client.script_load(SCRIPTS["fetch_fair"])
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        if self._poll_lanes:
            self._fetch_command = "EVALSHA"
            counted = self.counted() or ("", "", 0)
            weights = [str(x) for pair in sorted(self.weights().items()) for x in pair]
            self.client.connection.send_command(
                "EVALSHA", self._fetch_script, 2, queue, inflight, *counted,
                self._fetch_most(), *keys.lane_keys(queue), *weights,
            )  # fmt: skip
        else:
            self._fetch_command = "BLMOVE"
            wait = self.brpop_timeout if timeout is None else timeout
            self.client.connection.send_command(
                "BLMOVE", queue, inflight, "RIGHT", "LEFT", wait or 0
            )

    def _brpop_read(self, **options: Any) -> bool:
        queue, command = self._fetching_from, self._fetch_command
        try:
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except NoScriptError:  # Redis restarted without it: load it again next time
                self._fetch_script, reply = None, None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except ReadOnlyError as err:  # a replica now (failover): reconnect, as for a loss
                self.client.connection.disconnect()
                raise RedisConnectionError(str(err)) from err
            except ResponseError as err:
                # Redis refused the fetch itself (out of memory, a key of another type): no
                # message was taken. Kombu would end the worker on it; wait, and try again.
                log.error("fetch.refused", queue=queue, error=str(err)[:200])
                time.sleep(FETCH_REFUSED_PAUSE)
                reply = None
            fetched: list[tuple[bytes, int]] = []
            if command == "EVALSHA" and reply:  # {item, deliveries, item, deliveries...}
                fetched = [(item, int(n)) for item, n in zip(reply[::2], reply[1::2], strict=True)]
            elif command == "BLMOVE" and reply is not None:
                fetched = [(reply, -1)]
            # After a message, or a blocking wait that ended empty: every lane again.
            self._poll_lanes = bool(fetched) or command == "BLMOVE"
            self._queue_cycle.rotate(queue)  # the next fetch from the next queue, if several
            if not fetched:
                raise Empty()
            inflight = keys.inflight(self.consumer_id, queue)
            for at, (item, deliveries) in enumerate(fetched):
                try:
                    self._hand_over((inflight, queue, item), deliveries)
                except BaseException:  # those not handed over go back, not left in flight
                    for rest, _ in fetched[at + 1 :]:
                        self.requeue((inflight, queue, rest))
                    raise
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _fetch_most(self) -> int:
        """Messages one fetch takes at most: FETCH_MOST, or fewer if kombu's prefetch
        limit leaves room for fewer."""
        room = self.qos.can_consume_max_estimate()
        return FETCH_MOST if room is None else max(1, min(FETCH_MOST, room))

    def counted(self) -> Counted | None:
        """Whose deliveries a fetch counts (None: nobody's)."""
        return None

    def weights(self) -> dict[str, int]:
        """Tenants' weights in the round robin between tenants (1 unless named)."""
        return {}

    def lane_of(self, message: Any) -> tuple[str, str] | None:
        """The (batch ID, tenant or '') whose lane a published message goes to; None: the
        queue. Here: none (a subclass that knows its task's arguments says)."""
        return None

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        lane = self.lane_of(message)
        if lane is None:
            super()._put(queue, message, **kwargs)
            return
        with self.conn_or_acquire() as client:
            client.eval(SCRIPTS["lane_push"], 0, *lane, dumps(message), *keys.lane_keys(queue))

    def _hand_over(self, fetched: Fetched, deliveries: int) -> None:
        """Deliver a fetched item to kombu. If kombu holds it (`InflightQoS.append` took
        it), it stays in the in-flight list until acknowledged; if no consumer wants it,
        it goes back to its queue; if it was disposed of (dead-lettered), it leaves the
        list. Should delivery fail, it stays, to be given back."""
        self._fetched = fetched
        self.deliveries = deliveries if deliveries >= 0 or deliveries == UNCOUNTABLE else None
        try:
            message = self._decode(unwrap(fetched[2]))
            if message is not None:
                self.connection._deliver(message, fetched[1])
        except NoConsumer:
            self.requeue(fetched)
        else:
            if self._fetched is not None:
                self.drop(fetched)
        finally:
            self._fetched = self.deliveries = None

    def take_fetched(self) -> Fetched | None:
        """The item being delivered, for the QoS that now holds it (once)."""
        fetched, self._fetched = self._fetched, None
        return fetched

    def drop(self, fetched: Fetched) -> None:
        """Out of the in-flight list (an acknowledgement): the drops of this channel's
        greenlets or threads at about the same time share one round trip
        (`dispatchq.store.group`), each returning once its own is done."""
        with self.conn_or_acquire() as client:
            if self._drops is None or self._drops[0] is not client:
                self._drops = (client, GroupCommit(_lrem_each(client)))
            self._drops[1].commit(fetched)

    def requeue(self, fetched: Fetched) -> None:
        """Back to its lane or queue, at the end fetched last (where kombu puts it)."""
        with self.conn_or_acquire() as client:
            client.eval(
                SCRIPTS["requeue"], 2, fetched[0], fetched[1], fetched[2],
                *keys.lane_keys(fetched[1]),
            )  # fmt: skip

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        raise NotImplementedError("messages are fetched by basic_consume only (broker.fetch)")

    def basic_recover(self, requeue: bool = False) -> None:
        raise NotImplementedError("unacknowledged messages go back when the channel closes")

    def _decode(self, item: bytes) -> Any:
        """The queue item as kombu's envelope; None for an item this channel disposed of."""
        return loads(bytes_to_str(item))

    def _member(self, queue: str) -> str:
        return f"{self.consumer_id}:{queue}"

    def look_after(self) -> None:
        """Every RENEW_EVERY seconds, from the fetch and from `dispatchq.broker.redelivery`'s timer:
        renew this consumer's lease, and give back to their queue the in-flight messages of
        consumers that are gone. A channel that never fetched has nothing to look after."""
        if not self._lists or self.closed or time.monotonic() < self._renew_at:
            return
        mine = {self._member(queue) for queue in self._lists}
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.lease(self.consumer_id), 1, ex=keys.LEASE_TTL)
            pipe.sadd(keys.INFLIGHT, *mine)
            pipe.smembers(keys.INFLIGHT)
            members = {bytes_to_str(m) for m in pipe.execute()[-1]}
            reclaim = client.register_script(SCRIPTS["reclaim"])
            for member in sorted(members - mine):
                consumer, _, queue = member.partition(":")
                lists = [keys.lease(consumer), keys.inflight(consumer, queue), queue]
                reclaim(keys=[*lists, keys.INFLIGHT], args=[member, "0", *keys.lane_keys(queue)])
        self._renew_at = time.monotonic() + RENEW_EVERY

    def close(self) -> None:
        _open.discard(self)
        if not self.closed and self._lists:
            self._closing = True
            errors: tuple[type[BaseException], ...] = (RedisError, *self.connection_errors)
            try:
                if self._in_poll:  # a fetch under way: its item into the list first
                    with suppress(Empty):
                        self._brpop_read()
                self._give_back()
            except errors as err:
                # The lease lapses instead, and another consumer gives them back.
                log.warning("inflight.give_back_failed", error=str(err))
        super().close()

    def _give_back(self) -> None:
        """Every message of this consumer's in-flight lists back to its queue, at once."""
        with self.conn_or_acquire() as client:
            reclaim = client.register_script(SCRIPTS["reclaim"])
            for queue in sorted(self._lists):
                lists = [keys.lease(self.consumer_id), keys.inflight(self.consumer_id, queue)]
                args = [self._member(queue), "1", *keys.lane_keys(queue)]
                reclaim(keys=[*lists, queue, keys.INFLIGHT], args=args)
            client.delete(keys.lease(self.consumer_id))


class ReliableTransport(kombu_redis.Transport):
    Channel = ReliableChannel

    def _reject_inbound_message(self, raw_message: Any) -> None:
        # kombu would requeue it through some channel's unacknowledged-message hash; the
        # channel that fetched it puts it back from its in-flight list instead.
        raise NoConsumer()
