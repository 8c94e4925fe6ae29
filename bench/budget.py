"""The per-request budget, checked in one command: each figure run small, printed next to
its budget. Never part of the test run (timings never go in tests).

    .venv/bin/python -m bench.budget [--count 1000] [--runs 3] [--skip-follow]

- end to end at a 20 ms Nomad API (figure 3, `bench.e2e`): the naive Celery task and
  ours, `--runs` interleaved runs of `--count` requests: Redis commands per request (every
  command redis-server ran, those of scripts included), the workers' CPU per request
  against the naive task's, and the throughput against the naive task's; then one more run
  of ours under MONITOR for the round trips per request (`bench.commands`);
- enqueue (figure 1, `bench.enqueue`): `dispatch_batch` against a raw pipelined LPUSH of
  the same messages, 5,000 requests, 5 runs;
- `until` finished against `until` scheduled (`bench.until_cost`): 500 children each, one
  run of each: CPU (workers, and the tracker) and Redis commands per request;
- following children (`bench.follow_scale`, unless `--skip-follow`): one tracker with
  2,000 children, 200 ending within a second: p99 terminal event to outcome, RSS, Redis
  bytes per child.

The full-size figures, and those not run here, are in bench/README.md with their commands.
Exit code 1 when a figure misses its budget.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench import e2e, enqueue, follow_scale, stack, until_cost
from bench.commands import CommandLog
from dispatchq.devstack.redis_server import RedisServer

BUDGET_COMMANDS = 12.0
BUDGET_CPU = 0.3
BUDGET_THROUGHPUT = 8.0
BUDGET_ENQUEUE = 0.8
BUDGET_FOLLOW_P99_MS = 1000.0
BUDGET_FOLLOW_RSS_MB = 250.0
BUDGET_FOLLOW_BYTES = 1024.0


def _options(count: int, log_dir: Path) -> e2e.Options:
    return e2e.Options(count=count, timeout=max(120.0, count / 20), stall=60.0, log_dir=log_dir,
                       workers=os.cpu_count() or 1, pool=None, concurrency=None, bare_threads=32,
                       naive_pool="prefork", naive_concurrency=2)  # fmt: skip


def _round_trips(opts: e2e.Options, sim_extra: list[str]) -> float:
    with stack.nomadsim(sim_extra) as sim, RedisServer() as server, \
            CommandLog(server.url) as tally:  # fmt: skip
        run = e2e.ours(server, sim, opts)
    return sum(tally.trips_by_step.values()) / run.items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-follow", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, bool]] = []

    def row(name: str, value: float, budget: float, unit: str, at_most: bool) -> None:
        ok = value <= budget if at_most else value >= budget
        sign = "<=" if at_most else ">="
        rows.append((name, f"{value:,.2f}{unit}", f"{sign} {budget:g}{unit}", ok))

    sim_extra = ["--latency-ms", "20"]
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as logs:
        opts = _options(args.count, Path(logs))
        runs: dict[str, list[e2e.Run]] = {"naive": [], "ours": []}
        for n in range(args.runs):
            for name, each in runs.items():
                each.append(e2e.measure(name, opts, sim_extra))
                print(f"  e2e run {n + 1} {name}: {each[-1].rate:,.0f}/s", flush=True)
        trips = _round_trips(opts, sim_extra)

    def med(name: str, value: str) -> float:
        return float(statistics.median(getattr(r, value) / r.items for r in runs[name]))

    ours_rate = statistics.median(r.rate for r in runs["ours"])
    naive_rate = statistics.median(r.rate for r in runs["naive"])
    row("Redis commands per request (figure 3)", med("ours", "redis_commands"),
        BUDGET_COMMANDS, "", at_most=True)  # fmt: skip
    rows.append(("  of which round trips (MONITOR run)", f"{trips:.2f}", "(floor: 5)", True))
    row("worker CPU per request / naive task's", med("ours", "cpu") / med("naive", "cpu"),
        BUDGET_CPU, "x", at_most=True)  # fmt: skip
    row("throughput / naive task's (20 ms API)", ours_rate / naive_rate, BUDGET_THROUGHPUT,
        "x", at_most=False)  # fmt: skip

    rates = {name: median for name, median, _ in enqueue.measure(5000, 5)}
    row("enqueue / raw pipelined LPUSH", rates["dispatch_batch"] / rates["raw LPUSH pipeline"],
        BUDGET_ENQUEUE, "x", at_most=False)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-budget-until-") as logs:
        scheduled = until_cost.one_run("scheduled", 500, 2, Path(logs))
        finished = until_cost.one_run("finished", 500, 2, Path(logs))
    row("until finished / scheduled: CPU per request", finished[0] / scheduled[0], 1.3, "x",
        at_most=True)  # fmt: skip
    row("until finished / scheduled: Redis commands", finished[1] / scheduled[1], 1.3, "x",
        at_most=True)  # fmt: skip

    if not args.skip_follow:
        with tempfile.TemporaryDirectory(prefix="bench-budget-follow-") as logs:
            figures = follow_scale.one_run(2000, 200, Path(logs), 1)
        row("tracker: p99 terminal event -> outcome (200 in 1 s)", figures.p99 * 1000,
            BUDGET_FOLLOW_P99_MS, " ms", at_most=True)  # fmt: skip
        row("tracker: RSS following 2,000", figures.rss / 1e6, BUDGET_FOLLOW_RSS_MB, " MB",
            at_most=True)  # fmt: skip
        row("tracker: Redis bytes per followed child", figures.per_child, BUDGET_FOLLOW_BYTES,
            " B", at_most=True)  # fmt: skip

    print(f"\nThe budget, small ({args.count:,} requests x {args.runs} runs, medians; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    width = max(len(name) for name, *_ in rows)
    for name, value, budget, ok in rows:
        mark = "" if budget.startswith("(") else ("ok" if ok else "MISSED")
        print(f"  {name:<{width}}  {value:>12}  {budget:<12} {mark}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
