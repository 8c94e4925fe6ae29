"""Dead-lettering from the worker: the task (bad arguments) and the consumer
(`dispatchq.broker.poison`)
put what no retry can fix on the dead-letter list (`dispatchq.store.dlq`), with the reason."""

from __future__ import annotations

from typing import Any

import redis
import structlog

from dispatchq.store import dlq

log = structlog.get_logger(__name__)


def dead_letter(
    client: redis.Redis,
    *,
    reason: str,
    kind: str = "invalid_request",
    task_id: str | None = None,
    task: str | None = None,
    queue: str | None = None,
    message: str | None = None,
    **details: Any,
) -> None:
    """Append one entry to the dead-letter list and log it. `message` is the raw queue
    message when there is one (kept for `dispatchq dlq replay`); `details` are kept for
    the reader. The entry is bounded in size (`dlq.encode`), the log line too."""
    entry = dlq.DeadLetter(
        reason=reason,
        kind=kind,
        task_id=task_id,
        task=task,
        queue=queue,
        message=None if message is None else dlq.truncate(message),
        details=details,
    )
    dlq.append(client, entry)
    log.warning(
        "message.dead_lettered",
        kind=kind,
        reason=dlq.truncate(reason, 512),
        task_id=None if task_id is None else dlq.truncate(task_id, 128),
        queue=queue,
    )
