"""Figures 2 and 3: dispatches end to end against nomadsim (dispatch, follow the
evaluation, store the outcome), ours against two baselines measured in the same run.

    .venv/bin/python -m bench.e2e [--latency-ms 0|20] [--count 10000] [--runs 3]
        [--workers N] [--pool P] [--concurrency C] [--only bare,naive,ours]

Scenarios; each run of each starts its own nomadsim (50 nodes x 100,000 MHz, allocations
run 10 ms: nothing ever waits for capacity; `--latency-ms` makes it answer every request
after that many ms) and, where it needs one, its own redis-server:

- **bare**: no queue, no Redis. A ThreadPoolExecutor (`--bare-threads`, 32) with one
  `requests.Session` per thread makes, per request, the HTTP calls the worker's monitor
  makes: PUT /v1/job/<id>/dispatch (with an idempotency token), then GET
  /v1/evaluation/<eval> (a blocking query `?index=` after the first read) and GET
  /v1/evaluation/<eval>/allocations after each read, until the evaluation is terminal.
  Rate = requests / wall time of the whole pool.
- **naive**: `bench/naive_app.py`, a default Celery app whose task only POSTs the
  dispatch and returns Nomad's answer (stored by Celery's Redis backend), run by
  `celery -A bench.naive_app worker --pool prefork --concurrency 2` (`--naive-pool`,
  `--naive-concurrency`). Its messages are built by hand before the clock starts and
  pushed with one pipelined LPUSH, so the publisher is not the bottleneck; the clock stops
  when the last result has been published by the backend (a PSUBSCRIBE on
  `celery-task-meta-*` counts them), then every result is read back.
- **ours**: `--workers` `dispatchq worker` processes (default: one per core, as the
  README advises; `--pool`/`--concurrency` are passed to `dispatchq worker` only when
  given, so by default this measures whatever `dispatchq worker` defaults to), fed by
  `Producer.dispatch_batch(preflight=False)`. The clock runs from the start of
  `dispatch_batch` until `Producer.batch_status()` (polled every 50 ms) says finished and
  every outcome key exists. Their dispatch rate is the setting's default, 500 a second for
  all workers together, which figure 3 comes close to: `--dispatch-rate R` sets it.

Workers are started idle before each measured run and stopped after it. Each run is
checked: every request must end with a stored outcome, and the requests that did not
end with exit code 0 (or an HTTP error, for bare) are counted as failures; the bench
exits 1 if any run had a failure. Runs are interleaved (run 1 of every scenario, then
run 2...) so machine noise hits every scenario alike; the table shows medians.

Machine-independent figures printed too: outcomes stored, failures, children nomadsim
created (exactly one per request, or something was doubled or lost), and per request the
HTTP requests nomadsim answered and the commands redis-server processed (INFO stats; the
bench's own polling is included, a fraction of a command per request), and the CPU time
per request of the processes doing the work (the worker processes, all their children
included; for bare, the bench process itself), from /proc: less sensitive to a shared
machine than the rates, though not immune to it.

CPU is per process: the workers', redis-server's and nomadsim's. `--by-caller` makes one
more run of each scenario with Redis's MONITOR feed read (`bench/commands.py`) and prints
its Redis commands per request by step (fetch, take, write-ahead, done, ack,
backpressure, heartbeats...) and by command; MONITOR slows Redis, so that run's rate is
not in the table.

Targets: with `--latency-ms 0` (figure 2) ours >= 0.6x bare and >= 1x naive; with
`--latency-ms 20` (figure 3) ours >= 4x naive (prefork, concurrency 2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import redis
import requests

from bench import naive_app, procfs, stack
from bench.commands import CommandLog
from bench.common import ratio, report
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer
from dispatchq.store import keys

TERMINAL = frozenset({"complete", "failed", "canceled"})


@dataclass(frozen=True)
class Run:
    """One measured run of one scenario."""

    items: int
    seconds: float
    stored: int  # outcomes stored (bare: requests that got to a terminal evaluation)
    failures: int  # not exit code 0 / not SUCCESS / an HTTP error
    nomad_requests: int  # HTTP requests nomadsim answered during the run
    dispatches: int  # children nomadsim created
    redis_commands: int = 0  # commands redis-server processed during the run (bare: 0)
    cpu: float = 0.0  # CPU seconds of the worker processes (bare: the bench process)
    cpu_redis: float = 0.0  # CPU seconds of redis-server during the run
    cpu_sim: float = 0.0  # CPU seconds of nomadsim during the run

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def _redis_commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def _nomad_counts(sim: NomadSimProcess) -> tuple[int, int]:
    stats = stack.sim_stats(sim)
    return int(stats["requests"]), int(stats["dispatches"])


# -- bare ---------------------------------------------------------------------------------


def bare(sim: NomadSimProcess, count: int, threads: int, timeout: float) -> Run:
    """The monitor's HTTP calls from a thread pool, no queue."""
    base = sim.address
    local = threading.local()
    bodies = [
        {"JobID": stack.JOB_ID, "Payload": b64encode(stack.payload(n)).decode(),
         "Meta": stack.META, "IdPrefixTemplate": "", "Priority": 0}
        for n in range(count)
    ]  # fmt: skip
    sessions: list[requests.Session] = []

    def session() -> requests.Session:
        s: requests.Session | None = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
            sessions.append(s)
        return s

    def one(n: int) -> bool:
        s = session()
        answer = s.put(
            f"{base}/v1/job/{stack.JOB_ID}/dispatch",
            params={"idempotency_token": f"bare-{n}"},
            json=bodies[n],
            timeout=30,
        )
        answer.raise_for_status()
        eval_id = answer.json()["EvalID"]
        index = 0
        while True:
            params = {"index": str(index), "wait": "60000ms"} if index else {}
            read = s.get(f"{base}/v1/evaluation/{eval_id}", params=params, timeout=90)
            read.raise_for_status()
            index = int(read.headers["X-Nomad-Index"])
            evaluation = read.json()
            allocs = s.get(f"{base}/v1/evaluation/{eval_id}/allocations", timeout=30)
            allocs.raise_for_status()
            allocs.json()
            if evaluation["Status"] in TERMINAL:
                return evaluation["Status"] == "complete" and not evaluation.get("FailedTGAllocs")

    requests0, dispatches0 = _nomad_counts(sim)
    ok = failed = 0
    cpu0 = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(one, n) for n in range(count)]
        for future in futures:
            try:
                if future.result(timeout=max(1.0, started + timeout - time.perf_counter())):
                    ok += 1
                else:
                    failed += 1
            except Exception:  # noqa: BLE001  (counted: an HTTP error is a failed request)
                failed += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    for s in sessions:
        s.close()
    requests1, dispatches1 = _nomad_counts(sim)
    return Run(
        count, seconds, ok + failed, failed, requests1 - requests0, dispatches1 - dispatches0,
        0, cpu,
    )  # fmt: skip


# -- naive Celery -------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    count: int
    timeout: float
    stall: float
    log_dir: Path
    workers: int
    pool: str | None
    concurrency: int | None
    bare_threads: int
    naive_pool: str
    naive_concurrency: int
    dispatch_rate: float | None = None
    """`DISPATCHQ_DISPATCH_RATE` of our workers (None: the default ceiling, 500/s)."""


def naive(server: RedisServer, sim: NomadSimProcess, opts: Options) -> Run:
    """The naive task on a default worker; the clock stops when the last result is stored."""
    count = opts.count
    client = redis.Redis.from_url(server.url)
    messages = [naive_app.message(stack.JOB_ID, stack.payload(n), stack.META) for n in range(count)]
    task_ids = [task_id for task_id, _ in messages]
    worker = stack.NaiveWorker(
        server.url, sim.address, pool=opts.naive_pool, concurrency=opts.naive_concurrency,
        log_path=opts.log_dir / "naive.log",
    )  # fmt: skip
    pubsub = client.pubsub()
    with worker, contextlib.closing(pubsub):
        pubsub.psubscribe(keys.CELERY_RESULT_PREFIX + "*")
        while pubsub.get_message(timeout=1.0) is None:  # the psubscribe confirmation
            pass
        requests0, dispatches0 = _nomad_counts(sim)
        commands0 = _redis_commands(client)
        assert worker.process is not None
        cpu0 = procfs.cpu_seconds(procfs.tree(worker.process.pid))
        published = 0
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i in range(0, count, 500):
            pipe.lpush(naive_app.QUEUE, *(body for _, body in messages[i : i + 500]))
        pipe.execute()
        deadline = time.monotonic() + opts.timeout
        last = time.monotonic()
        while published < count and time.monotonic() < deadline:
            if pubsub.get_message(timeout=1.0) is not None:
                published += 1
                last = time.monotonic()
            elif time.monotonic() - last > opts.stall:
                break
        seconds = time.perf_counter() - started
        requests1, dispatches1 = _nomad_counts(sim)
        commands = _redis_commands(client) - commands0
        cpu = procfs.cpu_seconds(procfs.tree(worker.process.pid)) - cpu0
    metas = stack.result_states(client, task_ids)
    client.close()
    stored = sum(1 for m in metas if m is not None)
    succeeded = sum(1 for m in metas if m is not None and m.get("status") == "SUCCESS")
    return Run(
        count, seconds, stored, count - succeeded, requests1 - requests0,
        dispatches1 - dispatches0, commands, cpu,
    )  # fmt: skip


# -- ours ---------------------------------------------------------------------------------


def _workers_cpu(procs: list[stack.DispatchqWorker]) -> float:
    return sum(
        procfs.cpu_seconds(procfs.tree(w.process.pid)) for w in procs if w.process is not None
    )


def ours(server: RedisServer, sim: NomadSimProcess, opts: Options) -> Run:
    """dispatch_batch + dispatchq workers until batch_status says finished and every
    outcome is stored."""
    count = opts.count
    env = stack.worker_env(server.url, sim.address)
    if opts.dispatch_rate is not None:
        env["DISPATCHQ_DISPATCH_RATE"] = f"{opts.dispatch_rate:g}"
    items = stack.items(count)
    procs = stack.start_workers(
        opts.workers, env, pool=opts.pool, concurrency=opts.concurrency, log_dir=opts.log_dir
    )
    try:
        with Producer(stack.settings(server.url)) as producer:
            requests0, dispatches0 = _nomad_counts(sim)
            commands0 = _redis_commands(producer.redis)
            cpu0 = _workers_cpu(procs)
            started = time.perf_counter()
            batch_id = producer.dispatch_batch(stack.JOB_ID, items, preflight=False)
            status = stack.wait_finished(
                producer, batch_id, timeout=opts.timeout, stall=opts.stall
            )
            request_ids = list(producer.batches.request_ids(batch_id))
            stored = stack.wait_stored(producer.redis, request_ids, 10.0)
            seconds = time.perf_counter() - started
            requests1, dispatches1 = _nomad_counts(sim)
            commands = _redis_commands(producer.redis) - commands0
            cpu = _workers_cpu(procs) - cpu0
            status = producer.batch_status(batch_id)
            if status is None or not status.finished:
                print(f"  ours: batch not finished: {stack.unfinished(producer, batch_id)}")
    finally:
        stack.stop_all(procs)
    ok = status.exit_codes.get(0, 0) if status is not None else 0
    return Run(
        count, seconds, stored, count - ok, requests1 - requests0, dispatches1 - dispatches0,
        commands, cpu,
    )  # fmt: skip


# -- driver -------------------------------------------------------------------------------


def measure(name: str, opts: Options, sim_extra: list[str], by_caller: bool = False) -> Run:
    """One run of one scenario on a fresh nomadsim (and redis-server); with `by_caller`,
    under a `CommandLog` whose table is printed (its rates are not comparable)."""
    with stack.nomadsim(sim_extra) as sim:
        if name == "bare":
            return bare(sim, opts.count, opts.bare_threads, opts.timeout)
        with RedisServer() as server:
            scenario = naive if name == "naive" else ours
            pids = [p.pid for p in (server.process, sim.process) if p is not None]
            before = [procfs.cpu_seconds(procfs.tree(pid)) for pid in pids]
            if by_caller:
                with CommandLog(server.url) as tally:
                    result = scenario(server, sim, opts)
                print(f"\nRedis commands of {name} by step (MONITOR; {result.items:,} "
                      f"requests):\n{tally.table(result.items)}")  # fmt: skip
            else:
                result = scenario(server, sim, opts)
            spent = [procfs.cpu_seconds(procfs.tree(pid)) - b for pid, b in zip(pids, before,
                                                                                strict=True)]
            return replace(result, cpu_redis=spent[0], cpu_sim=spent[1] if len(spent) > 1 else 0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="requests per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="nomadsim answers every request after this many ms (figure 3: 20)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="dispatchq worker processes (default: one per core)")
    parser.add_argument("--pool", default=None,
                        help="`dispatchq worker --pool` (default: the command's default)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="`dispatchq worker --concurrency` (default: the command's default)")
    parser.add_argument("--dispatch-rate", type=float, default=None,
                        help="our workers' DISPATCHQ_DISPATCH_RATE (default: the setting's "
                        "default, 500/s, which figure 3 comes close to)")  # fmt: skip
    parser.add_argument("--bare-threads", type=int, default=32)
    parser.add_argument("--naive-pool", default="prefork")
    parser.add_argument("--naive-concurrency", type=int, default=2)
    parser.add_argument("--only", default="bare,naive,ours",
                        help="comma-separated scenarios to run (bare, naive, ours)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds one run may take (default: max(120, count / 20))")
    parser.add_argument("--stall", type=float, default=60.0,
                        help="give up on a run when no request finished for this long")
    parser.add_argument("--by-caller", action="store_true",
                        help="after the runs, one more of each Redis scenario under MONITOR: "
                             "its Redis commands per request by step and by command")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep the workers' logs here (default: a temporary directory)")
    return parser.parse_args()  # fmt: skip


def summarize(results: dict[str, list[Run]], labels: dict[str, str], figure: int) -> bool:
    """Print the table, the machine-independent counts and the ratios; True if any run
    had a failure or a missing outcome."""
    rows = []
    medians: dict[str, float] = {}
    for name, runs in results.items():
        rates = [r.rate for r in runs]
        medians[name] = statistics.median(rates)
        rows.append((labels[name], medians[name], rates))
    report(f"Throughput, requests/s (medians of {len(rows[0][2])} runs)", rows)

    print("\nCounts (all runs) and costs per request (medians of the runs)")
    bad = False
    for name, runs in results.items():
        total = sum(r.items for r in runs)
        stored = sum(r.stored for r in runs)
        failed = sum(r.failures for r in runs)
        per_item = statistics.median(r.nomad_requests / r.items for r in runs)
        commands = statistics.median(r.redis_commands / r.items for r in runs)
        cpu_ms = statistics.median(r.cpu / r.items * 1000 for r in runs)
        redis_ms = statistics.median(r.cpu_redis / r.items * 1000 for r in runs)
        sim_ms = statistics.median(r.cpu_sim / r.items * 1000 for r in runs)
        children = sum(r.dispatches for r in runs)
        bad = bad or failed > 0 or stored < total
        print(f"  {name:<5} requests {total:,}  outcomes stored {stored:,}  failed {failed:,}  "
              f"children dispatched {children:,}  per item: nomad HTTP requests "
              f"{per_item:.2f}, Redis commands {commands:.1f}, CPU {cpu_ms:.2f} ms "
              f"(+ redis-server {redis_ms:.2f} ms, nomadsim {sim_ms:.2f} ms)")

    print("\nRatios (medians)")

    def check(ours_name: str, baseline: str, target: float) -> None:
        if ours_name in medians and baseline in medians:
            ratio(f"{ours_name} / {baseline}", medians[ours_name], medians[baseline], target)

    if figure == 2:
        check("ours", "bare", 0.6)
        check("ours", "naive", 1.0)
    else:
        check("ours", "naive", 4.0)
        if "ours" in medians and "bare" in medians:
            print(f"  ours / bare: {medians['ours'] / medians['bare']:.2f}x (no target)")
    return bad


def main() -> int:
    args = parse_args()
    scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    sim_extra = ["--latency-ms", str(args.latency_ms)] if args.latency_ms else []
    figure = 3 if args.latency_ms else 2
    labels = {
        "bare": f"bare: {args.bare_threads} threads, no queue",
        "naive": f"naive Celery task ({args.naive_pool} -c {args.naive_concurrency})",
        "ours": (
            f"ours: {args.workers} x dispatchq worker"
            + (f" --pool {args.pool}" if args.pool else "")
            + (f" -c {args.concurrency}" if args.concurrency else "")
        ),
    }
    print(
        f"Figure {figure}: {args.count:,} dispatches end to end, nomadsim latency "
        f"{args.latency_ms:g} ms, {args.runs} runs, {os.cpu_count()} CPUs"
    )
    results: dict[str, list[Run]] = {name: [] for name in scenarios}
    with contextlib.ExitStack() as exits:
        log_dir: Path = args.log_dir or Path(
            exits.enter_context(tempfile.TemporaryDirectory(prefix="bench-e2e-"))
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        opts = Options(
            count=args.count,
            timeout=args.timeout or max(120.0, args.count / 20),
            stall=args.stall,
            log_dir=log_dir,
            workers=args.workers,
            pool=args.pool,
            concurrency=args.concurrency,
            bare_threads=args.bare_threads,
            naive_pool=args.naive_pool,
            naive_concurrency=args.naive_concurrency,
            dispatch_rate=args.dispatch_rate,
        )
        for run in range(1, args.runs + 1):
            for name in scenarios:
                result = measure(name, opts, sim_extra)
                results[name].append(result)
                print(
                    f"  run {run} {name:<5} {result.rate:8,.0f}/s  {result.seconds:6.1f} s  "
                    f"stored {result.stored:,}/{result.items:,}  failed {result.failures:,}  "
                    f"per item: nomad requests {result.nomad_requests / result.items:.2f}, "
                    f"Redis commands {result.redis_commands / result.items:.1f}, "
                    f"CPU {result.cpu / result.items * 1000:.2f} ms  "
                    f"children {result.dispatches:,}",
                    flush=True,
                )
        if args.by_caller:
            for name in (n for n in scenarios if n != "bare"):
                measure(name, opts, sim_extra, by_caller=True)
    bad = summarize(results, labels, figure)
    if bad:
        print("\nSOME RUNS FAILED: see the failures above (worker logs with --log-dir)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
