"""Simulated clients: allocations go pending -> running -> complete (or failed).

Task Config `run_for` (a Go duration) and `exit_code` behave like Nomad's mock driver;
batch allocs without `run_for` run for the configured run time, service and system
allocs run until stopped. Updates due in the same loop iteration are written as one
`AllocationUpdated` entry, like a client's batched updates. Capacity is held on a node
from placement until the alloc is terminal.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from nomadsim.config import SimConfig
from nomadsim.jsonshape import now_ns
from nomadsim.model import Node, evolve
from nomadsim.state import Store

CLIENT_TEXT = {
    "running": "Tasks are running",
    "complete": "All tasks have completed",
    "failed": "Failed tasks",
}


class Clients:
    def __init__(self, store: Store, config: SimConfig, on_freed: Callable[[], None]) -> None:
        self.store = store
        self.config = config
        self.on_freed = on_freed
        self.holding: dict[str, tuple[Node, int, int]] = {}
        self.updates: list[tuple[str, str]] = []
        self.timers: dict[float, deque[tuple[float, str, str]]] = {}
        self.flush_pending = False

    def hold(self, alloc_id: str, node: Node, cpu: int, memory_mb: int) -> None:
        node.used_cpu += cpu
        node.used_memory_mb += memory_mb
        self.holding[alloc_id] = (node, cpu, memory_mb)

    def release(self, alloc_id: str) -> bool:
        held = self.holding.pop(alloc_id, None)
        if held is None:
            return False
        node, cpu, memory = held
        node.used_cpu -= cpu
        node.used_memory_mb -= memory
        return True

    def later(self, delay: float, alloc_id: str, status: str) -> None:
        """Deliver a client status after delay. Entries with the same delay are due in
        the order they were added, so each delay has a FIFO and at most one loop timer
        (much cheaper than one asyncio timer per alloc transition)."""
        loop = asyncio.get_running_loop()
        fifo = self.timers.get(delay)
        if fifo is None:
            fifo = self.timers[delay] = deque()
        fifo.append((loop.time() + delay, alloc_id, status))
        if len(fifo) == 1:
            loop.call_at(fifo[0][0], self._fire, delay)

    def _fire(self, delay: float) -> None:
        fifo = self.timers[delay]
        loop = asyncio.get_running_loop()
        now = loop.time()
        while fifo and fifo[0][0] <= now:
            _, alloc_id, status = fifo.popleft()
            self.updates.append((alloc_id, status))
        if fifo:
            loop.call_at(fifo[0][0], self._fire, delay)
        else:
            del self.timers[delay]
        if self.updates and not self.flush_pending:
            self.flush_pending = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every due client update as one entry."""
        self.flush_pending = False
        updates, self.updates = self.updates, []
        freed = False
        now = now_ns()
        with self.store.write("AllocationUpdated") as w:
            for alloc_id, wanted in updates:
                alloc = self.store.allocs.get(alloc_id)
                if alloc is None or alloc.client_status in ("complete", "failed", "lost"):
                    continue
                if wanted == "running" and alloc.desired_status != "run":
                    continue
                status = wanted
                if wanted == "complete" and alloc.desired_status == "run":
                    status = alloc.outcome
                changed = evolve(
                    alloc,
                    client_status=status,
                    client_description=CLIENT_TEXT[status],
                    modify_time=now,
                    failed=status == "failed",
                )
                if status == "running":
                    changed.started_at = now
                    run_for = alloc.run_for
                    if run_for is not None:
                        run_for = self.config.run_time if run_for < 0 else run_for
                        self.later(run_for, alloc_id, "complete")
                else:
                    changed.finished_at = now
                    freed = self.release(alloc_id) or freed
                w.put_alloc(changed)
        if freed:
            self.on_freed()
