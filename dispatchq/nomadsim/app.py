"""The HTTP server: one handler (on httpserver.py's protocol) that routes on the path.

Routing is by prefix and then by suffix on the percent-decoded path, because a
dispatched job's ID contains `/`: `/v1/job/video%2Fdispatch-1-ab/allocations` and the
raw-slash form reach the same handler; no router is used, for that reason and because it
would add per-request overhead.
Before a Nomad route runs, the request is counted, the `region` is checked and the
fault rules and global latency are applied.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

from dispatchq.nomadsim import drain, routes_jobs, routes_reads
from dispatchq.nomadsim.admin import handle_admin
from dispatchq.nomadsim.faults import DEFAULT_MESSAGES
from dispatchq.nomadsim.httpcore import ApiError, Ctx, text_response
from dispatchq.nomadsim.httpserver import HttpServer, Reply, Request
from dispatchq.nomadsim.routes_acl import acl_route
from dispatchq.nomadsim.sim import Sim
from dispatchq.nomadsim.stream import event_stream


def route_name(path: str) -> str:
    """The name fault rules and counters use for a Nomad path."""
    if path.startswith("/v1/job/"):
        _, suffix = routes_jobs.split_job_path(path[len("/v1/job/"):])
        if suffix.startswith("/dispatch"):
            return "dispatch"
        return "job" + suffix.replace("/", "-")
    if path.startswith("/v1/evaluation/"):
        return "evaluation-allocations" if path.endswith("/allocations") else "evaluation"
    if path.startswith("/v1/allocation/") and path.endswith("/stop"):
        return "allocation-stop"
    if path.startswith("/v1/node/"):
        return "node-drain" if path.endswith("/drain") else "node"
    for prefix, name in (
        ("/v1/jobs", "jobs"),
        ("/v1/evaluations", "evaluations"),
        ("/v1/allocation/", "allocation"),
        ("/v1/allocations", "allocations"),
        ("/v1/event/stream", "event-stream"),
        ("/v1/status/", "status"),
        ("/v1/agent/", "agent"),
        ("/v1/acl/", "acl"),
        ("/v1/namespaces", "namespaces"),
        ("/v1/namespace", "namespace"),
        ("/v1/nodes", "nodes"),
        ("/v1/operator/", "operator"),
        ("/v1/regions", "regions"),
    ):
        if path.startswith(prefix):
            return name
    return "other"


async def _nomad(ctx: Ctx) -> Reply:
    path = ctx.path
    region = ctx.query.get("region", "")
    if region and region != ctx.sim.config.region:
        raise ApiError(500, "No path to region")
    if path.startswith("/v1/job/"):
        return await routes_jobs.job_route(ctx, path[len("/v1/job/"):])
    if path == "/v1/jobs":
        return await routes_jobs.jobs_route(ctx)
    if path.startswith("/v1/evaluation/"):
        return await routes_reads.evaluation_route(ctx, path[len("/v1/evaluation/"):])
    if path == "/v1/evaluations":
        return await routes_reads.evaluations_list(ctx)
    if path.startswith("/v1/allocation/"):
        return await routes_reads.allocation_route(ctx, path[len("/v1/allocation/"):])
    if path == "/v1/allocations":
        return await routes_reads.allocations_list(ctx)
    if path == "/v1/event/stream":
        return await event_stream(ctx)
    if path.startswith("/v1/acl/"):
        return await acl_route(ctx, path[len("/v1/acl/"):])
    if path.startswith("/v1/namespace/") or path == "/v1/namespace":
        return await routes_reads.namespace_route(ctx, path[len("/v1/namespace/"):])
    if path == "/v1/namespaces":
        return await routes_reads.namespaces_list(ctx)
    if path == "/v1/status/leader":
        return ctx.respond("127.0.0.1:4647")
    if path == "/v1/status/peers":
        return ctx.respond(["127.0.0.1:4647"])
    if path == "/v1/regions":
        return ctx.respond([ctx.sim.config.region])
    if path == "/v1/agent/self":
        return routes_reads.agent_self(ctx)
    if path == "/v1/operator/scheduler/configuration":
        return await routes_reads.scheduler_configuration(ctx)
    if path == "/v1/nodes":
        return routes_reads.nodes_list(ctx)
    if path.startswith("/v1/node/"):
        return await drain.node_route(ctx, path[len("/v1/node/"):])
    return text_response(404, "404 page not found\n")


class NomadSimServer:
    """Binds the listener and runs the scheduler; `start()`/`stop()` inside a loop."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.http = HttpServer(self.handle)

    async def handle(self, request: Request) -> Reply | None:
        """Answer one request; None cuts the connection without an answer."""
        sim = self.sim
        path = unquote(request.raw_path.partition("?")[0])
        if path.startswith("/_sim/"):
            return await handle_admin(sim, request, path)
        route = route_name(path)
        sim.requests[route] += 1
        decision = sim.faults.decide(route, request.method)
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        action = decision.action
        if action is not None:
            if action.kind == "cut":
                sim.statuses["cut"] += 1
                return None
            status = action.status if action.kind == "error" else 429
            sim.statuses[str(status)] += 1
            return text_response(status, action.message or DEFAULT_MESSAGES[action.kind])
        ctx = Ctx(sim, request, path, request.query)
        try:
            response = await _nomad(ctx)
        except ApiError as exc:
            response = text_response(exc.status, exc.message)
        sim.statuses[str(response.status)] += 1
        return response

    async def start(self, host: str, port: int) -> None:
        await self.http.start(host, port)
        self.sim.scheduler.start()

    async def stop(self) -> None:
        await self.sim.scheduler.stop()
        await self.http.stop()
