"""The dispatch request: one model from the producer to Nomad, and the limits it obeys.

`DispatchRequest` is what a producer validates and serialises (`from_producer`,
`to_message`), what a queue message carries (the task's keyword arguments: the README's
"Message format, version 1"), what the worker parses (`from_message`) and what the Nomad
client sends (`NomadClient.dispatch`). A new field is declared here once; the code that
uses it and its tests are all else it needs.

A message from any producer (ours, or a service in another language) is checked here
before anything else happens; what does not fit becomes an `InvalidMessage` whose text says
which field is wrong and how, and the request ends with exit code 1 instead of a crash.
Our own producer refuses the same things earlier, as `InvalidRequest`, in its own words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from dispatch.errors import InvalidMessage as InvalidMessage
from dispatch.errors import InvalidRequest

MESSAGE_VERSION: Literal[1] = 1
"""The `v` field of a request; bumped only with an incompatible change."""
PAYLOAD_LIMIT = 16 * 1024
"""Nomad's DispatchPayloadSizeLimit: decoded bytes; exactly 16384 is accepted."""
REQUEST_ID_MAX = 200
"""Characters of a request ID at most."""
PRIORITY_MAX = 100
"""Nomad's highest job priority; 0 means the parent's."""

_CONTROL = re.compile("[\x00-\x1f]")


def _no_control(value: str) -> str:
    # \x1f separates the request and batch IDs in the enqueue script's arguments.
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


NoControl = Annotated[str, AfterValidator(_no_control)]


class DispatchRequest(BaseModel):
    """Version 1 of the request (the task's keyword arguments; see the README)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = MESSAGE_VERSION
    request_id: Annotated[NoControl, Field(min_length=1, max_length=REQUEST_ID_MAX)]
    job_id: Annotated[NoControl, Field(min_length=1), AfterValidator(_not_blank)]
    payload_ref: Annotated[str, Field(min_length=1)] | None = None
    meta: dict[Annotated[str, Field(min_length=1)], str] = Field(default_factory=dict)
    namespace: str | None = None
    detach: bool = False
    id_prefix_template: str = ""
    priority: int = Field(0, ge=0, le=PRIORITY_MAX)
    batch_id: NoControl | None = None

    @classmethod
    def from_message(
        cls, args: tuple[Any, ...], kwargs: Mapping[str, Any], task_id: str | None = None
    ) -> DispatchRequest:
        """Validate a task's arguments. The task ID must equal `request_id` when both exist."""
        if args:
            raise InvalidMessage(
                f"dispatch requests take keyword arguments only; got {len(args)} positional"
            )
        try:
            request = cls.model_validate(dict(kwargs))
        except PydanticValidationError as err:
            raise InvalidMessage(f"invalid dispatch request: {_describe(err)}") from None
        if task_id and task_id != request.request_id:
            raise InvalidMessage(
                f"task id {task_id!r} differs from request_id {request.request_id!r}"
            )
        return request

    @classmethod
    def from_producer(cls, fields: Mapping[str, Any]) -> DispatchRequest:
        """Validate a request as a producer states it (`meta` may be any mapping, or None);
        raises `InvalidRequest` naming the first problem."""
        data = dict(fields)
        meta = data.get("meta")
        if meta is None:
            data.pop("meta", None)
        elif isinstance(meta, Mapping):
            data["meta"] = dict(meta)
        try:
            return cls.model_validate(data)
        except PydanticValidationError as err:
            raise InvalidRequest(_in_producer_words(err.errors(include_url=False)[0])) from None

    def to_message(self) -> dict[str, Any]:
        """The task's keyword arguments: `v`, the IDs, and the other fields unless they
        are empty or their default (the compact form of the README's message format)."""
        body: dict[str, Any] = {
            "v": self.v,
            "request_id": self.request_id,
            "job_id": self.job_id,
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value:
                body[name] = value
        return body

    @property
    def idempotency_token(self) -> str:
        """Nomad's idempotency token: one child per request ID, whatever is redelivered."""
        return f"dispatchq-{self.request_id}"


_OPTIONAL = tuple(
    name for name in DispatchRequest.model_fields if name not in {"v", "request_id", "job_id"}
)


def _describe(err: PydanticValidationError) -> str:
    parts = []
    for problem in err.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in problem["loc"]) or "message"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


# The producer's texts for what the model refuses (the CLI and Python callers show them).
_PRODUCER_TEXTS = {
    "job_id": "job ID must be a non-empty string",
    "request_id": (
        f"request_id must be a string of 1 to {REQUEST_ID_MAX} characters, "
        "without control characters"
    ),
    "priority": f"priority must be an integer from 0 (inherit) to {PRIORITY_MAX}",
    "payload_ref": "payload_ref must be a non-empty string",
}


def _in_producer_words(problem: ErrorDetails) -> str:
    loc, given = problem["loc"], problem.get("input")
    name = str(loc[0]) if loc else "request"
    kind = type(given).__name__
    if name == "meta" and len(loc) == 1:
        return f"meta must be a mapping, not {kind}"
    if name == "meta" and len(loc) == 3:  # (meta, key, "[key]")
        return f"meta keys must be non-empty strings, got {given!r}"
    if name == "meta":
        return f"meta value for {loc[1]!r} must be a string, not {kind}"
    if problem["type"] == "value_error" and "control" in problem["msg"]:
        return f"{name} {problem['msg'].removeprefix('Value error, ')}"
    if name in _PRODUCER_TEXTS:
        return _PRODUCER_TEXTS[name]
    if problem["type"] == "bool_type":
        return f"{name} must be true or false, not {kind}"
    if problem["type"] == "string_type":
        return f"{name} must be a string, not {kind}"
    return f"{name}: {problem['msg']}"
