"""Following children to their end: one tracker holding 20,000 children, and 500 ending
within one second, against Nomad 2.0.1's approach (one blocking-query loop per job).

    .venv/bin/python -m bench.follow_scale [--count 20000] [--burst 500] [--runs 3]

Children are dispatched to nomadsim straight from here (the worker's part, dispatch and
handoff, is `RecordStore.hand_off`, as a worker calls it), with mock_driver tasks that run
an hour; one `dispatchq tracker` process follows them. Printed:

- Redis bytes per followed child: `used_memory` before and after the handoffs, over the
  count (the record with its outcome so far, and the follow set's entry), and MEMORY
  USAGE of one record and of one final outcome (the limit: 1 KB per child);
- the tracker's RSS once it has checked every child (every record says `running`; the
  limit: 250 MB), its CPU per check meanwhile, and its CPU over 20 s of the steady state:
  forced re-checks at `FollowPolicy.sweep_rate` (the bench makes them due at that rate,
  as they come once a sweep has passed), nothing ending; the burst below comes on top;
- then `--burst` children whose tasks all end within one second: for each, nomadsim's
  terminal event (the Allocation event with a terminal ClientStatus, on this process's own
  event stream; timed by the allocation's ModifyTime) to the outcome stored (its
  `date_done`), p50 and p99
  (the limit: p99 1 s); and the baseline in the same run: as many threads, each running
  Nomad 2.0.1's `-wait` loop (a blocking query on the job's allocations until every one
  is terminal), on the same kind of children: the same latency, and its memory and
  connections per followed job.

Each of `--runs` runs starts a fresh redis-server, nomadsim and tracker and measures ours,
then the baseline; the medians are printed, each run's figure beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import redis
import requests

from bench.procfs import cpu_seconds, memory, tcp_connections, tree
from dispatchq.core.outcome import OutcomeRecorder
from dispatchq.core.request import DispatchRequest
from dispatchq.core.transcript import AllocationPlaced, Dispatched, EvalFinished, MonitorStarted
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.errors import NomadError
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.store import keys
from dispatchq.store.records import RecordStore
from dispatchq.tracker.follower import FollowPolicy
from dispatchq.tracker.leader import reconcile_all

JOB_ID = "bench-follow"
JOB: dict[str, Any] = {
    "ID": "bench-follow", "Name": "bench-follow", "Type": "batch", "Datacenters": ["dc1"],
    "Meta": {"run_for": "1h", "exit_code": "0"},
    "ParameterizedJob": {"Payload": "optional", "MetaOptional": ["run_for", "exit_code"]},
    "TaskGroups": [{
        "Name": "encode", "Count": 1,
        "RestartPolicy": {"Attempts": 0}, "ReschedulePolicy": {"Attempts": 0},
        "Tasks": [{"Name": "ffmpeg", "Driver": "mock_driver",
                   "Config": {"run_for": "${NOMAD_META_run_for}",
                              "exit_code": "${NOMAD_META_exit_code}"},
                   "Resources": {"CPU": 1, "MemoryMB": 1}}],
    }],
}  # fmt: skip
TERMINAL = {"complete", "failed", "lost"}
STEADY = 20.0
"""Seconds over which the tracker's CPU is measured once every child has been checked
(its forced re-checks and the stream, nothing ending)."""


def _all_running(r: redis.Redis, request_ids: list[str]) -> bool:
    """Whether the tracker has checked every one (the hand-off says `scheduled`; a check of
    a running child, `running`)."""
    pipe = r.pipeline(transaction=False)
    for rid in request_ids:
        pipe.hget(keys.request(rid), "state")
    return all(state == b"running" for state in pipe.execute())


def dispatch_all(
    client: NomadClient, store: RecordStore, prefix: str, metas: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """Dispatch and hand off each: [(request ID, child job ID)]."""

    def one(n: int) -> tuple[str, str]:
        rid = f"{prefix}-{n:06d}"
        request = DispatchRequest(request_id=rid, job_id=JOB_ID, meta=metas[n],
                                  until="finished")  # fmt: skip
        answer = client.dispatch(request, None, idempotency_token=request.idempotency_token)
        store.mark_dispatched(rid, answer.dispatched_job_id, answer.eval_id)
        recorder = OutcomeRecorder(JOB_ID)
        recorder.emit(Dispatched(answer.dispatched_job_id, answer.eval_id, True))
        recorder.emit(MonitorStarted(answer.eval_id))
        recorder.emit(AllocationPlaced("a" * 36, "n" * 36, "encode", "pending", False))
        recorder.emit(EvalFinished(answer.eval_id, "complete", False))
        store.hand_off(rid, "", recorder.outcome().to_stored(), None)
        return rid, answer.dispatched_job_id

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(len(metas))))


class TerminalWatch:
    """nomadsim's event stream, read here: when each child's alloc turned terminal, by the
    allocation's own `ModifyTime` (the server's clock at the change, Unix nanoseconds), not
    when the event reached this process: under load this process reads its stream late,
    later than a blocking query returns, which made the baseline's latency negative."""

    def __init__(self, client: NomadClient) -> None:
        self.seen: dict[str, float] = {}
        self._client = client
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        start = self._client.current_index()
        stream = self._client.event_stream(topics=["Allocation"], index=start + 1)
        try:
            for _index, events in stream:
                now = time.time()
                for event in events:
                    alloc = (event.get("Payload") or {}).get("Allocation") or {}
                    if alloc.get("ClientStatus") in TERMINAL:
                        changed = alloc.get("ModifyTime")
                        at = changed / 1e9 if isinstance(changed, int) and changed > 0 else now
                        self.seen.setdefault(str(alloc.get("JobID")), at)
        except NomadError:
            return  # nomadsim stopped at the end of the bench


def nomad_201_wait(address: str, child: str, seen: dict[str, float]) -> None:
    """Nomad 2.0.1's `job dispatch -wait`: blocking queries on the job's allocations until
    every allocation is terminal; one connection (a session) per job."""
    session, index = requests.Session(), 0
    while True:
        response = session.get(
            f"{address}/v1/job/{child}/allocations", params={"index": str(index), "wait": "300s"},
            timeout=330,
        )  # fmt: skip
        index = int(response.headers.get("X-Nomad-Index", index))
        allocs = response.json()
        if allocs and all(a["ClientStatus"] in TERMINAL for a in allocs):
            seen[child] = time.time()
            session.close()
            return


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _burst_metas(count: int, end_in: float) -> tuple[list[dict[str, str]], float]:
    """Metas whose tasks end within one second, `end_in` seconds (about) from now."""
    end_at = time.time() + end_in
    return [{"run_for": f"{int(end_in * 1000) + (n * 997) % 1000}ms"} for n in range(count)], end_at


@dataclass
class RunFigures:
    """One run's figures (ours and the baseline's)."""

    per_child: float
    one_record: int
    outcome_bytes: int
    outcome_json: int
    rss: int
    checked_in: float
    per_check: float
    steady_cpu: float
    tracker_connections: int
    ours: list[float]
    base: list[float]
    base_bytes_per_job: float
    base_connections: int

    @property
    def p50(self) -> float:
        return _pct(self.ours, 0.5)

    @property
    def p99(self) -> float:
        return _pct(self.ours, 0.99)


SIM_ARGS = ["--nodes", "10", "--node-cpu", "10000000", "--node-memory", "10000000",
            "--start-time", "5ms", "--gc-after", "0"]  # fmt: skip


def one_run(count: int, burst: int, logs: Path, run: int) -> RunFigures:  # noqa: PLR0915
    """A fresh redis-server, nomadsim and tracker: 20,000 followed, then the burst, then
    the baseline's loops on a burst of the same kind."""
    with RedisServer() as server, NomadSimProcess(args=SIM_ARGS) as sim:
        requests.put(f"{sim.address}/v1/jobs", json={"Job": JOB}, timeout=10).raise_for_status()
        r = redis.Redis.from_url(server.url)
        client = NomadClient(NomadConfig(address=sim.address), pool_size=16)
        store = RecordStore(r, 86_400)
        before = int(r.info("memory")["used_memory"])
        started = time.monotonic()
        followed = dispatch_all(client, store, "scale", [{}] * count)
        per_child = (int(r.info("memory")["used_memory"]) - before) / count
        one_record = int(r.memory_usage(keys.request(followed[0][0])) or 0)
        print(f"  run {run}: dispatched and handed off {count} in "
              f"{time.monotonic() - started:.0f}s", flush=True)  # fmt: skip
        env = {"DISPATCHQ_REDIS_URL": server.url, "NOMAD_ADDR": sim.address,
               "DISPATCHQ_LOG_FORMAT": "json", "DISPATCHQ_LOG_LEVEL": "WARNING"}  # fmt: skip
        with TrackerProcess(env=env, log_path=logs / f"tracker-{run}.log") as tracker:
            assert tracker.process is not None
            started, first_cpu = time.monotonic(), cpu_seconds(tree(tracker.process.pid))
            while not _all_running(r, [rid for rid, _ in followed]):
                time.sleep(2.0)
            checked_in = time.monotonic() - started
            pids = tree(tracker.process.pid)
            per_check = (cpu_seconds(pids) - first_cpu) / count
            rss = memory(pids).rss
            # the steady state: forced re-checks at the tracker's sweep rate (at 100,000
            # the first are ~1,000 s away), measured, then the burst on top of them
            reconcile_all(r, FollowPolicy.sweep_rate, time.time())
            cpu0 = cpu_seconds(pids)
            time.sleep(STEADY)
            steady_cpu = (cpu_seconds(pids) - cpu0) / STEADY
            tracker_connections = sum(tcp_connections(pids, sim.port).values())
            watch = TerminalWatch(client)
            time.sleep(0.5)
            metas, _ = _burst_metas(burst, 8.0)
            ended = dispatch_all(client, store, f"burst{run}", metas)
            deadline = time.monotonic() + 120
            while any(r.hget(keys.request(rid), "state") != b"done" for rid, _ in ended):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            ours = []
            for rid, child in ended:
                meta = r.get(keys.celery_result(rid))
                if meta and child in watch.seen:
                    stored = datetime.fromisoformat(json.loads(meta)["date_done"]).timestamp()
                    ours.append(stored - watch.seen[child])
            sample = r.get(keys.celery_result(ended[0][0])) or b""
            outcome_bytes = int(r.memory_usage(keys.celery_result(ended[0][0])) or 0)
            # the baseline: one blocking-query loop per job, same kind of children
            metas, _ = _burst_metas(burst, 8.0)
            me = [os.getpid()]
            rss_before = memory(me).rss
            conns_before = sum(tcp_connections(me, sim.port).values())
            children = [c for _rid, c in dispatch_all(client, store, f"base{run}", metas)]
            r.delete(keys.FOLLOW)  # the tracker leaves these to the baseline
            seen: dict[str, float] = {}
            threads = [threading.Thread(target=nomad_201_wait, args=(sim.address, c, seen),
                                        daemon=True) for c in children]  # fmt: skip
            for t in threads:
                t.start()
            time.sleep(2)
            base_bytes = (memory(me).rss - rss_before) / max(1, burst)
            base_connections = sum(tcp_connections(me, sim.port).values()) - conns_before
            for t in threads:
                t.join(120)
            base = [seen[c] - watch.seen[c] for c in children if c in seen and c in watch.seen]
        client.close()
        r.close()
    return RunFigures(per_child, one_record, outcome_bytes, len(sample), rss, checked_in,
                      per_check, steady_cpu, tracker_connections, ours, base, base_bytes,
                      base_connections)  # fmt: skip


def _runs(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh stack; "
                        "medians are printed (default %(default)s)")  # fmt: skip
    args = parser.parse_args()
    if args.runs < 1 or args.count < 1 or args.burst < 1:
        parser.error("--runs, --count and --burst must be at least 1")
    logs = Path(tempfile.mkdtemp(prefix="follow-bench-"))
    print(f"bench.follow_scale: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, {args.runs} runs of {args.count} followed + "
          f"{args.burst} ending within 1 s (ours, then the baseline, in each run)",
          flush=True)  # fmt: skip
    figures = [one_run(args.count, args.burst, logs, n + 1) for n in range(args.runs)]
    count, burst = args.count, args.burst
    per_child = [f.per_child for f in figures]
    rss = [f.rss / 1e6 for f in figures]
    p50 = [f.p50 * 1000 for f in figures]
    p99 = [f.p99 * 1000 for f in figures]
    base_p50 = [_pct(f.base, 0.5) * 1000 for f in figures]
    base_p99 = [_pct(f.base, 0.99) * 1000 for f in figures]
    base_mb = [f.base_bytes_per_job * count / 1e6 for f in figures]
    last = figures[-1]
    print()
    print(f"medians of {args.runs} runs (each run's figure in brackets), load average now "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"Redis per followed child: {median(per_child):.0f} B [{_runs(per_child, '.0f')}] "
          f"(limit 1024); one record {last.one_record} B; one final outcome "
          f"{last.outcome_bytes} B ({last.outcome_json} B JSON)")  # fmt: skip
    print(f"tracker RSS following {count}: {median(rss):.0f} MB [{_runs(rss, '.0f')}] "
          f"(limit 250 MB), {last.tracker_connections} connections to Nomad, checked all "
          f"in {median([f.checked_in for f in figures]):.0f} s "
          f"({median([f.per_check for f in figures]) * 1000:.2f} ms of CPU a check); then "
          f"forced re-checks at {FollowPolicy.sweep_rate:.0f}/s (the sweep's rate), nothing "
          f"ending: {median([f.steady_cpu for f in figures]) * 100:.0f} % of a core over "
          f"{STEADY:.0f} s")  # fmt: skip
    print(f"{burst} ending within 1 s, terminal event -> outcome stored: p50 "
          f"{median(p50):.0f} ms [{_runs(p50, '.0f')}], p99 {median(p99):.0f} ms "
          f"[{_runs(p99, '.0f')}] (limit p99 1000 ms; measured "
          f"{min(len(f.ours) for f in figures)}+ of {burst} per run)")  # fmt: skip
    print(f"baseline, Nomad 2.0.1 -wait (a blocking-query loop and a connection per job, "
          f"same run): p50 {median(base_p50):.0f} ms [{_runs(base_p50, '.0f')}], p99 "
          f"{median(base_p99):.0f} ms [{_runs(base_p99, '.0f')}]; "
          f"{median([f.base_bytes_per_job for f in figures]) / 1e3:.0f} KB and "
          f"{median([float(f.base_connections) for f in figures]) / burst:.1f} connection "
          f"per job for {burst}, so ~{median(base_mb):.0f} MB and {count} connections "
          f"for {count} jobs")  # fmt: skip
    print(f"logs: {logs}")
    ok = median(per_child) <= 1024 and median(rss) <= 250 and median(p99) <= 1000
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
