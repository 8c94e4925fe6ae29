"""Reading outcomes out of Celery's result metadata (the JSON at `celery-task-meta-<id>`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatchq.core.outcome import Outcome


def outcome_from_meta(meta: Mapping[str, Any], job_id: str = "") -> Outcome | None:
    """The outcome in a Celery result meta, or None while the task is not finished."""
    status = meta.get("status")
    if status == "SUCCESS" and isinstance(meta.get("result"), dict):
        return Outcome.from_json(meta["result"])
    if status in ("FAILURE", "REVOKED"):
        exc = meta.get("result") or {}
        reason = exc.get("exc_message") if isinstance(exc, dict) else exc
        text = " ".join(map(str, reason)) if isinstance(reason, list) else str(reason)
        exc_type = exc.get("exc_type", status) if isinstance(exc, dict) else status
        return Outcome.failed(
            job_id, kind="internal", message=f"worker task failed: {exc_type}: {text}"
        )
    return None
