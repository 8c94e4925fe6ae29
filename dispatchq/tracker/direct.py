"""`dispatchq job dispatch -direct -wait`: follow one child in this process with the
tracker's decision (`decide`), by blocking queries on its allocations: one job, so one
connection for its wait is fine here (the queue's children share the tracker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dispatchq.errors import NomadError
from dispatchq.nomad.client import NomadClient
from dispatchq.tracker.decide import UNREACHABLE, Verdict, child_end, decide
from dispatchq.tracker.progress import changes

WAIT = 5.0
"""Seconds each blocking query may wait."""
UNREACHABLE_AFTER = 900.0
"""Seconds of failing reads before the wait ends `unreachable` (as the tracker's)."""


def follow_child(
    client: NomadClient,
    child: str,
    *,
    namespace: str | None,
    deadline: float | None,
    on_line: Callable[[str], None],
    verbose: bool = False,
    clock: Callable[[], float] = time.time,
) -> Verdict:
    """Follow `child` to its end (or `deadline`, Unix time), printing each change."""
    view: dict[str, Any] | None = None
    index, down_since = 0, None
    while True:
        now = clock()
        try:
            job: dict[str, Any] | None
            try:
                job = client.read_job(child, namespace=namespace)[0]
            except NomadError as err:
                if err.status != 404:
                    raise
                job = None
            wait = WAIT if deadline is None else max(0.01, min(WAIT, deadline - now))
            allocs: list[dict[str, Any]] = []
            if job is not None:
                allocs, index = client.job_allocations(
                    child, namespace=namespace, index=index, wait=wait
                )
                job = client.read_job(child, namespace=namespace)[0]
        except NomadError as err:
            if err.status == 404:
                job, allocs = None, []
            elif not err.retryable:
                raise
            else:
                down_since = down_since or now
                if now - down_since > UNREACHABLE_AFTER:
                    why = f"Nomad did not answer for {now - down_since:.0f}s: {err}"
                    return Verdict(True, "scheduled", "error", 1, UNREACHABLE, why, {})
                time.sleep(1.0)
                continue
        down_since = None
        verdict = decide(job, allocs, now=clock(), deadline=deadline)
        if job is not None:
            current = child_end(job, allocs, every=True)
            for line in changes(view, current, verbose=verbose):
                on_line(line)
            view = current
        if verdict.ended:
            return verdict
