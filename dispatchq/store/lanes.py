"""Fair queueing, the read side: which lane a message belongs to, and the backlog per lane,
tenant and batch (`dispatchq queue`, `dispatchq.worker.metrics`).

The lanes themselves (keys in `dispatchq.store.keys`, scripts `lua/_lanes.lua`, `fetch_fair.lua`)
are written by the producer's enqueue and the worker's fetch (`dispatchq.broker.fetch`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import redis

from dispatchq.store import keys

INTERACTIVE = "interactive"
"""The lane of requests in no batch: the documented queue list."""
NO_TENANT = "-"
"""How a batch submitted without a tenant is shown."""


def lane_of(message: Any, task: str) -> tuple[str, str] | None:
    """(batch ID, tenant or '') of a message of `task` (kombu's envelope, body in base64)
    whose request belongs to a batch; None for any other message (it goes to the queue)."""
    try:
        if message["headers"]["task"] != task:
            return None
        kwargs = json.loads(base64.b64decode(message["body"]))[1]
        batch_id, tenant = kwargs.get("batch_id"), kwargs.get("tenant") or ""
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, binascii.Error):
        return None
    if not isinstance(batch_id, str) or not batch_id or not isinstance(tenant, str):
        return None
    return batch_id, tenant


@dataclass(frozen=True)
class Backlog:
    """Messages waiting per lane: the interactive lane, and each registered batch's lane
    by tenant (in flight, fetched but not acknowledged, are not counted)."""

    interactive: int
    batches: dict[str, dict[str, int]] = field(default_factory=dict)
    """tenant (NO_TENANT for none) -> batch ID -> messages waiting."""

    @property
    def tenants(self) -> dict[str, int]:
        return {tenant: sum(b.values()) for tenant, b in self.batches.items()}

    @property
    def total(self) -> int:
        return self.interactive + sum(self.tenants.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "interactive": self.interactive,
            "tenants": [
                {"tenant": tenant, "waiting": sum(b.values()),
                 "batches": [{"batch_id": bid, "waiting": n} for bid, n in sorted(b.items())]}
                for tenant, b in sorted(self.batches.items())
            ],
            "total": self.total,
        }  # fmt: skip


def backlog(client: redis.Redis, queue: str) -> Backlog:
    """The backlog of a queue's lanes: two round trips."""
    registered: dict[bytes, bytes] = client.hgetall(keys.lanes(queue))  # type: ignore[assignment]
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    batch_ids = [b.decode() for b in registered]
    for batch_id in batch_ids:
        pipe.llen(keys.lane(batch_id))
    interactive, *lengths = pipe.execute()
    batches: dict[str, dict[str, int]] = {}
    for batch_id, length in zip(batch_ids, lengths, strict=True):
        tenant = registered[batch_id.encode()].decode() or NO_TENANT
        batches.setdefault(tenant, {})[batch_id] = int(length)
    return Backlog(int(interactive), batches)
