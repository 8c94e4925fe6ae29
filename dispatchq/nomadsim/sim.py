"""The server's shared state: store, scheduler, ACLs, faults, dispatch record, counters."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from dispatchq.nomadsim.acl import AclStore
from dispatchq.nomadsim.config import SimConfig
from dispatchq.nomadsim.faults import FaultRule, Faults
from dispatchq.nomadsim.jsonshape import now_ns
from dispatchq.nomadsim.model import DispatchRecord
from dispatchq.nomadsim.scheduler import Scheduler
from dispatchq.nomadsim.state import Store


class Sim:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.store = Store(config.event_buffer)
        self.scheduler = Scheduler(self.store, config)
        self.acl = AclStore(config.acl)
        self.faults = Faults(config.latency_ms, [FaultRule.from_json(f) for f in config.faults])
        #: Every dispatch accepted, for the process lifetime (never garbage-collected).
        self.dispatches: list[DispatchRecord] = []
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.blocking_queries = 0
        #: SchedulerConfiguration.RejectJobRegistration (PUT /v1/operator/scheduler/...).
        self.reject_job_registration = False
        self.scheduler_config_index = 1
        self.streams = 0
        self.started = now_ns()
        self._add_default_namespace()

    def _add_default_namespace(self) -> None:
        with self.store.write("NamespaceUpsert") as w:
            self.store.namespaces["default"] = namespace_json("default", "Default shared namespace",
                                                              w.index)
            w.tables.add("namespaces")

    def stats(self) -> dict[str, Any]:
        store = self.store
        evals = Counter(e.status for e in store.evals.values())
        allocs = Counter(a.client_status for a in store.allocs.values())
        jobs = Counter(j["Status"] for j in store.jobs.values())
        return {
            "index": store.index,
            "requests": sum(self.requests.values()),
            "requests_by_route": dict(self.requests),
            "responses_by_status": dict(self.statuses),
            "dispatches": sum(1 for d in self.dispatches if not d.repeat),
            "idempotent_repeats": sum(1 for d in self.dispatches if d.repeat),
            "faults_injected": dict(self.faults.injected),
            "jobs": len(store.jobs),
            "jobs_by_status": dict(jobs),
            "evals": len(store.evals),
            "evals_by_status": dict(evals),
            "evals_queued": len(self.scheduler.queue),
            "evals_processed": self.scheduler.processed,
            "allocs": len(store.allocs),
            "allocs_by_client_status": dict(allocs),
            "client_runs": len(self.scheduler.clients.runs),
            "client_timers": len(self.scheduler.clients.timers),
            "blocking_queries": self.blocking_queries,
            "event_streams": self.streams,
        }

    def reset_counters(self, dispatches: bool) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.faults.injected.clear()
        self.faults.clear()
        if dispatches:
            self.dispatches.clear()


def namespace_json(name: str, description: str, index: int) -> dict[str, Any]:
    return {
        "Name": name,
        "Description": description,
        "Quota": "",
        "Capabilities": None,
        "Meta": None,
        "CreateIndex": index,
        "ModifyIndex": index,
    }
