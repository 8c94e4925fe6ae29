"""The event broker behind `GET /v1/event/stream`.

Every committed write publishes one batch (all events at one index). Batches are kept
in a bounded deque for replay with `?index=`; each subscriber has a bounded backlog, and
a subscriber that falls that far behind is dropped, as Nomad drops slow readers.
Events hold references to immutable state objects and are rendered only when sent, once
however many streams send them (`encoded`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from dispatchq.nomadsim.jsonshape import dumps
from dispatchq.nomadsim.model import Alloc, Eval, JsonObj, render_job

SUBSCRIBER_QUEUE = 4096


@dataclass(slots=True)
class Event:
    topic: str
    type: str
    key: str
    namespace: str
    filter_keys: list[str] | None
    index: int
    obj: Any
    _encoded: bytes | None = field(default=None, repr=False, compare=False)

    def encoded(self) -> bytes:
        """The event's JSON, built on first use and shared by every stream that sends it."""
        if self._encoded is None:
            self._encoded = dumps(self.render())
        return self._encoded

    def render(self) -> JsonObj:
        """The event as JSON values (an allocation as its encoded JSON, a Fragment)."""
        if isinstance(self.obj, Eval):
            payload: JsonObj = {"Evaluation": self.obj.render()}
        elif self.topic == "Node":
            payload = {"Node": self.obj}
        elif isinstance(self.obj, Alloc):
            payload = {"Allocation": orjson.Fragment(self.obj.event_json())}
        else:
            payload = {"Job": render_job(self.obj)}
        return {
            "Topic": self.topic,
            "Type": self.type,
            "Key": self.key,
            "Namespace": self.namespace,
            "FilterKeys": self.filter_keys,
            "Index": self.index,
            "Payload": payload,
        }


@dataclass(slots=True)
class Batch:
    index: int
    events: list[Event]


@dataclass(eq=False)
class Subscription:
    """What a stream asked for: topic -> keys ('*' = all), and a namespace ('*' = all).

    Batches wait in `pending` (None: the subscriber was dropped) until the stream takes
    them; a stream with nothing pending parks on `waiter`, which `wake` resolves.
    """

    topics: dict[str, set[str]]
    namespace: str
    pending: deque[Batch | None] = field(default_factory=deque)
    waiter: asyncio.Future[None] | None = None
    #: Set by `EventBroker.cut_all`: the stream drops its connection mid-body.
    cut: bool = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def matches(self, event: Event) -> bool:
        # a node's events are in no namespace: every subscriber's
        if event.namespace and self.namespace not in ("*", event.namespace):
            return False
        keys = self.topics.get(event.topic) or self.topics.get("*")
        if keys is None:
            return False
        if "*" in keys or event.key in keys:
            return True
        return any(k in keys for k in event.filter_keys or ())

    def filter(self, batch: Batch) -> list[Event]:
        return [e for e in batch.events if self.matches(e)]


class EventBroker:
    """Publishing queues a batch for every subscriber at once; the streams are woken by
    one callback in the next loop iteration. By then the callbacks already due have run
    (the scheduler woken by the same dispatch, the client updates flushed with it) and
    published their batches too, so a stream sends them in one write instead of one
    write (and one wake-up) each: the same lines, fewer system calls."""

    def __init__(self, buffer_size: int) -> None:
        self.buffer: deque[Batch] = deque(maxlen=max(1, buffer_size))
        self.subscribers: set[Subscription] = set()
        self._waking = False

    def publish(self, batch: Batch) -> None:
        self.buffer.append(batch)
        if not self.subscribers:
            return
        for sub in list(self.subscribers):
            if len(sub.pending) < SUBSCRIBER_QUEUE:
                sub.pending.append(batch)
            else:
                self.subscribers.discard(sub)
                sub.pending.clear()
                sub.pending.append(None)
                sub.wake()
        if not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_soon(self._wake_all)

    def _wake_all(self) -> None:
        self._waking = False
        for sub in self.subscribers:
            sub.wake()

    def subscribe(self, sub: Subscription, index: int) -> list[Batch]:
        """Register sub and return the buffered batches it should replay first."""
        self.subscribers.add(sub)
        return [b for b in self.buffer if b.index >= index]

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def cut_all(self) -> int:
        """Every open stream drops its connection at once, without ending its body (as
        a network cut or an agent restart looks to a client); returns how many."""
        subs = list(self.subscribers)
        self.subscribers.clear()
        for sub in subs:
            sub.cut = True
            sub.pending.clear()
            sub.pending.append(None)
            sub.wake()
        return len(subs)
