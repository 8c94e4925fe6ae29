"""Dispatch requests for tests that do not care about the request ID."""

from __future__ import annotations

from typing import Any

from dispatchq.core.request import DispatchRequest


def request(job_id: str, request_id: str = "r-test", **fields: Any) -> DispatchRequest:
    """A valid `DispatchRequest` for `job_id` with `fields`."""
    return DispatchRequest.model_validate({"request_id": request_id, "job_id": job_id, **fields})


def message_body(request_id: str, job_id: str, **fields: Any) -> dict[str, Any]:
    """The keyword arguments of the queue message of such a request."""
    return request(job_id, request_id, **fields).to_message()
