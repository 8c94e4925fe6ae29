"""Dispatch: validation in Nomad's order, the child job, idempotency."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from dispatchq.nomadsim import godecode as g
from dispatchq.nomadsim.httpcore import ApiError, Ctx
from dispatchq.nomadsim.jobs import is_parameterized, is_periodic
from dispatchq.nomadsim.jsonshape import go_list, go_quote, now_ns
from dispatchq.nomadsim.model import DispatchRecord, JsonObj

DISPATCH_REQUEST = g.struct(
    "structs.JobDispatchRequest",
    JobID=g.STRING,
    Payload=g.BYTES,
    Meta=g.STRING_MAP,
    IdPrefixTemplate=g.STRING,
    Priority=g.INT,
    Region=g.STRING,
    Namespace=g.STRING,
    AuthToken=g.STRING,
    IdempotencyToken=g.STRING,
)
PAYLOAD_LIMIT = 16 * 1024


@dataclass
class DispatchArgs:
    job_id: str
    namespace: str
    token: str
    payload: bytes
    meta: dict[str, str]
    prefix_template: str
    priority: int
    idempotency_token: str


def args_from_body(ctx: Ctx, path_id: str, body: dict[str, Any]) -> DispatchArgs:
    """Merge the decoded body with the query/header (which win), as jobDispatchRequest."""
    if body.get("JobID") and body["JobID"] != path_id:
        raise ApiError(400, "Job ID does not match")
    region = body.get("Region") or ""
    if region and "region" not in ctx.query and region != ctx.sim.config.region:
        raise ApiError(500, "No path to region")
    return DispatchArgs(
        job_id=path_id,
        namespace=ctx.query.get("namespace") or body.get("Namespace") or "default",
        token=ctx.token or body.get("AuthToken") or "",
        payload=body.get("Payload") or b"",
        meta=body.get("Meta") or {},
        prefix_template=body.get("IdPrefixTemplate") or "",
        priority=body.get("Priority") or 0,
        idempotency_token=ctx.query.get("idempotency_token") or body.get("IdempotencyToken") or "",
    )


def _validate(parent: JsonObj, args: DispatchArgs) -> None:
    """The payload and meta checks, in the order Nomad makes them."""
    job_id = args.job_id
    if not is_parameterized(parent):
        raise ApiError(500, f"Specified job {go_quote(job_id)} is not a parameterized job")
    if parent["Stop"]:
        raise ApiError(500, f"Specified job {go_quote(job_id)} is stopped")
    config = parent["ParameterizedJob"]
    size = len(args.payload)
    if config["Payload"] == "required" and size == 0:
        raise ApiError(500, "Payload is not provided but required by parameterized job")
    if config["Payload"] == "forbidden" and size > 0:
        raise ApiError(500, "Payload provided but forbidden by parameterized job")
    if size > PAYLOAD_LIMIT:
        raise ApiError(500, f"Payload exceeds maximum size; {size} > {PAYLOAD_LIMIT}")
    required = config.get("MetaRequired") or []
    allowed = set(required) | set(config.get("MetaOptional") or ())
    unpermitted = [k for k in args.meta if k not in allowed]
    if unpermitted:
        raise ApiError(
            500, f"Dispatch request included unpermitted metadata keys: {go_list(unpermitted)}"
        )
    missing = [k for k in required if k not in args.meta]
    if missing:
        raise ApiError(500, f"Dispatch did not provide required meta keys: {go_list(missing)}")
    if args.priority and not 1 <= args.priority <= 100:
        raise ApiError(500, "dispatch job priority must be between [1, 100]")


def child_id(parent_id: str, template: str) -> str:
    """The child's ID: `<parent>/dispatch-[<template>-]<unix>-<8 hex>`."""
    middle = f"{template}-" if template else ""
    return f"{parent_id}/dispatch-{middle}{int(time.time())}-{random.getrandbits(32):08x}"


def dispatch(ctx: Ctx, args: DispatchArgs) -> tuple[JsonObj, int]:
    """Validate and dispatch; returns the JobDispatchResponse and its index."""
    sim = ctx.sim
    ctx.check_registration_allowed(ctx.require(args.namespace, "dispatch-job", args.token))
    if not args.job_id:
        raise ApiError(500, "missing parameterized job ID")
    store = sim.store
    parent = store.jobs.get((args.namespace, args.job_id))
    if parent is None:
        raise ApiError(500, "parameterized job not found")
    _validate(parent, args)
    token = args.idempotency_token
    if token:
        existing_id = store.idempotency.get((args.namespace, args.job_id, token))
        existing = store.jobs.get((args.namespace, existing_id or ""))
        if existing is not None:
            _record(
                ctx, args, existing["ID"], eval_id="", index=existing["ModifyIndex"], repeat=True
            )
            response = {
                "DispatchedJobID": existing["ID"],
                "EvalID": "",
                "EvalCreateIndex": 0,
                "JobCreateIndex": existing["CreateIndex"],
                "Index": existing["ModifyIndex"],
            }
            return response, existing["ModifyIndex"]
    new_id = child_id(args.job_id, args.prefix_template)
    meta = parent.get("Meta")
    if args.meta:
        meta = {**(meta or {}), **args.meta}
    scheduler = sim.scheduler
    with store.write("JobRegistered") as w:
        child = {
            **parent,
            "ID": new_id,
            "Name": new_id,
            "ParentID": args.job_id,
            "Dispatched": True,
            "DispatchIdempotencyToken": token,
            "Priority": args.priority or parent["Priority"],
            "Meta": meta,
            "Payload": args.payload or None,
            "Status": "pending",
            "Stop": False,
            "SubmitTime": now_ns(),
            "CreateIndex": w.index,
            "ModifyIndex": w.index,
            "JobModifyIndex": w.index,
        }
        w.put_job(child)
        eval_id = ""
        if not is_periodic(parent):
            ev = scheduler.new_eval(child, "job-register", w.index)
            w.put_eval(ev)
            eval_id = ev.id
        if token:
            store.idempotency[(args.namespace, args.job_id, token)] = new_id
    if eval_id:
        scheduler.enqueue(eval_id)
    _record(ctx, args, new_id, eval_id=eval_id, index=w.index, repeat=False)
    response = {
        "DispatchedJobID": new_id,
        "EvalID": eval_id,
        "EvalCreateIndex": w.index if eval_id else 0,
        "JobCreateIndex": w.index,
        "Index": w.index,
    }
    return response, w.index


def _record(ctx: Ctx, args: DispatchArgs, child: str, *, eval_id: str, index: int,
            repeat: bool) -> None:
    ctx.sim.dispatches.append(
        DispatchRecord(args.job_id, child, eval_id, args.namespace, args.idempotency_token,
                       dict(args.meta) if args.meta else None, len(args.payload),
                       args.priority, index, repeat, now_ns())
    )
