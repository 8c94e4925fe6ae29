"""`GET /v1/event/stream` (§10): ndjson batches, `{}` heartbeats, replay by index."""

from __future__ import annotations

import asyncio

from nomadsim.events import Event, Subscription
from nomadsim.httpcore import ApiError, Ctx
from nomadsim.httpserver import Stream
from nomadsim.jsonshape import go_quote

HEARTBEAT = b"{}\n"


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
    if "*" in topics or namespace == "*":
        return False
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


async def _follow(heartbeat: float, sub: Subscription, response: Stream) -> None:
    """Send batches as they come; those already waiting go out in one write (a line each),
    which under load is most of them."""
    while True:
        try:
            async with asyncio.timeout(heartbeat):
                batch = await sub.queue.get()
        except TimeoutError:
            await response.write(HEARTBEAT)
            continue
        lines: list[bytes] = []
        while batch is not None:
            events = sub.filter(batch)
            if events:
                lines.append(_line(batch.index, events))
            if sub.queue.empty():
                break
            batch = sub.queue.get_nowait()
        if lines:
            await response.write(b"".join(lines))
        if batch is None:
            return


async def _send(response: Stream, index: int, events: list[Event]) -> None:
    await response.write(_line(index, events))


def _line(index: int, events: list[Event]) -> bytes:
    """One batch as an ndjson line, from the events' shared encodings."""
    return b'{"Index":%d,"Events":[%b]}\n' % (index, b",".join(e.encoded() for e in events))
