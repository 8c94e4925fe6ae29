"""Evaluations, allocations, namespaces, status and agent endpoints."""

from __future__ import annotations

from typing import Any

from dispatchq.nomadsim.drain import alloc_stop, node_json
from dispatchq.nomadsim.filterexpr import FilterError, Predicate, compile_filter
from dispatchq.nomadsim.godecode import BOOL, STRING, struct
from dispatchq.nomadsim.httpcore import ApiError, Ctx, paginate
from dispatchq.nomadsim.httpserver import Response
from dispatchq.nomadsim.model import Eval, JsonObj
from dispatchq.nomadsim.sim import namespace_json

NAMESPACE = struct("api.Namespace", Name=STRING, Description=STRING)
SCHEDULER_CONFIG = struct(
    "structs.SchedulerConfiguration", RejectJobRegistration=BOOL, SchedulerAlgorithm=STRING
)
ALLOC_STUB_FIELDS = dict.fromkeys(
    ("ID", "EvalID", "Name", "Namespace", "NodeID", "NodeName", "JobID", "JobType", "JobVersion",
     "TaskGroup", "AllocatedResources", "DesiredStatus", "DesiredDescription", "ClientStatus",
     "ClientDescription", "DesiredTransition", "TaskStates", "DeploymentStatus",
     "FollowupEvalID", "RescheduleTracker", "PreemptedAllocations", "PreemptedByAllocation",
     "CreateIndex", "ModifyIndex", "CreateTime", "ModifyTime")
)


def _filter(ctx: Ctx, sample: JsonObj) -> Predicate | None:
    text = ctx.query.get("filter", "")
    if not text:
        return None
    try:
        return compile_filter(text, set(sample))
    except FilterError as exc:
        raise ApiError(500, f"failed to create result paginator: {exc}") from None


def _related(evals: dict[str, Eval], ev: Eval) -> list[JsonObj]:
    """Evals linked through NextEval/PreviousEval/BlockedEval, the eval itself excluded."""
    seen = {ev.id}
    todo = [ev]
    found: list[Eval] = []
    while todo:
        current = todo.pop()
        for link in (current.next_eval, current.previous_eval, current.blocked_eval):
            other = evals.get(link)
            if link and other is not None and link not in seen:
                seen.add(link)
                found.append(other)
                todo.append(other)
    for other in evals.values():
        if other.id not in seen and ev.id in (other.previous_eval, other.next_eval,
                                               other.blocked_eval):
            seen.add(other.id)
            found.append(other)
    return [e.stub() for e in sorted(found, key=lambda e: e.create_index)]


async def evaluation_route(ctx: Ctx, rest: str) -> Response:
    if ctx.method != "GET":
        raise ApiError(405, "Invalid method")
    ctx.require(ctx.namespace, "read-job")
    store = ctx.sim.store
    if rest.endswith("/allocations"):
        eval_id = rest[: -len("/allocations")]

        def allocs() -> tuple[Any, int]:
            return [a.stub() for a in store.eval_allocs(eval_id)], store.table_index("allocs")

        value, index = await ctx.blocking(("eval_allocs", eval_id), allocs)
        return ctx.respond(value, index)
    related = ctx.flag("related")

    def query() -> tuple[Any, int]:
        ev = store.evals.get(rest)
        if ev is None:
            return None, store.table_index("evals")
        return ev.render(_related(store.evals, ev) if related else None), ev.modify_index

    value, index = await ctx.blocking(("eval", rest), query)
    if value is None:
        return ctx.not_found("eval not found", index)
    return ctx.respond(value, index)


async def evaluations_list(ctx: Ctx) -> Response:
    if ctx.method != "GET":
        raise ApiError(405, "Invalid method")
    namespace = ctx.namespace
    ctx.require(namespace, "read-job")
    store = ctx.sim.store
    prefix = ctx.query.get("prefix", "")
    job_id = ctx.query.get("job", "")
    status = ctx.query.get("status", "")
    predicate = _filter(ctx, Eval("", "", 0, "", "", "", 0, "", 0, 0, 0, 0).render())

    def query() -> tuple[Any, int]:
        items = []
        for ev in store.evals.values():
            if namespace not in ("*", ev.namespace) or not ev.id.startswith(prefix):
                continue
            if (job_id and ev.job_id != job_id) or (status and ev.status != status):
                continue
            rendered = ev.render()
            if predicate is None or predicate(rendered):
                items.append((ev.id, rendered))
        items.sort(key=lambda pair: pair[0])
        return paginate(ctx, items), store.table_index("evals")

    (page, next_token), index = await ctx.blocking(("evals",), query)
    return ctx.respond_page(page, next_token, index)


async def allocation_route(ctx: Ctx, alloc_id: str) -> Response:
    if alloc_id.endswith("/stop"):
        return await alloc_stop(ctx, alloc_id[: -len("/stop")])
    if ctx.method != "GET":
        raise ApiError(405, "Invalid method")
    authz = ctx.authz()
    store = ctx.sim.store

    def query() -> tuple[Any, int]:
        alloc = store.allocs.get(alloc_id)
        if alloc is None:
            return None, store.table_index("allocs")
        return alloc, alloc.modify_index

    alloc, index = await ctx.blocking(("alloc", alloc_id), query)
    if alloc is None:
        return ctx.not_found("alloc not found", index)
    if not authz.allows(alloc.namespace, "read-job"):
        raise ApiError(403, "Permission denied")
    return ctx.respond(alloc.render(with_job=True), index)


async def allocations_list(ctx: Ctx) -> Response:
    if ctx.method != "GET":
        raise ApiError(405, "Invalid method")
    namespace = ctx.namespace
    ctx.require(namespace, "read-job")
    store = ctx.sim.store
    prefix = ctx.query.get("prefix", "")
    predicate = _filter(ctx, ALLOC_STUB_FIELDS)

    def query() -> tuple[Any, int]:
        items = []
        for alloc in store.allocs.values():
            if namespace not in ("*", alloc.namespace) or not alloc.id.startswith(prefix):
                continue
            stub = alloc.stub()
            if predicate is None or predicate(stub):
                items.append((alloc.id, stub))
        items.sort(key=lambda pair: pair[0])
        return paginate(ctx, items), store.table_index("allocs")

    (page, next_token), index = await ctx.blocking(("allocs",), query)
    return ctx.respond_page(page, next_token, index)


async def namespace_route(ctx: Ctx, name: str) -> Response:
    store = ctx.sim.store
    if ctx.method == "GET":
        ctx.authz()
        value = store.namespaces.get(name)
        if value is None:
            return ctx.not_found("namespace not found", store.table_index("namespaces"))
        return ctx.respond(value, value["ModifyIndex"])
    if ctx.method in ("PUT", "POST"):
        ctx.require_management()
        body = await ctx.body()
        description = ""
        if body:
            decoded = await ctx.decode(NAMESPACE)
            name = name or decoded.get("Name") or ""
            description = decoded.get("Description") or ""
        if not name:
            raise ApiError(400, "Namespace name required")
        with store.write("NamespaceUpsert") as w:
            old = store.namespaces.get(name)
            value = namespace_json(name, description, w.index)
            if old is not None:
                value["CreateIndex"] = old["CreateIndex"]
            store.namespaces[name] = value
            w.tables.add("namespaces")
            w.keys.add(("namespaces",))
        return ctx.respond(None, w.index, read=False)
    if ctx.method == "DELETE":
        ctx.require_management()
        if name == "default":
            raise ApiError(500, "default namespace can not be deleted")
        with store.write("NamespaceDelete") as w:
            store.namespaces.pop(name, None)
            w.tables.add("namespaces")
            w.keys.add(("namespaces",))
        return ctx.respond(None, w.index, read=False)
    raise ApiError(405, "Invalid method")


async def namespaces_list(ctx: Ctx) -> Response:
    if ctx.method != "GET":
        raise ApiError(405, "Invalid method")
    authz = ctx.authz()
    store = ctx.sim.store

    def query() -> tuple[Any, int]:
        names = sorted(store.namespaces)
        visible = [store.namespaces[n] for n in names if authz.management or any(
            authz.allows(n, cap) for cap in ("list-jobs", "read-job"))]
        return visible, store.table_index("namespaces")

    value, index = await ctx.blocking(("namespaces",), query)
    return ctx.respond(value, index)


def agent_self(ctx: Ctx) -> Response:
    config = ctx.sim.config
    return ctx.respond(
        {
            "config": {
                "Region": config.region,
                "Datacenter": config.datacenter,
                "ACL": {"Enabled": config.acl},
                "Version": {"Version": "1.10.5", "VersionMetadata": "nomadsim"},
            },
            "member": {"Name": "nomadsim.global", "Addr": "127.0.0.1", "Port": 4648,
                       "Tags": {"region": config.region, "dc": config.datacenter}},
            "stats": {},
        }
    )


def nodes_list(ctx: Ctx) -> Response:
    ctx.authz()
    scheduler = ctx.sim.scheduler
    listed = [node_json(scheduler, n) for n in scheduler.nodes]
    for stub in listed:
        del stub["DrainStrategy"]
    return ctx.respond(listed, max((n.modify_index for n in scheduler.nodes), default=1))


async def scheduler_configuration(ctx: Ctx) -> Response:
    """`/v1/operator/scheduler/configuration`: only RejectJobRegistration has an effect."""
    sim = ctx.sim
    if ctx.method == "GET":
        ctx.require_management()
        config = {
            "SchedulerAlgorithm": "binpack",
            "MemoryOversubscriptionEnabled": False,
            "RejectJobRegistration": sim.reject_job_registration,
            "PauseEvalBroker": False,
            "PreemptionConfig": {"SystemSchedulerEnabled": True,
                                 "SysBatchSchedulerEnabled": False,
                                 "BatchSchedulerEnabled": False,
                                 "ServiceSchedulerEnabled": False},
            "CreateIndex": 1,
            "ModifyIndex": sim.scheduler_config_index,
        }
        return ctx.respond({"SchedulerConfig": config, "Index": sim.scheduler_config_index},
                           sim.scheduler_config_index)
    if ctx.method not in ("PUT", "POST"):
        raise ApiError(405, "Invalid method")
    body = await ctx.decode(SCHEDULER_CONFIG)
    ctx.require_management()
    with sim.store.write("SchedulerConfig") as w:
        sim.reject_job_registration = bool(body.get("RejectJobRegistration"))
        sim.scheduler_config_index = w.index
    return ctx.respond({"Updated": True, "Index": w.index}, w.index, read=False)
