"""A typed Nomad HTTP client for dispatching parameterized jobs and following evaluations.

Reads return `(body, index)`, where index is the `X-Nomad-Index` header, and accept
`index`/`wait` for blocking queries. Failures raise the classified errors of
`dispatchq.errors`. With a RetryPolicy the client retries retryable errors itself, except
a dispatch without an idempotency token after the request may have reached the server
(read timeout, reset connection, a 5xx other than "No cluster leader"): replaying that
could dispatch twice.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import structlog
from urllib3 import BaseHTTPResponse, Timeout
from urllib3.exceptions import HTTPError
from urllib3.util import make_headers

from dispatchq.config.secrets import register_secrets
from dispatchq.core.request import PAYLOAD_LIMIT, DispatchRequest
from dispatchq.core.retry import NO_RETRY, RetryPolicy
from dispatchq.errors import (
    NomadError,
    RateLimited,
    ServerError,
    ValidationError,
    classify_http,
)
from dispatchq.nomad.config import NomadConfig
from dispatchq.nomad.transport import UNIX_PREFIX, build_pool, transport_error

__all__ = [
    "DispatchResponse",
    "NomadClient",
    "NomadConfig",
]

log = structlog.get_logger(__name__)

# The server's default and maximum blocking wait; it adds up to wait/16 of jitter.
MAX_WAIT = 300.0

JSON = Any  # a decoded JSON value
STREAM_CHUNK = 64 * 1024


@dataclass(frozen=True)
class DispatchResponse:
    """The answer to a dispatch. `eval_id` is "" for a periodic parent or an idempotent
    repeat, which are not monitored."""

    dispatched_job_id: str
    eval_id: str
    eval_create_index: int
    job_create_index: int
    index: int


def check_payload_size(payload: bytes | None) -> None:
    """Refuse, before sending, a payload the server would refuse (same text as its own;
    DispatchPayloadSizeLimit: exactly 16384 decoded bytes is accepted, section 3, row 9)."""
    if payload is not None and len(payload) > PAYLOAD_LIMIT:
        raise ValidationError(f"Payload exceeds maximum size; {len(payload)} > {PAYLOAD_LIMIT}")


def _go_wait(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class NomadClient:
    """One pool of HTTP connections to one Nomad address (`dispatchq.nomad.transport`). Thread-
    and greenlet-safe; close it (or use `with`) to release the connections."""

    def __init__(
        self,
        config: NomadConfig,
        *,
        timeout: float = 10.0,
        pool_size: int = 10,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.on_rate_limited: Callable[[], object] | None = None
        """Called on every 429 (retried in place or not): where backpressure hooks in."""
        self.retry = retry or NO_RETRY
        self._sleep = sleep
        self._pool, self._base = build_pool(config, pool_size)
        self._socket_path = (
            config.address[len(UNIX_PREFIX) :] if config.address.startswith(UNIX_PREFIX) else ""
        )
        register_secrets([config.token, (config.basic_auth or ("", ""))[1]])
        # What the nomad CLI's Go client sends: gzip accepted, the token, basic auth; no
        # cookie jar.
        self._headers = {"User-Agent": "dispatchq", "Accept-Encoding": "gzip", "Accept": "*/*"}
        if config.token:
            self._headers["X-Nomad-Token"] = config.token
        if config.basic_auth:
            self._headers.update(make_headers(basic_auth=":".join(config.basic_auth)))
        self._json_headers = {**self._headers, "Content-Type": "application/json"}

    def __enter__(self) -> NomadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    # -- endpoints -------------------------------------------------------------------

    def dispatch(
        self,
        request: DispatchRequest,
        payload: bytes | None = None,
        *,
        idempotency_token: str | None = None,
    ) -> DispatchResponse:
        """`PUT /v1/job/<id>/dispatch`: create one child of the request's parameterized
        job, with `payload` (the request's payload reference, resolved) and, if given, the
        idempotency token (a worker's is `request.idempotency_token`; the CLI's, the
        user's)."""
        check_payload_size(payload)
        job_id, namespace, meta = request.job_id, request.namespace, request.meta
        body = {
            "JobID": job_id,
            "Payload": None if payload is None else base64.b64encode(payload).decode(),
            "Meta": dict(meta) if meta else None,
            "IdPrefixTemplate": request.id_prefix_template,
            "Priority": request.priority,
        }
        params = {"idempotency_token": idempotency_token} if idempotency_token else {}
        answer, index = self._call(
            "PUT",
            f"/v1/job/{quote(job_id, safe='')}/dispatch",
            params=params,
            body=body,
            namespace=namespace,
            replay_safe=bool(idempotency_token),
        )
        return DispatchResponse(
            dispatched_job_id=answer.get("DispatchedJobID") or "",
            eval_id=answer.get("EvalID") or "",
            eval_create_index=int(answer.get("EvalCreateIndex") or 0),
            job_create_index=int(answer.get("JobCreateIndex") or 0),
            index=int(answer.get("Index") or index),
        )

    def register_job(
        self, job: Mapping[str, Any], *, namespace: str | None = None
    ) -> tuple[str, int]:
        """`PUT /v1/jobs`: register a job; returns (eval ID or "", index)."""
        answer, index = self._call("PUT", "/v1/jobs", body={"Job": job}, namespace=namespace)
        return answer.get("EvalID") or "", index

    def read_job(
        self,
        job_id: str,
        *,
        namespace: str | None = None,
        index: int = 0,
        wait: float | None = None,
    ) -> tuple[dict[str, JSON], int]:
        """`GET /v1/job/<id>`; 404 raises NotFound."""
        path = f"/v1/job/{quote(job_id, safe='')}"
        body, last = self._call("GET", path, namespace=namespace, index=index, wait=wait)
        return body, last

    def job_summary(self, job_id: str, *, namespace: str | None = None) -> dict[str, JSON]:
        """`GET /v1/job/<id>/summary`: the JobSummary, with `Children` for a parent job."""
        path = f"/v1/job/{quote(job_id, safe='')}/summary"
        body, _ = self._call("GET", path, namespace=namespace)
        return dict(body or {})

    def job_evaluations(
        self, job_id: str, *, namespace: str | None = None
    ) -> list[dict[str, JSON]]:
        """`GET /v1/job/<id>/evaluations`: the job's evaluations (`[]` for an unknown job)."""
        path = f"/v1/job/{quote(job_id, safe='')}/evaluations"
        body, _ = self._call("GET", path, namespace=namespace)
        return list(body or [])

    def job_allocations(
        self,
        job_id: str,
        *,
        namespace: str | None = None,
        index: int = 0,
        wait: float | None = None,
    ) -> tuple[list[dict[str, JSON]], int]:
        """`GET /v1/job/<id>/allocations`: AllocListStubs with TaskStates, NextAllocation,
        RescheduleTracker and FollowupEvalID (`[]` for a job without allocations), and the
        allocations' index; with `index`, a blocking query that answers once the index
        passes it (or `wait` seconds pass)."""
        path = f"/v1/job/{quote(job_id, safe='')}/allocations"
        body, last = self._call("GET", path, namespace=namespace, index=index, wait=wait)
        return list(body or []), last

    def read_evaluation(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[dict[str, JSON], int]:
        """`GET /v1/evaluation/<id>`; the index is the eval's ModifyIndex."""
        path = f"/v1/evaluation/{quote(eval_id, safe='')}"
        body, last = self._call("GET", path, index=index, wait=wait)
        return body, last

    def evaluation_allocations(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[dict[str, JSON]], int]:
        """`GET /v1/evaluation/<id>/allocations`: AllocListStubs, possibly `[]`."""
        path = f"/v1/evaluation/{quote(eval_id, safe='')}/allocations"
        body, last = self._call("GET", path, index=index, wait=wait)
        return list(body or []), last

    def event_stream(
        self,
        *,
        topics: Sequence[str],
        index: int = 0,
        namespace: str | None = None,
        heartbeat: float = 30.0,
        on_open: Callable[[BaseHTTPResponse], None] | None = None,
        skip: Callable[[bytes], bool] | None = None,
    ) -> Generator[tuple[int, list[dict[str, JSON]]], None, None]:
        """`GET /v1/event/stream`: (index, events) per ndjson batch, heartbeats skipped,
        and the batches `skip` says so of (given the raw line: not parsed at all).

        The stream holds one pooled connection until the iterator is closed; `on_open`
        receives the response, so another thread can close it to end the stream at once.
        A stream silent for longer than two heartbeats is dead: TransportError."""
        query: list[tuple[str, str]] = [("index", str(index))]
        query += [("topic", topic) for topic in topics]
        if self.config.region:
            query.append(("region", self.config.region))
        if namespace or self.config.namespace:
            query.append(("namespace", namespace or self.config.namespace))
        target = f"/v1/event/stream?{urlencode(query)}"
        timeout = Timeout(connect=self.timeout, read=2 * heartbeat + 5)
        response = self._open("GET", target, None, timeout, preload=False)
        try:
            if not 200 <= response.status < 300:
                raise classify_http(response.status, _text(response.data))
            if on_open is not None:
                on_open(response)
            pending = b""
            for chunk in response.stream(STREAM_CHUNK):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.strip() or (skip is not None and skip(line)):
                        continue
                    batch = orjson.loads(line)  # a few KB per dispatch, read by every worker
                    if batch.get("Events"):
                        yield int(batch.get("Index") or 0), batch["Events"]
        except (HTTPError, OSError) as exc:
            raise transport_error("GET", self._base + target, exc, self._socket_path) from exc
        except ValueError as exc:  # orjson.JSONDecodeError included
            raise ServerError(f"invalid JSON in the event stream: {exc}") from exc
        finally:
            response.close()  # with its connection: a stream left mid-way is not reusable
            response.release_conn()

    def current_index(self) -> int:
        """The cluster's latest index, from a cheap read (one evaluation listed)."""
        _, index = self._call("GET", "/v1/evaluations", params={"per_page": "1"})
        return index

    def stop_job(self, job_id: str, *, namespace: str | None = None, purge: bool = False) -> str:
        """`DELETE /v1/job/<id>`; returns the deregistration eval ID."""
        params = {"purge": "true"} if purge else {}
        path = f"/v1/job/{quote(job_id, safe='')}"
        answer, _ = self._call("DELETE", path, params=params, namespace=namespace)
        return str(answer.get("EvalID") or "")

    # -- plumbing --------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JSON = None,
        namespace: str | None = None,
        index: int = 0,
        wait: float | None = None,
        replay_safe: bool = True,
    ) -> tuple[JSON, int]:
        """One request with the client's retry policy; `replay_safe=False` limits retries
        to errors raised before the server could act."""
        query = dict(params or {})
        if self.config.region:
            query["region"] = self.config.region
        if namespace or self.config.namespace:
            query["namespace"] = namespace or self.config.namespace
        read_timeout = self.timeout
        if index > 0:
            blocking = min(wait if wait is not None else MAX_WAIT, MAX_WAIT)
            query["index"] = str(index)
            query["wait"] = _go_wait(blocking)
            read_timeout += blocking * 17 / 16
        retry = 0
        while True:
            try:
                return self._send(method, path, query, body, (self.timeout, read_timeout))
            except NomadError as err:
                if isinstance(err, RateLimited) and self.on_rate_limited is not None:
                    self.on_rate_limited()
                retry += 1
                if not (
                    err.retryable
                    and retry < self.retry.attempts
                    and (replay_safe or not err.maybe_applied)
                ):
                    raise
                delay = self.retry.delay(retry)
                log.info(
                    "nomad.retry",
                    method=method,
                    path=path,
                    retry=retry,
                    delay=round(delay, 3),
                    error_kind=err.kind,
                    status=err.status,
                )
                self._sleep(delay)

    def _open(
        self, method: str, target: str, body: JSON, timeout: Timeout, *, preload: bool = True
    ) -> BaseHTTPResponse:
        """One HTTP exchange on the pool: no retries (the caller's policy decides), no
        redirects (Nomad's API answers where it is asked)."""
        data = None if body is None else orjson.dumps(body)
        try:
            return self._pool.urlopen(
                method,
                target,
                body=data,
                headers=self._headers if data is None else self._json_headers,
                retries=False,
                redirect=False,
                timeout=timeout,
                preload_content=preload,
            )
        except (HTTPError, OSError) as exc:
            raise transport_error(method, self._base + target, exc, self._socket_path) from exc

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: JSON,
        timeout: tuple[float, float],
    ) -> tuple[JSON, int]:
        target = f"{path}?{urlencode(query)}" if query else path
        response = self._open(method, target, body, Timeout(connect=timeout[0], read=timeout[1]))
        if not 200 <= response.status < 300:
            raise classify_http(response.status, _text(response.data))
        try:
            index = int(response.headers.get("X-Nomad-Index") or 0)
        except ValueError:
            index = 0
        try:
            decoded = orjson.loads(response.data)
        except ValueError as exc:
            error = ServerError(f"invalid JSON in the response to {method} {path}: {exc}")
            error.maybe_applied = method != "GET"
            raise error from exc
        return decoded, index


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
