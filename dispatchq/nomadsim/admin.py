"""nomadsim's own admin API under `/_sim/` (a prefix Nomad never uses).

    GET    /_sim/faults      {"latency_ms": float, "rules": [rule...]}
    PUT    /_sim/faults      replace: {"latency_ms"?: float, "rules"?: [rule...]}
    POST   /_sim/faults      append one rule; answers the rule with its id
    DELETE /_sim/faults      no rules, no latency
    GET    /_sim/dispatches  {"count": n, "dispatches": [record...]} (?parent= ?namespace=)
    GET    /_sim/stats       counters
    POST   /_sim/reset       clear counters and faults; {"dispatches": true} also the record
    GET    /_sim/scheduler   scheduler knobs; PUT changes them (same keys)
    GET    /_sim/nodes       node capacity, usage and status
    POST   /_sim/nodes/<id or name>/down   the node goes down: its allocs become lost
                                           and are replaced; answers {"evals": [...]}
    POST   /_sim/nodes/<id or name>/up     the node takes allocations again
    POST   /_sim/allocations/<id>/fail     one running task ends (exit code, signal, OOM)
    POST   /_sim/event-stream/cut  drop every open /v1/event/stream connection mid-body;
                                   answers {"cut": n}

A rule is {"kind": "error|rate_limit|slow|cut", "route": "*", "method": "*",
"probability": 1.0, "count": null, "delay_ms": 0, "message": "", "status": 500} (see
faults.py).
"""

from __future__ import annotations

import json
from typing import Any

from dispatchq.nomadsim.faults import FaultRule
from dispatchq.nomadsim.httpserver import Request, Response
from dispatchq.nomadsim.jsonshape import dumps
from dispatchq.nomadsim.nodes import find_node, node_down, node_up
from dispatchq.nomadsim.sim import Sim


def _json(value: Any, status: int = 200) -> Response:
    return Response(status, dumps(value), {"Content-Type": "application/json"})


def _error(message: str, status: int = 400) -> Response:
    return _json({"error": message}, status)


async def _body(request: Request) -> Any:
    raw = await request.read()
    return json.loads(raw) if raw.strip() else {}


SCHEDULER_KNOBS = {
    "schedule_delay_ms": "schedule_delay",
    "run_time_ms": "run_time",
    "start_time_ms": "start_time",
    "followup_wait_ms": "followup_wait",
}


def _scheduler_json(sim: Sim) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(sim.config, v) * 1000 for k, v in SCHEDULER_KNOBS.items()}
    out["fail_next_evals"] = sim.scheduler.fail_next
    out["time_scale"] = sim.config.time_scale
    return out


async def _fail_allocation(sim: Sim, request: Request, alloc_id: str) -> Response:
    """End one running task of an allocation with an exit code, a signal, an OOM kill."""
    body = await _body(request)
    body = body if isinstance(body, dict) else {}
    run = sim.scheduler.clients.runs.get(alloc_id)
    if run is None:
        return _error(f"no allocation {alloc_id!r} running on a client", 404)
    exit_code, signal = int(body.get("exit_code", 1)), int(body.get("signal", 0))
    if not (0 <= exit_code < 256 and 0 <= signal < 65):
        raise ValueError("exit_code must be 0-255 and signal 0-64")
    oom = bool(body.get("oom_killed", False))
    task = run.crash(str(body.get("task", "")), exit_code, signal, oom,
                     str(body.get("message", "")))  # fmt: skip
    return _json({"id": alloc_id, "task": task, "exit_code": exit_code, "signal": signal,
                  "oom_killed": oom})


async def handle_admin(sim: Sim, request: Request, path: str) -> Response:
    try:
        return await _route(sim, request, path)
    except (ValueError, TypeError) as exc:
        return _error(str(exc))


async def _route(sim: Sim, request: Request, path: str) -> Response:
    method = request.method
    name = path[len("/_sim/"):]
    if name == "faults":
        faults = sim.faults
        if method == "GET":
            return _json(faults.to_json())
        if method == "DELETE":
            faults.clear()
            return _json(faults.to_json())
        body = await _body(request)
        if method == "POST":
            return _json(faults.add(FaultRule.from_json(body)).to_json())
        if method == "PUT":
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            rules = [FaultRule.from_json(r) for r in body.get("rules", [])]
            if "rules" in body:
                faults.rules = []
                for rule in rules:
                    faults.add(rule)
            if "latency_ms" in body:
                faults.latency_ms = float(body["latency_ms"])
            return _json(faults.to_json())
    elif name == "dispatches" and method == "GET":
        parent = request.query.get("parent")
        namespace = request.query.get("namespace")
        rendered = [
            d.to_json() for d in sim.dispatches
            if (parent is None or d.parent == parent)
            and (namespace is None or d.namespace == namespace)
        ]
        return _json({"count": len(rendered), "dispatches": rendered})
    elif name == "stats" and method == "GET":
        return _json(sim.stats())
    elif name == "reset" and method == "POST":
        body = await _body(request)
        sim.reset_counters(bool(body.get("dispatches")) if isinstance(body, dict) else False)
        return _json(sim.stats())
    elif name == "scheduler":
        if method == "PUT":
            body = await _body(request)
            for key, value in body.items():
                if key == "fail_next_evals":
                    sim.scheduler.fail_next = int(value)
                elif key == "time_scale":
                    if float(value) <= 0:
                        raise ValueError("time_scale must be positive")
                    sim.config.time_scale = float(value)
                elif key in SCHEDULER_KNOBS:
                    setattr(sim.config, SCHEDULER_KNOBS[key], float(value) / 1000)
                else:
                    raise ValueError(f"unknown scheduler knob {key!r}")
        if method in ("GET", "PUT"):
            return _json(_scheduler_json(sim))
    elif name == "nodes" and method == "GET":
        return _json(
            [
                {"id": n.id, "name": n.name, "datacenter": n.datacenter, "cpu": n.cpu,
                 "memory_mb": n.memory_mb, "used_cpu": n.used_cpu,
                 "used_memory_mb": n.used_memory_mb, "status": n.status}
                for n in sim.scheduler.nodes
            ]
        )
    elif name.startswith("allocations/") and name.endswith("/fail") and method == "POST":
        return await _fail_allocation(sim, request, name[len("allocations/"):-len("/fail")])
    elif name == "event-stream/cut" and method == "POST":
        return _json({"cut": sim.store.broker.cut_all()})
    elif name.startswith("nodes/") and method == "POST":
        ref, _, action = name[len("nodes/"):].partition("/")
        node = find_node(sim.scheduler, ref)
        if node is None:
            return _error(f"no node {ref!r}", 404)
        if action == "down":
            return _json({"id": node.id, "status": "down",
                          "evals": node_down(sim.scheduler, node)})
        if action == "up":
            node_up(sim.scheduler, node)
            return _json({"id": node.id, "status": "ready", "evals": []})
    return _error(f"no admin route {method} {path}", 404)
