"""Nodes going down and up.

- `node_down` (POST /_sim/nodes/<id>/down): the node stops taking allocations, its
  client stops reporting, and every job with a live alloc on it gets a `node-update`
  evaluation (NodeID set); the reconciler (reconcile.py) marks those allocs `lost` and
  places replacements with `PreviousAllocation`, as Nomad's node heartbeat expiry does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatchq.nomadsim.model import Node
from dispatchq.nomadsim.state import JobKey

if TYPE_CHECKING:
    from dispatchq.nomadsim.scheduler import Scheduler


def find_node(scheduler: Scheduler, ref: str) -> Node | None:
    for node in scheduler.nodes:
        if ref in (node.id, node.name):
            return node
    return None


def node_down(scheduler: Scheduler, node: Node) -> list[str]:
    """Take the node down; answers the evaluations created."""
    node.status = "down"
    scheduler.down.add(node.id)
    store = scheduler.store
    gone = scheduler.clients.node_down(node.id)
    jobs: dict[JobKey, None] = {}
    for alloc_id in gone:
        scheduler.clients.release(alloc_id)
        alloc = store.allocs.get(alloc_id)
        if alloc is not None and not alloc.terminal:
            jobs[(alloc.namespace, alloc.job_id)] = None
    created = []
    with store.write("EvaluationUpdated") as w:
        for key in jobs:
            job = store.jobs.get(key)
            if job is None:
                continue
            ev = scheduler.new_eval(job, "node-update", w.index)
            ev.node_id = node.id
            w.put_eval(ev)
            created.append(ev.id)
    for eval_id in created:
        scheduler.enqueue(eval_id)
    return created


def node_up(scheduler: Scheduler, node: Node) -> None:
    node.status = "ready"
    scheduler.down.discard(node.id)
    scheduler.capacity_freed()
