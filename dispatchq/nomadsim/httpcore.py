"""Request context, Nomad-style responses and errors, and blocking queries."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multidict import MultiDictProxy

from dispatchq.nomadsim.acl import Authz
from dispatchq.nomadsim.godecode import GoType, decode_body
from dispatchq.nomadsim.goscan import DecodeError
from dispatchq.nomadsim.httpserver import TEXT, Request, Response
from dispatchq.nomadsim.jsonshape import dumps, parse_go_duration

if TYPE_CHECKING:
    from dispatchq.nomadsim.sim import Sim

MAX_WAIT = 300.0


TRUE_WORDS = frozenset({"1", "t", "T", "true", "TRUE", "True"})
FALSE_WORDS = frozenset({"0", "f", "F", "false", "FALSE", "False"})


class ApiError(Exception):
    """An error answered as Nomad does: the raw message as a plain-text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def permission_denied() -> ApiError:
    return ApiError(403, "Permission denied")


def text_response(status: int, message: str) -> Response:
    return Response(status, message.encode(), {"Content-Type": TEXT})


@dataclass
class Ctx:
    sim: Sim
    request: Request
    path: str
    query: MultiDictProxy[str]

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def namespace(self) -> str:
        return self.query.get("namespace") or "default"

    def flag(self, name: str) -> bool:
        """A boolean query parameter, read as Go's strconv.ParseBool reads it (what Nomad
        uses: `True`, `t` and `1` are true too, which clients that send Python's `True`
        rely on); absent is false, anything else 400."""
        value = self.query.get(name, "")
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS or value == "":
            return False
        raise ApiError(400, f"Failed to parse value of {name!r} ({value!r}) as a bool")

    @property
    def token(self) -> str:
        headers = self.request.headers
        token = headers.get("X-Nomad-Token", "")
        if not token:
            auth = headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                token = auth[7:].strip()
        return token

    def authz(self, secret: str | None = None) -> Authz:
        """The token's permissions; 403 when it does not authenticate."""
        authz = self.sim.acl.resolve(self.token if secret is None else secret)
        if authz is None:
            raise permission_denied()
        return authz

    def require(self, namespace: str, capability: str, secret: str | None = None) -> Authz:
        authz = self.authz(secret)
        if not authz.allows(namespace, capability):
            raise permission_denied()
        return authz

    def check_registration_allowed(self, authz: Authz) -> None:
        """The scheduler configuration rejects registrations and dispatches
        from non-management tokens (only reachable with ACLs on, as in Nomad)."""
        if self.sim.reject_job_registration and self.sim.acl.enabled and not authz.management:
            raise ApiError(
                403,
                "Job registration, dispatch, and scale are disabled by the scheduler "
                "configuration",
            )

    def require_management(self) -> None:
        if not self.authz().management:
            raise permission_denied()

    async def body(self) -> bytes:
        return self.request.body

    async def decode(self, gotype: GoType) -> dict[str, Any]:
        """Nomad's decodeBody: 400 `Request body is empty`, or Go's decode error."""
        body = await self.body()
        if not body:
            raise ApiError(400, "Request body is empty")
        try:
            return decode_body(body, gotype)
        except DecodeError as exc:
            raise ApiError(400, str(exc)) from None

    def respond(self, value: Any, index: int | None = None, read: bool = True) -> Response:
        headers = {"Content-Type": "application/json"}
        if index is not None:
            headers["X-Nomad-Index"] = str(index)
        if read:
            headers["X-Nomad-LastContact"] = "0"
            headers["X-Nomad-KnownLeader"] = "true"
        body = dumps(value, pretty="pretty" in self.query)
        return Response(200, body, headers)

    def respond_page(self, page: list[Any], next_token: str, index: int) -> Response:
        """A paginated list: `X-Nomad-NextToken` says where the next page starts."""
        response = self.respond(page, index)
        if next_token:
            response.headers["X-Nomad-NextToken"] = next_token
        return response

    def not_found(self, message: str, index: int) -> Response:
        response = text_response(404, message)
        response.headers.update(
            {"X-Nomad-Index": str(index), "X-Nomad-LastContact": "0", "X-Nomad-KnownLeader": "true"}
        )
        return response

    def query_options(self) -> tuple[int, float]:
        """(min index, max wait seconds incl. jitter); 400s as Nomad's parseWait."""
        wait = MAX_WAIT
        raw_wait = self.query.get("wait")
        if raw_wait is not None:
            try:
                nanos = parse_go_duration(raw_wait)
            except ValueError:
                raise ApiError(400, "Invalid wait time") from None
            if nanos > 0:
                wait = min(nanos / 1e9, MAX_WAIT)
        index = 0
        raw_index = self.query.get("index")
        if raw_index is not None:
            if not raw_index.isdigit() or not raw_index.isascii() or int(raw_index) >= 2**64:
                raise ApiError(400, "Invalid index")
            index = int(raw_index)
        return index, wait + random.uniform(0, wait / 16)  # noqa: S311

    async def blocking(
        self, key: Hashable, query: Callable[[], tuple[Any, int]]
    ) -> tuple[Any, int]:
        """Run query until its index passes `?index=` or the wait elapses.

        Each round waits on the watch key of what the query reads, so an idle blocking
        query costs one suspended coroutine and no polling.
        """
        min_index, wait = self.query_options()
        result, index = query()
        if min_index == 0 or index > min_index:
            return result, index
        loop = self.sim.loop
        deadline = loop.time() + wait
        self.sim.blocking_queries += 1
        try:
            while index <= min_index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self.sim.store.watch.wait(key, remaining)
                result, index = query()
        finally:
            self.sim.blocking_queries -= 1
        return result, index


def paginate(
    ctx: Ctx, items: list[tuple[str, Any]]
) -> tuple[list[Any], str]:
    """Apply `next_token` and `per_page` to (token, item) pairs sorted by token."""
    token = ctx.query.get("next_token", "")
    if token:
        items = [pair for pair in items if pair[0] >= token]
    per_page = ctx.query.get("per_page", "")
    next_token = ""
    if per_page:
        try:
            size = int(per_page)
        except ValueError:
            raise ApiError(400, f"failed to parse per_page: {per_page}") from None
        if 0 < size < len(items):
            next_token = items[size][0]
            items = items[:size]
    return [item for _, item in items], next_token
