"""Simulated clients: they receive allocations, run them (runner.py) and report back.

- An allocation placed on a node is received by its client after `--start-time`; an
  `AllocRun` then runs its tasks. Runners mark themselves dirty; every dirty alloc is
  written in one `AllocationUpdated` entry per loop iteration (a client's batched
  updates), with its TaskStates and the ClientStatus derived from them. There is one
  update per task-state change (a task's events of the same instant share it).
- A failed allocation that its reschedule policy allows gets an `alloc-failure`
  evaluation in the same entry (nomad/node_endpoint.go UpdateAlloc).
- Capacity is held on a node from placement until the alloc is terminal.
- All timers share one heap and one loop handle (`Timers`), so 20,000 running children
  cost 20,000 heap entries, not 20,000 asyncio handles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from dispatchq.nomadsim.config import SimConfig
from dispatchq.nomadsim.jsonshape import now_ns
from dispatchq.nomadsim.model import TERMINAL_CLIENT, Alloc, Node, evolve
from dispatchq.nomadsim.runner import AllocRun
from dispatchq.nomadsim.state import Store, Write
from dispatchq.nomadsim.timers import Timers

#: Called in the update's write with each alloc that became failed.
FailedHook = Callable[[Write, Alloc], None]


class Clients:
    def __init__(self, store: Store, config: SimConfig, on_freed: Callable[[], None],
                 on_failed: FailedHook) -> None:
        self.store = store
        self.config = config
        self.on_freed = on_freed
        self.on_failed = on_failed
        self.loop = asyncio.get_running_loop()
        self.timers = Timers(self.loop)
        self.holding: dict[str, tuple[Node, int, int]] = {}
        self.runs: dict[str, AllocRun] = {}
        self.dirty: dict[AllocRun, None] = {}
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

    # -- what the scheduler tells the clients ------------------------------------------

    def place(self, alloc_id: str) -> None:
        """A new alloc: its client receives it after the start time."""
        self.timers.at(self.loop.time() + self.config.start_time, self._receive, alloc_id)

    def stop(self, alloc_id: str) -> None:
        """The alloc's DesiredStatus became stop: its client kills it (after the start
        time, the time a client takes to hear of it)."""
        self.timers.at(self.loop.time() + self.config.start_time, self._stop, alloc_id)

    def node_down(self, node_id: str) -> list[str]:
        """The node's client is gone: its runners stop without reporting anything more."""
        gone = [a for a, (node, _, _) in self.holding.items() if node.id == node_id]
        for alloc_id in gone:
            run = self.runs.pop(alloc_id, None)
            if run is not None:
                run.finished = True
                self.dirty.pop(run, None)
        return gone

    def _receive(self, alloc_id: str) -> None:
        alloc = self.store.allocs.get(alloc_id)
        if alloc is None or alloc.client_status in TERMINAL_CLIENT or alloc_id in self.runs:
            return
        node = self.holding.get(alloc_id)
        if node is None:
            return
        group = next((g for g in alloc.job["TaskGroups"] if g["Name"] == alloc.task_group),
                     None)
        if group is None:
            return
        run = self.runs[alloc_id] = AllocRun(self, alloc, group, node[0].datacenter)
        if alloc.desired_status != "run":
            run.stop_unstarted()
            return
        run.receive(alloc, group.get("MaxRunDuration"))

    def _stop(self, alloc_id: str) -> None:
        run = self.runs.get(alloc_id)
        if run is not None:
            run.kill()
            return
        alloc = self.store.allocs.get(alloc_id)
        if alloc is not None and alloc.client_status == "pending":
            self._receive(alloc_id)

    # -- updates -----------------------------------------------------------------------

    def mark(self, run: AllocRun) -> None:
        self.dirty[run] = None
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every dirty alloc as one entry."""
        self.flush_pending = False
        dirty, self.dirty = self.dirty, {}
        if dirty:
            self._write(dirty)

    def write_now(self, run: AllocRun) -> None:
        """Write one dirty alloc at once (before another change of its task states)."""
        self.dirty.pop(run, None)
        self._write((run,))

    def _write(self, runs: Iterable[AllocRun]) -> None:
        freed = False
        now = now_ns()
        store = self.store
        with store.write("AllocationUpdated") as w:
            for run in runs:
                run.state_changed = 0.0
                if run.finished:
                    continue
                alloc = store.allocs.get(run.alloc_id)
                if alloc is None or alloc.client_status == "lost":
                    self._drop(run)
                    continue
                status, text = run.client_status()
                terminal = status in TERMINAL_CLIENT
                changed = evolve(alloc, client_status=status, client_description=text,
                                 task_states=run.task_states(terminal), modify_time=now,
                                 last_event=run.last_event() if terminal else 0)
                w.put_alloc(changed)
                if terminal:
                    freed = self.release(alloc.id) or freed
                if run.all_dead:
                    self._drop(run)
                if status == "failed" and alloc.client_status != "failed":
                    self.on_failed(w, changed)
        if freed:
            self.on_freed()

    def _drop(self, run: AllocRun) -> None:
        run.finished = True
        self.runs.pop(run.alloc_id, None)
