"""`GET /v1/event/stream`: ndjson batches, `{}` heartbeats, replay by index."""

from __future__ import annotations

import asyncio

from dispatchq.nomadsim.events import Event, Subscription
from dispatchq.nomadsim.httpcore import ApiError, Ctx
from dispatchq.nomadsim.httpserver import Stream
from dispatchq.nomadsim.jsonshape import go_quote

HEARTBEAT = b"{}\n"
#: How early a loop timer may fire (libuv rounds its deadlines to milliseconds).
CLOCK_SLACK = 0.002


def parse_topics(values: list[str]) -> dict[str, set[str]]:
    if not values:
        return {"*": {"*"}}
    topics: dict[str, set[str]] = {}
    for value in values:
        parts = value.split(":")
        if len(parts) == 1:
            topic, key = parts[0], "*"
        elif len(parts) == 2:
            topic, key = parts
        else:
            raise ApiError(
                400,
                "Invalid topic query: error parsing topics: Invalid key value pair for topic, "
                f"topic: {value}",
            )
        topics.setdefault(topic, set()).add(key)
    return topics


def _allowed(ctx: Ctx, topics: dict[str, set[str]], namespace: str) -> bool:
    authz = ctx.sim.acl.resolve(ctx.token)
    if authz is None:
        return False
    if authz.management:
        return True
    if "*" in topics or namespace == "*" or "Node" in topics:
        return False  # (node policies are not modelled: the Node topic is management's)
    return authz.allows(namespace, "read-job")


async def event_stream(ctx: Ctx) -> Stream:
    if ctx.method != "GET":
        raise ApiError(405, "Invalid method")
    raw_index = ctx.query.get("index", "0") or "0"
    if not (raw_index.isascii() and raw_index.isdigit()) or int(raw_index) >= 2**64:
        raise ApiError(
            400,
            f"Unable to parse index: strconv.ParseUint: parsing {go_quote(raw_index)}: "
            "invalid syntax",
        )
    topics = parse_topics(ctx.query.getall("topic", []))
    namespace = ctx.namespace
    headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
    if not _allowed(ctx, topics, namespace):
        # From v2.0 the connection is hijacked and 200 written before the ACL check, so a
        # denied stream is an empty 200 that closes.
        ctx.request.keep_alive = False
        response = ctx.request.stream(200, headers)
        response.write_eof()
        return response
    sim = ctx.sim
    sub = Subscription(topics, namespace)
    backlog = sim.store.broker.subscribe(sub, int(raw_index))
    response = ctx.request.stream(200, headers)
    sim.streams += 1
    try:
        await response.write(HEARTBEAT)
        for batch in backlog:
            events = sub.filter(batch)
            if events:
                await _send(response, batch.index, events)
        await _follow(sim.config.heartbeat, sub, response)
    except ConnectionError:
        return response
    finally:
        sim.streams -= 1
        sim.store.broker.unsubscribe(sub)
    response.write_eof()
    return response


class _Heartbeat:
    """`{}` due when no batch came for `heartbeat` seconds: one loop timer that, when it
    fires after batches were sent, is set again for `heartbeat` after the last wait
    began; one timer per heartbeat period rather than an `asyncio.timeout` per batch."""

    __slots__ = ("due", "heartbeat", "loop", "since", "sub", "timer")

    def __init__(self, heartbeat: float, sub: Subscription) -> None:
        self.loop = asyncio.get_running_loop()
        self.heartbeat = heartbeat
        self.sub = sub
        self.due = False
        self.arm()

    def arm(self) -> None:
        self.since = self.loop.time()
        self.timer = self.loop.call_at(self.since + self.heartbeat, self._fire)

    def _fire(self) -> None:
        deadline = self.since + self.heartbeat
        if deadline > self.loop.time() + CLOCK_SLACK:
            self.timer = self.loop.call_at(deadline, self._fire)
        else:
            self.due = True
            self.sub.wake()


async def _follow(heartbeat: float, sub: Subscription, response: Stream) -> None:
    """Send batches as they come, all those pending in one write (a line each), and a
    heartbeat when none came for a while."""
    beat = _Heartbeat(heartbeat, sub)
    loop = beat.loop
    pending = sub.pending
    try:
        while True:
            if not pending:
                if beat.due:
                    beat.due = False
                    await response.write(HEARTBEAT)
                    beat.arm()
                    continue
                sub.waiter = loop.create_future()
                await sub.waiter
                continue
            lines: list[bytes] = []
            while pending:
                batch = pending.popleft()
                if batch is None:
                    if sub.cut:
                        response.abort()
                        raise ConnectionResetError("the stream was cut (/_sim/event-stream/cut)")
                    if lines:
                        await response.write(b"".join(lines))
                    return
                events = sub.filter(batch)
                if events:
                    lines.append(_line(batch.index, events))
            if lines:
                await response.write(b"".join(lines))
            if beat.due:  # it came due while these were sent: the wait starts now
                beat.due = False
                beat.arm()
            else:
                beat.since = loop.time()
    finally:
        beat.timer.cancel()


async def _send(response: Stream, index: int, events: list[Event]) -> None:
    await response.write(_line(index, events))


def _line(index: int, events: list[Event]) -> bytes:
    """One batch as an ndjson line, from the events' shared encodings."""
    return b'{"Index":%d,"Events":[%b]}\n' % (index, b",".join(e.encoded() for e in events))
