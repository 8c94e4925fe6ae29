"""The dispatch request: one model from the producer to Nomad, and the limits it obeys.

`DispatchRequest` is what a producer validates and serialises (`from_producer`,
`to_message`), what a queue message carries (the task's keyword arguments: docs/formats.md,
"Message format, version 1"), what the worker parses (`from_message`) and what the Nomad
client sends (`NomadClient.dispatch`). A new field is declared here once; the code that
uses it and its tests are all else it needs.

A message from any producer (ours, or a service in another language) is checked here
before anything else happens; what does not fit becomes an `InvalidMessage` whose text says
which field is wrong and how, and the request ends with exit code 1 instead of a crash.
Our own producer refuses the same things earlier, as `InvalidRequest`, in its own words.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from dispatchq.errors import InvalidMessage as InvalidMessage
from dispatchq.errors import InvalidRequest

MESSAGE_VERSION: Literal[1] = 1
"""The `v` field of a request; bumped only with an incompatible change."""
PAYLOAD_LIMIT = 16 * 1024
"""Nomad's DispatchPayloadSizeLimit: decoded bytes; exactly 16384 is accepted."""
REQUEST_ID_MAX = 200
"""Characters of a request ID (and of a batch ID) at most."""
JOB_ID_MAX = 256
"""Characters of a job ID at most (dispatchq's bound: it is in every outcome and event)."""
PRIORITY_MAX = 100
"""Nomad's highest job priority; 0 means the parent's."""
UNTIL_SCHEDULED: Literal["scheduled"] = "scheduled"
"""`until`'s default: the request is done when its evaluation is (placed, or blocked)."""
UNTIL_FINISHED: Literal["finished"] = "finished"
"""`until` finished: the request is done when its child job is (`dispatchq.tracker`)."""

META_KEYS_MAX = 64
"""Meta keys of a request at most."""
META_KEY_MAX = 128
"""Characters of a meta key at most."""
META_MAX = 16 * 1024
"""Characters of a request's meta at most, keys and values together: the size of a
payload, which is what Nomad means for data. Meta is copied into the child job, its
outcome's error text when Nomad refuses it, its completion event and webhook body."""

NOTIFY_URL_MAX = 2048
"""Characters of a notify_url at most."""
_NOTIFY_URL = r"^https?://[^\x00-\x20]+$"

_CONTROL = re.compile("[\x00-\x1f]")
# As patterns, checked by pydantic-core without a call into Python (a batch enqueue
# validates thousands of requests). \x1f separates the request and batch IDs in the
# enqueue script's arguments.
_NO_CONTROL = r"^[^\x00-\x1f]*$"
_NOT_BLANK = r"^[^\x00-\x1f]*[^\x00-\x1f\s][^\x00-\x1f]*$"

NoControl = Annotated[str, Field(pattern=_NO_CONTROL)]


def _meta_size(meta: dict[str, str]) -> dict[str, str]:
    if meta and sum(len(k) + len(v) for k, v in meta.items()) > META_MAX:
        raise ValueError(f"meta holds more than {META_MAX} characters (keys and values)")
    return meta

TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""A tenant groups batches for fair queueing (`dispatchq.broker.fetch`): 1 to 64 letters, digits,
'_', '.' or '-' (it is part of a Redis key name, `keys.tenant_ring`)."""
TENANT_TEXT = "tenant must be 1 to 64 letters, digits, '_', '.' or '-'"

NAMESPACE_PATTERN = r"^[A-Za-z0-9-]{1,128}$"
"""Nomad's rule for a namespace's name (1 to 128 letters, digits or '-'), checked here
because it is part of a Redis key name, before a second name (`keys.children`)."""


class DispatchRequest(BaseModel):
    """Version 1 of the request (the task's keyword arguments; docs/formats.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = MESSAGE_VERSION
    request_id: Annotated[NoControl, Field(min_length=1, max_length=REQUEST_ID_MAX)]
    job_id: Annotated[str, Field(min_length=1, max_length=JOB_ID_MAX, pattern=_NOT_BLANK)]
    payload_ref: Annotated[str, Field(min_length=1)] | None = None
    meta: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=META_KEY_MAX)], str],
        Field(max_length=META_KEYS_MAX),
        AfterValidator(_meta_size),
    ] = Field(default_factory=dict)
    namespace: Annotated[str, Field(pattern=NAMESPACE_PATTERN)] | None = None
    detach: bool = False
    id_prefix_template: str = ""
    priority: int = Field(0, ge=0, le=PRIORITY_MAX)
    batch_id: Annotated[NoControl, Field(max_length=REQUEST_ID_MAX)] | None = None
    notify_url: Annotated[str, Field(max_length=NOTIFY_URL_MAX, pattern=_NOTIFY_URL)] | None = None
    """Where the notifier POSTs this request's completion event (`dispatchq.notifier.webhooks`)."""
    tenant: Annotated[str, Field(pattern=TENANT_PATTERN)] | None = None
    until: Literal["scheduled", "finished"] = "scheduled"
    wait_timeout: Annotated[float, Field(gt=0)] | None = None

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
        [request] = cls.all_from_producer([dict(fields)])
        return request

    @classmethod
    def all_from_producer(cls, items: list[dict[str, Any]]) -> list[DispatchRequest]:
        """`from_producer` for many requests at once (a batch: one call into pydantic-core
        for all), whose dicts it may change; raises `InvalidRequest` for the first problem
        of the first bad one."""
        for data in items:
            meta = data.get("meta", _MISSING)
            if meta is None:
                del data["meta"]
            elif type(meta) is not dict and isinstance(meta, Mapping):
                data["meta"] = dict(meta)
        try:
            return _ALL.validate_python(items)
        except PydanticValidationError as err:
            problem = err.errors(include_url=False)[0]
            problem["loc"] = problem["loc"][1:]  # without the index in the list
            raise InvalidRequest(_in_producer_words(problem)) from None

    def to_message(self) -> dict[str, Any]:
        """The task's keyword arguments: `v`, the IDs, and the other fields unless they
        are empty or their default (the compact form of the message format, docs/formats.md), in
        the model's order."""
        # `v` and the IDs are never empty (validated); every default is falsy but `until`'s,
        # left out too, so that a request as of version 1 is the message it always was.
        return {
            name: value
            for name, value in self.__dict__.items()
            if value and not (name == "until" and value == UNTIL_SCHEDULED)
        }

    @property
    def follows_child(self) -> bool:
        """Whether the request is done only when its child job is (`until` finished)."""
        return self.until == UNTIL_FINISHED

    @property
    def idempotency_token(self) -> str:
        """Nomad's idempotency token: one child per request ID, whatever is redelivered."""
        return f"dispatchq-{self.request_id}"


def check_notify_url(url: str) -> str:
    """A batch's notify_url, checked as a request's is; raises `InvalidRequest`."""
    if len(url) > NOTIFY_URL_MAX or not re.fullmatch(_NOTIFY_URL, url):
        raise InvalidRequest(_PRODUCER_TEXTS["notify_url"])
    return url


def is_request_id(text: str) -> bool:
    """Whether `text` could name a request (what the model accepts as `request_id`)."""
    return 0 < len(text) <= REQUEST_ID_MAX and not _CONTROL.search(text)


def request_digest(kwargs: Mapping[str, Any]) -> str:
    """What a request's message says, in 24 hex digits: the producer keeps it in the record
    at enqueue time (`DispatchRequest.to_message`'s form), the worker computes it from the
    arguments it received, and a message whose digest differs from the record's is not
    that request (a second message reusing its ID, a message claiming its batch): it is
    refused, and the request's record and outcome are left alone. A redelivery, a retry
    and a replay carry the same arguments, so the same digest. Keys sorted, so any
    producer's key order gives one digest; a value that cannot be encoded gives one
    that matches nothing."""
    try:
        canonical = orjson.dumps(
            kwargs if type(kwargs) is dict else dict(kwargs), option=orjson.OPT_SORT_KEYS
        )
    except (TypeError, orjson.JSONEncodeError):
        return UNREADABLE
    return hashlib.blake2b(canonical, digest_size=12).hexdigest()


UNREADABLE = "-"
"""The digest of arguments that are not JSON (matches no record's)."""

_ALL = TypeAdapter(list[DispatchRequest])
_MISSING = object()


def _short(part: str | int) -> str:
    """A place in a message, as an error text names it: a meta key may be long."""
    text = str(part)
    return text if len(text) <= 40 else f"{text[:40]}..."


def _describe(err: PydanticValidationError) -> str:
    parts = []
    for problem in err.errors(include_url=False, include_input=False):
        where = ".".join(_short(p) for p in problem["loc"]) or "message"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


# The producer's texts for what the model refuses (the CLI and Python callers show them).
_PRODUCER_TEXTS = {
    "job_id": f"job ID must be a non-empty string of at most {JOB_ID_MAX} characters",
    "request_id": (
        f"request_id must be a string of 1 to {REQUEST_ID_MAX} characters, "
        "without control characters"
    ),
    "priority": f"priority must be an integer from 0 (inherit) to {PRIORITY_MAX}",
    "payload_ref": "payload_ref must be a non-empty string",
    "notify_url": (
        f"notify_url must be an http:// or https:// URL of at most {NOTIFY_URL_MAX} "
        "characters, without spaces or control characters"
    ),
    "tenant": TENANT_TEXT,
    "until": "until must be 'scheduled' or 'finished'",
    "wait_timeout": "wait_timeout must be a number of seconds above 0",
}


def _in_producer_words(problem: ErrorDetails) -> str:
    loc, given = problem["loc"], problem.get("input")
    name = str(loc[0]) if loc else "request"
    kind = type(given).__name__
    if name == "meta" and len(loc) == 1 and problem["type"] == "too_long":
        return f"meta has more than {META_KEYS_MAX} keys"
    if name == "meta" and len(loc) == 1 and problem["type"] == "value_error":
        return f"meta holds more than {META_MAX} characters (keys and values together)"
    if name == "meta" and len(loc) == 1:
        return f"meta must be a mapping, not {kind}"
    if name == "meta" and len(loc) == 3 and problem["type"] == "string_too_long":
        return f"meta keys must be at most {META_KEY_MAX} characters, got {given[:40]!r}..."
    if name == "meta" and len(loc) == 3:  # (meta, key, "[key]")
        return f"meta keys must be non-empty strings, got {given!r}"
    if name == "meta":
        return f"meta value for {loc[1]!r} must be a string, not {kind}"
    if problem["type"] == "string_pattern_mismatch" and _CONTROL.search(str(given)):
        return f"{name} must not contain control characters"
    if name == "namespace" and problem["type"] == "string_pattern_mismatch":
        return "namespace must be 1 to 128 letters, digits or '-' (Nomad's rule)"
    if name in _PRODUCER_TEXTS:
        return _PRODUCER_TEXTS[name]
    if problem["type"] == "bool_type":
        return f"{name} must be true or false, not {kind}"
    if problem["type"] == "string_type":
        return f"{name} must be a string, not {kind}"
    return f"{name}: {problem['msg']}"
