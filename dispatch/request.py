"""The dispatch request as it travels in a queue message, validated on arrival.

A message from any producer (ours, or a service in another language) is checked here
before anything else happens; what does not fit becomes an `InvalidMessage` whose text says
which field is wrong and how, and the request ends with exit code 1 instead of a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from dispatch.errors import DispatchqError


class InvalidMessage(DispatchqError):
    """A queue message that is not a valid dispatch request. Permanent."""

    kind = "invalid_request"
    retryable = False


class DispatchRequest(BaseModel):
    """Version 1 of the request (the task's keyword arguments; see the README)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = 1
    request_id: str = Field(min_length=1, max_length=200)
    job_id: str = Field(min_length=1)
    payload_ref: str | None = None
    meta: dict[str, str] = Field(default_factory=dict)
    namespace: str | None = None
    detach: bool = False
    id_prefix_template: str = ""
    priority: int = Field(0, ge=0, le=100)
    batch_id: str | None = None

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

    @property
    def idempotency_token(self) -> str:
        """Nomad's idempotency token: one child per request ID, whatever is redelivered."""
        return f"dispatchq-{self.request_id}"


def _describe(err: PydanticValidationError) -> str:
    parts = []
    for problem in err.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in problem["loc"]) or "message"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
