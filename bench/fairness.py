"""Fair queueing (issue 19): an interactive request under a batch backlog, two tenants'
batches, and end-to-end throughput, each for this tree and the old tree (FIFO: one list)
in the same run.

    .venv/bin/python -m bench.fairness [--old-ref main] [--backlog 10000] [--tries 20]
        [--old-tries 3] [--tenant-items 5000] [--count 10000] [--runs 3] [--workers N]

The old tree is `git archive <--old-ref>` unpacked into a temporary directory. Every
scenario runs in a child process (this file with `--child`) whose imports, producer and
`dispatchq worker` processes come from the tree measured (PYTHONPATH and cwd), each run on
its own redis-server and nomadsim (bench.stack: 50 nodes, allocations run 10 ms).

- **latency**: one worker. Before each try, if fewer than half of `--backlog` requests are
  queued, a batch of `--backlog` items is submitted (the tree's `dispatch_batch`); then one
  request in no batch is enqueued (`enqueue()`, as `dispatchq job dispatch` does) and the
  time until its outcome is stored (`wait()`) is its latency. The old tree takes it after
  the whole backlog, so it gets `--old-tries` tries (each drains a backlog first). p50/p99.
- **tenants**: one worker; tenant A's batch of `--tenant-items`, then 1 s later tenant B's
  (on the old tree, no tenant: it has none). Each batch's progress (`done`) is sampled
  every 0.5 s; the rate of each is over the window in which both had requests queued.
- **e2e**: bench.e2e's `ours` scenario (`--workers` workers, `--count` requests in one
  batch, the clock from `dispatch_batch` to every outcome stored), old and new runs
  interleaved; medians of `--runs`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# -- the child: runs inside the tree measured ---------------------------------------------


def _child(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench import e2e, stack
    from dispatchq.devstack.redis_server import RedisServer
    from dispatchq.producer.api import Producer

    log_dir = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    if scenario == "e2e":
        opts = e2e.Options(
            count=args.count, timeout=max(120.0, args.count / 20), stall=60.0, log_dir=log_dir,
            workers=args.workers, pool=None, concurrency=None, bare_threads=32,
            naive_pool="prefork", naive_concurrency=2,
        )  # fmt: skip
        run = e2e.measure("ours", opts, [])
        return {"rate": run.rate, "failures": run.failures, "stored": run.stored}
    with stack.nomadsim([]) as sim, RedisServer() as server:
        env = stack.worker_env(server.url, sim.address)
        procs = stack.start_workers(1, env, pool=None, concurrency=None, log_dir=log_dir)
        try:
            with Producer(stack.settings(server.url)) as producer:
                if scenario == "latency":
                    return _latency(producer, stack, args)
                return _tenants(producer, stack, args)
        finally:
            stack.stop_all(procs)


def _queued(producer: Any, batch_ids: list[str]) -> int:
    return sum(s.queued for s in map(producer.batch_status, batch_ids) if s is not None)


def _latency(producer: Any, stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    latencies: list[float] = []
    batches: list[str] = []
    backlogs: list[int] = []
    for _ in range(args.tries):
        if _queued(producer, batches) < args.backlog // 2:
            batches.append(producer.dispatch_batch(stack.JOB_ID, stack.items(args.backlog),
                                                   preflight=False))  # fmt: skip
            time.sleep(0.5)  # the batch is being taken
        backlogs.append(_queued(producer, batches))
        started = time.perf_counter()
        rid = producer.enqueue(stack.JOB_ID, payload=stack.payload(0), meta=stack.META)
        status = producer.wait([rid], timeout=600)[rid]
        if not status.done:
            raise SystemExit(f"interactive request {rid} not done in 600 s")
        latencies.append(time.perf_counter() - started)
    return {"latencies": latencies, "backlogs": backlogs}


def _tenants(producer: Any, stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    has_tenant = "tenant" in inspect.signature(producer.dispatch_batch).parameters
    ids = []
    for n, tenant in enumerate(("tenant-a", "tenant-b")):
        if n:
            time.sleep(1.0)
        extra = {"tenant": tenant} if has_tenant else {}
        ids.append(producer.dispatch_batch(stack.JOB_ID, stack.items(args.tenant_items),
                                           preflight=False, **extra))  # fmt: skip
    samples = []
    while True:
        statuses = [producer.batch_status(b) for b in ids]
        done, queued = [s.done for s in statuses], [s.queued for s in statuses]
        samples.append((time.perf_counter(), done, queued))
        if all(s.finished for s in statuses):
            break
        time.sleep(0.5)
    both = [(t, done) for t, done, queued in samples if all(q > 0 for q in queued)]
    if len(both) < 2:
        return {"rates": None, "window": 0.0}
    (t0, d0), (t1, d1) = both[0], both[-1]
    return {"rates": [(b - a) / (t1 - t0) for a, b in zip(d0, d1, strict=True)], "window": t1 - t0}


# -- the parent ---------------------------------------------------------------------------


def _run(tree: Path, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", scenario]
    for name in ("backlog", "tries", "tenant_items", "count", "workers"):
        value = getattr(args, name)
        if scenario == "latency" and name == "tries" and tree != REPO:
            value = args.old_tries
        argv += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{scenario} in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--old-ref", default="main")
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--old-tries", type=int, default=3)
    parser.add_argument("--tenant-items", type=int, default=5_000)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default="latency,tenants,e2e")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return 0
    only = {s.strip() for s in args.only.split(",")}
    with tempfile.TemporaryDirectory(prefix="bench-fair-old-") as old:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_ref],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        trees = {"new": REPO, f"old ({args.old_ref})": Path(old)}
        print(f"bench.fairness: {os.cpu_count()} CPUs, old tree = {args.old_ref}")
        if "latency" in only:
            print(f"\ninteractive latency, 1 worker, batch backlog ~{args.backlog:,} (seconds)")
            for name, tree in trees.items():
                r = _run(tree, "latency", args)
                lat = r["latencies"]
                print(f"  {name:<14} tries {len(lat):>2}  p50 {_p(lat, 0.5):7.3f}  "
                      f"p99 {_p(lat, 0.99):7.3f}  max {max(lat):7.3f}  "
                      f"backlog at enqueue (median) {statistics.median(r['backlogs']):,.0f}")
        if "tenants" in only:
            print(f"\ntwo tenants, {args.tenant_items:,} items each, 1 s apart, 1 worker")
            for name, tree in trees.items():
                r = _run(tree, "tenants", args)
                if r["rates"] is None:
                    print(f"  {name:<14} never both pending (the first batch drained first)")
                    continue
                a, b = r["rates"]
                print(f"  {name:<14} A {a:7.1f}/s  B {b:7.1f}/s  B/A {b / a if a else 0:5.2f}  "
                      f"(window {r['window']:.1f} s)")
        if "e2e" in only:
            print(f"\ne2e throughput, {args.workers} workers, {args.count:,} requests "
                  f"(req/s, medians of {args.runs}, interleaved)")
            rates: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.runs):
                for name, tree in trees.items():
                    r = _run(tree, "e2e", args)
                    if r["failures"]:
                        print(f"  {name}: {r['failures']} failures")
                    rates[name].append(r["rate"])
            for name, values in rates.items():
                print(f"  {name:<14} {statistics.median(values):8.0f}  "
                      f"runs {', '.join(f'{v:.0f}' for v in values)}")
            new, old_rate = (statistics.median(v) for v in rates.values())
            print(f"  new/old {new / old_rate:.3f}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
