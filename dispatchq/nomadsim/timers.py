"""Callbacks at loop times, from one heap: every simulated client's timers (task starts,
run_for, restart delays, kills) cost one armed asyncio timer, not one each."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Timers:
    """Callbacks at loop times, from a heap with one armed loop timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = itertools.count()
        self.armed: float | None = None
        self.handle: asyncio.TimerHandle | None = None

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.heap, (when, next(self.seq), fn, args))
        if self.armed is None or when < self.armed:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.armed = self.handle = None
        heap = self.heap
        limit = self.loop.time() + 0.0005
        while heap and heap[0][0] <= limit:
            _, _, fn, args = heapq.heappop(heap)
            fn(*args)
        if heap and (self.armed is None or heap[0][0] < self.armed):
            self._arm(heap[0][0])

    def __len__(self) -> int:
        return len(self.heap)
