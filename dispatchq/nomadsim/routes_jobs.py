"""Handlers for `/v1/jobs` and `/v1/job/<id>[/<sub-resource>]`."""

from __future__ import annotations

import functools
import time

from dispatchq.nomadsim import dispatch as dispatching
from dispatchq.nomadsim import jobs
from dispatchq.nomadsim.filterexpr import FilterError, compile_filter
from dispatchq.nomadsim.httpcore import ApiError, Ctx, paginate
from dispatchq.nomadsim.httpserver import Response
from dispatchq.nomadsim.jsonshape import go_quote, multierror, now_ns
from dispatchq.nomadsim.model import render_job

WRITE_METHODS = ("PUT", "POST")
#: Sub-resources routed by suffix on the decoded path (never by splitting on "/").
SUFFIXES = ("/dispatch/payload", "/dispatch", "/allocations", "/evaluations", "/summary",
            "/evaluate")
UNIMPLEMENTED = ("/periodic/force", "/plan", "/deployments", "/deployment", "/versions",
                 "/revert", "/stable", "/scale", "/services", "/submission")


@functools.lru_cache(maxsize=1024)
def split_job_path(rest: str) -> tuple[str, str]:
    """(job ID, suffix) for the part of the path after `/v1/job/` (cached: the route
    name and the handler both need it, and a dispatch path repeats)."""
    for suffix in SUFFIXES + UNIMPLEMENTED:
        if rest.endswith(suffix):
            return rest[: -len(suffix)], suffix
    return rest, ""


async def job_route(ctx: Ctx, rest: str) -> Response:
    job_id, suffix = split_job_path(rest)
    if suffix in UNIMPLEMENTED:
        raise ApiError(501, f"nomadsim does not implement {suffix}")
    if suffix in ("/dispatch", "/dispatch/payload"):
        return await dispatch_handler(ctx, job_id, raw=suffix == "/dispatch/payload")
    if suffix == "/evaluate":
        return await evaluate(ctx, job_id)
    if suffix:
        if ctx.method != "GET":
            raise ApiError(405, "Invalid method")
        return await sub_resource(ctx, job_id, suffix)
    if ctx.method == "GET":
        return await read_job(ctx, job_id)
    if ctx.method in WRITE_METHODS:
        return await register(ctx, job_id)
    if ctx.method == "DELETE":
        return deregister(ctx, job_id)
    raise ApiError(405, "Invalid method")


async def jobs_route(ctx: Ctx) -> Response:
    if ctx.method == "GET":
        return await list_jobs(ctx)
    if ctx.method in WRITE_METHODS:
        return await register(ctx, None)
    raise ApiError(405, "Invalid method")


async def list_jobs(ctx: Ctx) -> Response:
    namespace = ctx.namespace
    authz = ctx.authz()
    if namespace != "*" and not authz.allows(namespace, "list-jobs"):
        raise ApiError(403, "Permission denied")
    prefix = ctx.query.get("prefix", "")
    store = ctx.sim.store
    predicate = None
    text = ctx.query.get("filter", "")
    if text:
        try:
            predicate = compile_filter(text, jobs.filter_fields({}))
        except FilterError as exc:
            raise ApiError(500, f"failed to create result paginator: {exc}") from None

    def query() -> tuple[tuple[list[object], str], int]:
        items = []
        for (ns, job_id), job in store.jobs.items():
            if namespace not in ("*", ns) or not job_id.startswith(prefix):
                continue
            if namespace == "*" and not authz.allows(ns, "list-jobs"):
                continue
            if predicate is not None and not predicate(render_job(job)):
                continue
            token = f"{ns}.{job_id}" if namespace == "*" else job_id
            items.append((token, (ns, job_id)))
        items.sort()
        page, next_token = paginate(ctx, items)
        stubs: list[object] = [
            jobs.list_stub(store.jobs[key], store.summary_json(key)) for key in page
        ]
        return (stubs, next_token), store.table_index("jobs", "job_summary")

    (stubs, next_token), index = await ctx.blocking(("jobs",), query)
    return ctx.respond_page(stubs, next_token, index)


async def read_job(ctx: Ctx, job_id: str) -> Response:
    namespace = ctx.namespace
    ctx.require(namespace, "read-job")
    store = ctx.sim.store
    key = (namespace, job_id)

    def query() -> tuple[object, int]:
        job = store.jobs.get(key)
        if job is None:
            return None, store.table_index("jobs")
        return render_job(job), job["ModifyIndex"]

    job, index = await ctx.blocking(("job", *key), query)
    if job is None:
        return ctx.not_found("job not found", index)
    return ctx.respond(job, index)


async def sub_resource(ctx: Ctx, job_id: str, suffix: str) -> Response:
    namespace = ctx.namespace
    ctx.require(namespace, "read-job")
    store = ctx.sim.store
    key = (namespace, job_id)
    if suffix == "/summary":

        def summary() -> tuple[object, int]:
            found = store.summaries.get(key)
            return store.summary_json(key), found.modify_index if found else store.table_index(
                "job_summary"
            )

        value, index = await ctx.blocking(("summary", *key), summary)
        if value is None:
            return ctx.not_found("job not found", index)
        return ctx.respond(value, index)
    if suffix == "/allocations":
        show_all = ctx.flag("all")

        def allocs() -> tuple[object, int]:
            items = store.job_allocs(key)
            job = store.jobs.get(key)
            if not show_all and job is not None:
                items = [a for a in items if a.create_index >= job["CreateIndex"]]
            return [a.stub() for a in items], store.table_index("allocs")

        value, index = await ctx.blocking(("job_allocs", *key), allocs)
        return ctx.respond(value, index)

    def evals() -> tuple[object, int]:
        return [e.render() for e in store.job_evals(key)], store.table_index("evals")

    value, index = await ctx.blocking(("job_evals", *key), evals)
    return ctx.respond(value, index)


async def register(ctx: Ctx, path_id: str | None) -> Response:
    args = await ctx.decode(jobs.REGISTER_REQUEST)
    try:
        raw = jobs.check_request(args, path_id)
    except jobs.RegisterError as exc:
        raise ApiError(exc.status, exc.message) from None
    namespace = (
        ctx.query.get("namespace") or args.get("Namespace") or raw.get("Namespace") or "default"
    )
    ctx.check_registration_allowed(
        ctx.require(namespace, "submit-job", ctx.token or args.get("SecretID") or "")
    )
    sim = ctx.sim
    job = jobs.canonicalize(raw, namespace, sim.config.region)
    if namespace not in sim.store.namespaces:
        raise ApiError(
            500, f"job {go_quote(job['ID'])} is in nonexistent namespace {go_quote(namespace)}"
        )
    errors = jobs.validate(job)
    if errors:
        raise ApiError(500, multierror(errors))
    store = sim.store
    key = (namespace, job["ID"])
    existing = store.jobs.get(key)
    try:
        jobs.check_enforce_index(args, existing)
    except jobs.RegisterError as exc:
        raise ApiError(exc.status, exc.message) from None
    eval_id = ""
    with store.write("JobRegistered") as w:
        job["Version"] = existing["Version"] + 1 if existing else 0
        job["CreateIndex"] = existing["CreateIndex"] if existing else w.index
        job["ModifyIndex"] = job["JobModifyIndex"] = w.index
        job["SubmitTime"] = now_ns()
        w.put_job(job)
        if not jobs.is_parameterized(job) and not jobs.is_periodic(job):
            ev = sim.scheduler.new_eval(job, "job-register", w.index, args.get("EvalPriority") or 0)
            w.put_eval(ev)
            eval_id = ev.id
    if eval_id:
        sim.scheduler.enqueue(eval_id)
    return ctx.respond(
        {
            "EvalID": eval_id,
            "EvalCreateIndex": w.index if eval_id else 0,
            "JobModifyIndex": w.index,
            "Warnings": "",
            "Index": w.index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        },
        w.index,
        read=False,
    )


def deregister(ctx: Ctx, job_id: str) -> Response:
    namespace = ctx.namespace
    ctx.require(namespace, "submit-job")
    sim = ctx.sim
    store = sim.store
    key = (namespace, job_id)
    job = store.jobs.get(key)
    if job is None:
        raise ApiError(404, "job not found")
    purge = ctx.flag("purge")
    eval_id = ""
    with store.write("JobDeregistered") as w:
        if purge:
            w.delete_job(key)
            # its evals and allocs stay readable until the garbage collector takes them
            store.dead_since[key] = time.monotonic()
        else:
            w.put_job({**job, "Stop": True, "JobModifyIndex": w.index})
        if not jobs.is_parameterized(job) and not jobs.is_periodic(job):
            ev = sim.scheduler.new_eval(job, "job-deregister", w.index)
            ev.job_modify_index = w.index
            w.put_eval(ev)
            eval_id = ev.id
    if eval_id:
        sim.scheduler.enqueue(eval_id)
    return ctx.respond(
        {
            "EvalID": eval_id,
            "EvalCreateIndex": w.index if eval_id else 0,
            "JobModifyIndex": w.index,
            "VolumeEvalID": "",
            "VolumeEvalIndex": 0,
            "Index": w.index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        },
        w.index,
        read=False,
    )


async def evaluate(ctx: Ctx, job_id: str) -> Response:
    if ctx.method not in WRITE_METHODS:
        raise ApiError(405, "Invalid method")
    namespace = ctx.namespace
    ctx.require(namespace, "submit-job")
    sim = ctx.sim
    job = sim.store.jobs.get((namespace, job_id))
    if job is None:
        raise ApiError(404, "job not found")
    if jobs.is_parameterized(job) or jobs.is_periodic(job):
        raise ApiError(500, "can't evaluate parameterized or periodic job")
    with sim.store.write("JobRegistered") as w:
        ev = sim.scheduler.new_eval(job, "job-eval", w.index)
        w.put_eval(ev)
    sim.scheduler.enqueue(ev.id)
    return ctx.respond(
        {"EvalID": ev.id, "EvalCreateIndex": w.index, "JobModifyIndex": job["JobModifyIndex"],
         "Index": w.index},
        w.index,
        read=False,
    )


async def dispatch_handler(ctx: Ctx, job_id: str, raw: bool) -> Response:
    if ctx.method not in WRITE_METHODS:
        raise ApiError(405, "Invalid method")
    if raw:
        body: dict[str, object] = {"Payload": await ctx.body()}
    else:
        body = await ctx.decode(dispatching.DISPATCH_REQUEST)
    args = dispatching.args_from_body(ctx, job_id, body)
    response, index = dispatching.dispatch(ctx, args)
    return ctx.respond(response, index, read=False)
