"""Allocations moved off on purpose: an operator's stop, and a node drain
(nomad/alloc_endpoint.go Stop, nomad/node_endpoint.go UpdateDrain, nomad/drainer).

- `POST`/`PUT /v1/allocation/<id>/stop`: the allocation's DesiredTransition.Migrate is set
  and an `alloc-stop` evaluation made; the reconciler (reconcile.py) stops it (`alloc is
  being migrated`; its client kills the tasks) and places a replacement with
  `PreviousAllocation`. Answers `{"EvalID", "Index"}`; an unknown allocation is 404.
- `POST`/`PUT /v1/node/<id>/drain` with `{"DrainSpec": {"Deadline": ns,
  "IgnoreSystemJobs": bool} | null, "MarkEligible": bool, "Meta": {...}}`: the node is
  marked ineligible (it takes no new allocations) and drains. Allocations of service jobs
  are migrated at once; those of batch jobs keep running until the deadline (`Deadline`
  > 0, in nanoseconds: not scaled by `--time-scale`, it is an operator's, not a job's),
  and are migrated then (`node-drain` evaluations), as Nomad's drainer does; a negative
  deadline migrates everything at once (`nomad node drain -force`), 0 waits for batch
  allocations to end by themselves (`-no-deadline`). A null DrainSpec cancels the drain;
  `MarkEligible` makes the node eligible again. Answers `{"NodeModifyIndex", "EvalIDs",
  "EvalCreateIndex", "Index"}`, and the change is a `NodeDrain` event of the event
  stream's Node topic (the node as `GET /v1/node/<id>` answers it). Once nothing live is
  left on it, the drain is done (DrainStrategy null; the node stays ineligible).
- `GET /v1/node/<id>`: the node (ID, Name, Datacenter, Status, SchedulingEligibility,
  Drain, DrainStrategy, indexes), 404 `node not found`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dispatchq.nomadsim.godecode import BOOL, INT, STRING, STRING_MAP, struct
from dispatchq.nomadsim.httpcore import ApiError, Ctx
from dispatchq.nomadsim.httpserver import Response
from dispatchq.nomadsim.jsonshape import now_ns, rfc3339
from dispatchq.nomadsim.model import Alloc, JsonObj, Node, evolve
from dispatchq.nomadsim.nodes import find_node

if TYPE_CHECKING:
    from dispatchq.nomadsim.scheduler import Scheduler

DRAIN_REQUEST = struct(
    "api.NodeUpdateDrainRequest",
    NodeID=STRING,
    DrainSpec=struct("api.DrainSpec", Deadline=INT, IgnoreSystemJobs=BOOL),
    MarkEligible=BOOL,
    Meta=STRING_MAP,
)
ZERO_TIME = "0001-01-01T00:00:00Z"


def migrate(
    scheduler: Scheduler, allocs: list[Alloc], trigger: str, node_id: str = ""
) -> list[str]:
    """Mark `allocs` to migrate, one evaluation per job (`trigger`); answers their IDs."""
    store = scheduler.store
    live = [a for a in allocs if not a.terminal and not a.migrate]
    if not live:
        return []
    created = []
    with store.write("AllocationUpdateDesiredTransition") as w:
        jobs: dict[tuple[str, str], None] = {}
        for alloc in live:
            w.put_alloc(evolve(alloc, migrate=True, modify_time=now_ns()))
            jobs[(alloc.namespace, alloc.job_id)] = None
        for key in jobs:
            job = store.jobs.get(key)
            if job is None:
                continue
            ev = scheduler.new_eval(job, trigger, w.index)
            ev.node_id = node_id
            w.put_eval(ev, "EvaluationUpdated")
            created.append(ev.id)
    for eval_id in created:
        scheduler.enqueue(eval_id)
    return created


async def alloc_stop(ctx: Ctx, alloc_id: str) -> Response:
    if ctx.method not in ("POST", "PUT"):
        raise ApiError(405, "Invalid method")
    scheduler = ctx.sim.scheduler
    alloc = scheduler.store.allocs.get(alloc_id)
    if alloc is None:
        raise ApiError(404, "alloc not found")
    ctx.require(alloc.namespace, "alloc-lifecycle")
    job = scheduler.store.jobs.get((alloc.namespace, alloc.job_id))
    if job is None:
        raise ApiError(404, "job not found")
    created = migrate(scheduler, [alloc], "alloc-stop")
    if not created:  # terminal, or moving already: the evaluation finds nothing to do
        with scheduler.store.write("EvaluationUpdated") as w:
            ev = scheduler.new_eval(job, "alloc-stop", w.index)
            w.put_eval(ev)
        scheduler.enqueue(ev.id)
        created = [ev.id]
    index = scheduler.store.index
    return ctx.respond({"EvalID": created[0], "Index": index}, index, read=False)


def node_json(scheduler: Scheduler, node: Node) -> JsonObj:
    _done_if_empty(scheduler, node)
    return {
        "ID": node.id,
        "Name": node.name,
        "Datacenter": node.datacenter,
        "NodeClass": "",
        "NodePool": "default",
        "Status": node.status,
        "SchedulingEligibility": "eligible" if node.eligible else "ineligible",
        "Drain": node.drain is not None,
        "DrainStrategy": node.drain,
        "CreateIndex": 1,
        "ModifyIndex": node.modify_index,
    }


async def node_route(ctx: Ctx, rest: str) -> Response:
    node_ref, _, action = rest.partition("/")
    scheduler = ctx.sim.scheduler
    node = find_node(scheduler, node_ref)
    if action == "" and ctx.method == "GET":
        ctx.authz()
        if node is None:
            return ctx.not_found("node not found", scheduler.store.index)
        return ctx.respond(node_json(scheduler, node), node.modify_index)
    if action != "drain":
        return ctx.not_found("404 page not found", scheduler.store.index)
    if ctx.method not in ("POST", "PUT"):
        raise ApiError(405, "Invalid method")
    body = await ctx.decode(DRAIN_REQUEST)
    ctx.require_management()
    if node is None:
        raise ApiError(404, "node not found")
    return ctx.respond(drain(scheduler, node, body), scheduler.store.index, read=False)


def drain(scheduler: Scheduler, node: Node, body: dict[str, Any]) -> JsonObj:
    """Start, change or cancel the node's drain (module doc); the answer's JSON."""
    spec = body.get("DrainSpec")
    if spec is None:
        with scheduler.store.write("NodeDrain") as w:
            node.modify_index = w.index
            node.drain = None
            if body.get("MarkEligible"):
                node.eligible = True
            w.put_node(node_json(scheduler, node))
        if body.get("MarkEligible"):
            scheduler.capacity_freed()
        index = node.modify_index
        return {"NodeModifyIndex": index, "EvalIDs": [], "EvalCreateIndex": 0, "Index": index}
    deadline = int(spec.get("Deadline") or 0)
    now = now_ns()
    with scheduler.store.write("NodeDrain") as w:
        node.modify_index = w.index
        node.eligible = False
        node.drain = {
            "DrainSpec": {"Deadline": deadline,
                          "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs"))},
            "ForceDeadline": rfc3339(now + deadline) if deadline > 0 else ZERO_TIME,
            "Deadline": deadline,
            "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs")),
            "StartedAt": rfc3339(now),
        }  # fmt: skip
        w.put_node(node_json(scheduler, node))
    index = node.modify_index
    live = _live_on(scheduler, node)
    batch = [a for a in live if a.job["Type"] in ("batch", "sysbatch")]
    others = [a for a in live if a not in batch]
    evals = migrate(scheduler, others, "node-drain", node.id)
    if deadline < 0:
        evals += migrate(scheduler, batch, "node-drain", node.id)
    elif deadline > 0:
        started = node.drain["StartedAt"]
        asyncio.get_running_loop().call_later(deadline / 1e9, _deadline, scheduler, node,
                                              started)  # fmt: skip
    _done_if_empty(scheduler, node)
    return {"NodeModifyIndex": index, "EvalIDs": evals, "EvalCreateIndex": index,
            "Index": scheduler.store.index}  # fmt: skip


def _live_on(scheduler: Scheduler, node: Node) -> list[Alloc]:
    return [a for a in scheduler.store.allocs.values() if a.node_id == node.id and not a.terminal]


def _deadline(scheduler: Scheduler, node: Node, started: str) -> None:
    """The drain's deadline: what still runs on the node is migrated."""
    if node.drain is None or node.drain.get("StartedAt") != started:
        return  # cancelled, or another drain since
    migrate(scheduler, _live_on(scheduler, node), "node-drain", node.id)
    _done_if_empty(scheduler, node)


def _done_if_empty(scheduler: Scheduler, node: Node) -> None:
    if node.drain is not None and all(a.migrate for a in _live_on(scheduler, node)):
        node.drain = None
