"""Cancelling a batch, for the CLI, the client library and the dashboard alike.

A cancel marks the batch `cancelled` (`BatchStore.cancel`): a worker that takes one of its
requests afterwards ends it as cancelled instead of dispatching it. Asked to, it also stops
the children already dispatched (Nomad's job stop, a DELETE of each child job): one read
of the batch's request records per 1,000 items, then one Nomad call per child.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from dispatchq.errors import DispatchqError
from dispatchq.nomad.client import NomadClient
from dispatchq.store import keys
from dispatchq.store.batches import BatchStore

CHUNK = 1000


@dataclass(frozen=True)
class Cancelled:
    stopped: int = 0
    """Children stopped."""
    errors: list[str] = field(default_factory=list)
    """One line per child that could not be stopped: `<child>: <reason>`."""


def cancel_batch(
    batches: BatchStore, nomad: NomadClient, batch_id: str, *, stop_dispatched: bool = False
) -> Cancelled | None:
    """Cancel the batch, and stop its dispatched children if asked; None for no such batch."""
    status = batches.status(batch_id)
    if status is None or not batches.cancel(batch_id):
        return None
    if not stop_dispatched:
        return Cancelled()
    return stop_children(batches, nomad, batch_id, status.namespace or None)


def stop_children(
    batches: BatchStore, nomad: NomadClient, batch_id: str, namespace: str | None
) -> Cancelled:
    """Stop every child the batch dispatched."""
    stopped, errors = 0, []
    ids = list(batches.request_ids(batch_id))
    for start in range(0, len(ids), CHUNK):
        pipe = batches.client.pipeline(transaction=False)
        for rid in ids[start : start + CHUNK]:
            pipe.hget(keys.request(rid), "dispatched_job_id")
        for raw in cast(list[bytes | None], pipe.execute()):
            if not raw:
                continue
            child = raw.decode()
            try:
                nomad.stop_job(child, namespace=namespace)
                stopped += 1
            except DispatchqError as err:
                errors.append(f"{child}: {err}")
    return Cancelled(stopped, errors)
