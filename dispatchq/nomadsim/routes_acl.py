"""ACL endpoints: bootstrap, policies and tokens."""

from __future__ import annotations

from dispatchq.nomadsim import godecode as g
from dispatchq.nomadsim.acl import PolicyError, Token, parse_rules
from dispatchq.nomadsim.httpcore import ApiError, Ctx
from dispatchq.nomadsim.httpserver import Response
from dispatchq.nomadsim.jsonshape import new_uuid

POLICY = g.struct("structs.ACLPolicy", Name=g.STRING, Description=g.STRING, Rules=g.STRING)
TOKEN = g.struct(
    "structs.ACLToken", Name=g.STRING, Type=g.STRING, Policies=g.STRING_LIST, Global=g.BOOL
)


async def acl_route(ctx: Ctx, rest: str) -> Response:
    acl = ctx.sim.acl
    if not acl.enabled:
        raise ApiError(400, "ACL support disabled")
    if rest == "bootstrap":
        return bootstrap(ctx)
    if rest.startswith("policy/"):
        return await policy(ctx, rest[len("policy/"):])
    if rest == "policies":
        ctx.require_management()
        return ctx.respond(
            [{"Name": p["Name"], "Description": p["Description"], "CreateIndex": p["CreateIndex"],
              "ModifyIndex": p["ModifyIndex"]} for p in acl.policies.values()],
            ctx.sim.store.table_index("acl_policy"),
        )
    if rest == "token/self":
        token = acl.tokens.get(ctx.token)
        if token is None:
            raise ApiError(403, "Permission denied")
        return ctx.respond(token.render(), token.create_index)
    if rest == "token":
        return await create_token(ctx)
    if rest == "tokens":
        ctx.require_management()
        return ctx.respond([t.render() for t in acl.tokens.values()],
                           ctx.sim.store.table_index("acl_token"))
    raise ApiError(404, "404 page not found\n")


def bootstrap(ctx: Ctx) -> Response:
    if ctx.method not in ("PUT", "POST"):
        raise ApiError(405, "Invalid method")
    acl = ctx.sim.acl
    if acl.bootstrap_index:
        raise ApiError(400, f"ACL bootstrap already done (reset index: {acl.bootstrap_index})")
    with ctx.sim.store.write("ACLTokenBootstrap") as w:
        token = acl.bootstrap(w.index)
        w.tables.add("acl_token")
    return ctx.respond(token.render(), w.index, read=False)


async def policy(ctx: Ctx, name: str) -> Response:
    acl = ctx.sim.acl
    store = ctx.sim.store
    if ctx.method == "GET":
        ctx.require_management()
        found = acl.policies.get(name)
        if found is None:
            return ctx.not_found("ACL policy not found", store.table_index("acl_policy"))
        return ctx.respond({k: v for k, v in found.items() if k != "_caps"}, found["ModifyIndex"])
    if ctx.method == "DELETE":
        ctx.require_management()
        with store.write("ACLPolicyDelete") as w:
            acl.policies.pop(name, None)
            w.tables.add("acl_policy")
        return ctx.respond(None, w.index, read=False)
    if ctx.method not in ("PUT", "POST"):
        raise ApiError(405, "Invalid method")
    body = await ctx.decode(POLICY)
    ctx.require_management()
    if body.get("Name") and body["Name"] != name:
        raise ApiError(400, "ACL policy name does not match request path")
    try:
        caps = parse_rules(body.get("Rules") or "")
    except PolicyError as exc:
        raise ApiError(400, f"policy 0 invalid: {exc}") from None
    with store.write("ACLPolicyUpsert") as w:
        old = acl.policies.get(name)
        acl.policies[name] = {
            "Name": name,
            "Description": body.get("Description") or "",
            "Rules": body.get("Rules") or "",
            "JobACL": None,
            "CreateIndex": old["CreateIndex"] if old else w.index,
            "ModifyIndex": w.index,
            "_caps": caps,
        }
        w.tables.add("acl_policy")
    return ctx.respond(None, w.index, read=False)


async def create_token(ctx: Ctx) -> Response:
    if ctx.method not in ("PUT", "POST"):
        raise ApiError(405, "Invalid method")
    body = await ctx.decode(TOKEN)
    ctx.require_management()
    token_type = body.get("Type") or "client"
    policies = body.get("Policies") or []
    if token_type not in ("client", "management"):
        raise ApiError(400, "token 0 invalid: token type must be client or management")
    if token_type == "client" and not policies:  # noqa: S105
        raise ApiError(400, "token 0 invalid: client token missing policies")
    if token_type == "management" and policies:  # noqa: S105
        raise ApiError(400, "token 0 invalid: management token cannot be associated with policies")
    acl = ctx.sim.acl
    with ctx.sim.store.write("ACLTokenUpsert") as w:
        accessor, secret = new_uuid(secure=True), new_uuid(secure=True)
        token = Token(accessor, secret, body.get("Name") or "", token_type, policies, w.index)
        acl.tokens[token.secret] = token
        w.tables.add("acl_token")
    return ctx.respond(token.render(), w.index, read=False)
