"""Figure 5: Redis memory per stored outcome, and `batch status` time on a 10-item and a
10,000-item batch.

    .venv/bin/python -m bench.redis_memory [--count 10000] [--workers N] [--pool P]
        [--concurrency C] [--calls 2000] [--cli-calls 5]

On a fresh redis-server and nomadsim, `--workers` `dispatchq worker` processes run a
10-item batch and then a `--count`-item batch (`Producer.dispatch_batch`, distinct small
JSON payloads, preflight off) to the end: the outcomes measured are real ones.

Memory, all on the same redis-server:
- `INFO memory` used_memory before the big batch is enqueued and after its last outcome
  is stored, divided by the requests: everything a request leaves behind (outcome,
  request record, payload blob, its entry in the batch's request list, TTL entries).
- `MEMORY USAGE` of a sample (`--sample`) of the outcome keys (`celery-task-meta-<id>`),
  request records and payload blobs: mean and max bytes, and the outcome JSON's length.
- Freed memory: each kind of key is deleted in turn (outcomes first) and the drop in
  used_memory per request is printed: the exact cost of one outcome, its TTL included.
- Baseline, same server: Celery's Redis backend storing the bare dispatch answer (a real
  one from nomadsim) as a task result, which is what the naive task of bench/e2e stores;
  freed memory measured the same way over `--count` such results.
The target: at most 1 KB per stored outcome.

Time: `Producer.batch_status()` on the finished 10-item and `--count`-item batches, calls
interleaved in rounds of 100, median per call of `--calls` calls each; the target is a
ratio (big / small) of at most 2. Then `dispatchq batch status ID -json` as a subprocess,
`--cli-calls` times each (medians; mostly interpreter start-up, printed for reference).
The bench exits 1 unless every request of both batches ended with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests
from celery import Celery

from bench import stack
from bench.common import ratio
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer
from dispatchq.store import keys
from dispatchq.store.batches import BatchStatus

TARGET_BYTES = 1024


def used_memory(client: redis.Redis) -> int:
    info = client.info("memory")
    return int(info["used_memory"])


def run_batch(producer: Producer, count: int, offset: int, timeout: float) -> str:
    """Enqueue a batch of `count` items and wait until every outcome is stored."""
    items = [{"payload": stack.payload(offset + n), "meta": stack.META} for n in range(count)]
    batch_id = producer.dispatch_batch(stack.JOB_ID, items, preflight=False)
    status = stack.wait_finished(producer, batch_id, timeout=timeout, stall=60, poll=0.1)
    if status is None or not status.finished:
        raise RuntimeError(
            f"batch {batch_id} did not finish: {stack.unfinished(producer, batch_id)}"
        )
    ids = list(producer.batches.request_ids(batch_id))
    stored = stack.wait_stored(producer.redis, ids, 30)
    if stored < count:
        raise RuntimeError(f"only {stored} of {count} outcomes stored")
    return batch_id


def usage(client: redis.Redis, names: list[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name)
    return [int(n or 0) for n in pipe.execute()]


def freed_by_deleting(client: redis.Redis, names: list[str]) -> int:
    """used_memory before minus after DEL of `names` (in chunks)."""
    before = used_memory(client)
    for i in range(0, len(names), 1000):
        client.delete(*names[i : i + 1000])
    return before - used_memory(client)


def stats_line(label: str, values: list[int]) -> str:
    return (
        f"  {label:<40} mean {statistics.fmean(values):7.0f} B  "
        f"median {statistics.median(values):7.0f} B  max {max(values):7,} B  (n={len(values):,})"
    )


def time_calls(
    calls: dict[str, Callable[[], object]], total: int, round_size: int
) -> dict[str, list[float]]:
    """Seconds per call of each callable, interleaved in rounds of `round_size`."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    done = 0
    while done < total:
        for name, call in calls.items():
            for _ in range(min(round_size, total - done)):
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        done += round_size
    return times


def cli_status(env: dict[str, str], batch_id: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "batch", "status", batch_id, "-json"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip


def baseline_results(server_url: str, sim_url: str, count: int) -> tuple[list[int], int]:
    """Celery's backend storing `count` copies of a real dispatch answer as task results:
    (MEMORY USAGE of a sample, used_memory freed by deleting them all)."""
    answer = requests.put(
        f"{sim_url}/v1/job/{stack.JOB_ID}/dispatch",
        json={"JobID": stack.JOB_ID, "Payload": None, "Meta": stack.META},
        timeout=10,
    )
    answer.raise_for_status()
    app = Celery("baseline", broker=server_url, backend=server_url)
    app.conf.result_serializer = "json"
    app.conf.result_expires = 86_400
    client = redis.Redis.from_url(server_url)
    try:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        for task_id in ids:
            app.backend.store_result(task_id, answer.json(), "SUCCESS")
        names = [keys.celery_result(task_id) for task_id in ids]
        sample = usage(client, names[:: max(1, count // 500)])
        return sample, freed_by_deleting(client, names)
    finally:
        client.close()
        app.close()


@dataclass
class Figures:
    """What one run measured (see the module docstring)."""

    count: int
    small: int
    workers: int
    elapsed: float = 0.0
    statuses: dict[str, BatchStatus | None] = field(default_factory=dict)
    whole: int = 0  # used_memory delta over the big batch
    blobs: int = 0
    outcome_sizes: list[int] = field(default_factory=list)
    outcome_lengths: list[int] = field(default_factory=list)
    record_sizes: list[int] = field(default_factory=list)
    blob_sizes: list[int] = field(default_factory=list)
    list_size: int = 0
    freed: dict[str, int] = field(default_factory=dict)
    baseline_sizes: list[int] = field(default_factory=list)
    baseline_freed: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)
    cli_times: dict[str, list[float]] = field(default_factory=dict)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="items in the big batch")
    parser.add_argument("--small", type=int, default=10, help="items in the small batch")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pool", default=None, help="`dispatchq worker --pool`")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="`dispatchq worker --concurrency`")
    parser.add_argument("--sample", type=int, default=1000, help="keys given to MEMORY USAGE")
    parser.add_argument("--calls", type=int, default=2000, help="batch_status calls per batch")
    parser.add_argument("--cli-calls", type=int, default=5,
                        help="`dispatchq batch status` runs per batch (0: skip)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    return parser.parse_args()  # fmt: skip


def measure_memory(fig: Figures, producer: Producer, big: str, sample: int) -> None:
    """MEMORY USAGE samples, then the memory freed by deleting each kind of key."""
    client = producer.redis
    ids = list(producer.batches.request_ids(big))
    sample_ids = ids[:: max(1, len(ids) // sample)]
    blob_names = [k.decode() for k in client.scan_iter(keys.blob("*"), count=1000)]
    fig.blobs = len(blob_names)
    fig.outcome_sizes = usage(client, [keys.celery_result(i) for i in sample_ids])
    fig.outcome_lengths = [int(client.strlen(keys.celery_result(i))) for i in sample_ids]
    fig.record_sizes = usage(client, [keys.request(i) for i in sample_ids])
    fig.blob_sizes = usage(client, blob_names[:: max(1, len(blob_names) // sample)])
    fig.list_size = usage(client, [keys.batch_requests(big)])[0]
    fig.freed = {
        "outcomes": freed_by_deleting(client, [keys.celery_result(i) for i in ids]),
        "request records": freed_by_deleting(client, [keys.request(i) for i in ids]),
        "payload blobs": freed_by_deleting(client, blob_names),
    }


def run(args: argparse.Namespace) -> Figures:
    fig = Figures(args.count, args.small, args.workers)
    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp,
        RedisServer() as server,
        stack.nomadsim([]) as sim,
    ):
        env = stack.worker_env(server.url, sim.address)
        workers = stack.start_workers(
            args.workers, env, pool=args.pool, concurrency=args.concurrency, log_dir=Path(tmp)
        )
        try:
            with Producer(stack.settings(server.url)) as producer:
                small = run_batch(producer, args.small, 0, args.timeout)
                time.sleep(1)
                before = used_memory(producer.redis)
                started = time.perf_counter()
                big = run_batch(producer, args.count, args.small, args.timeout)
                fig.elapsed = time.perf_counter() - started
                time.sleep(1)  # let the workers' connections go idle
                fig.whole = used_memory(producer.redis) - before
                fig.statuses = {"small": producer.batch_status(small),
                                "big": producer.batch_status(big)}  # fmt: skip
                fig.times = time_calls(
                    {"small": lambda: producer.batch_status(small),
                     "big": lambda: producer.batch_status(big)},
                    args.calls, 100,
                )  # fmt: skip
                if args.cli_calls:
                    fig.cli_times = time_calls(
                        {"small": lambda: cli_status(env, small),
                         "big": lambda: cli_status(env, big)},
                        args.cli_calls, 1,
                    )  # fmt: skip
                measure_memory(fig, producer, big, args.sample)
                fig.baseline_sizes, fig.baseline_freed = baseline_results(
                    server.url, sim.address, args.count
                )
        finally:
            stack.stop_all(workers)
    return fig


def print_memory(fig: Figures) -> None:
    count = fig.count
    print("\nMEMORY USAGE (bytes per key, without the TTL entry)")
    print(stats_line("outcome celery-task-meta-<id>", fig.outcome_sizes))
    print(stats_line("  its JSON length (STRLEN)", fig.outcome_lengths))
    print(stats_line("request record dispatchq:request", fig.record_sizes))
    print(stats_line("payload blob", fig.blob_sizes))
    print(stats_line("baseline: Celery result of the answer", fig.baseline_sizes))
    print(f"  batch request list: {fig.list_size / count:.1f} B per item")
    print("\nused_memory")
    print(f"  whole request (delta over the batch)   {fig.whole / count:7.0f} B per request")
    for name, value in fig.freed.items():
        print(f"  freed by deleting the {name:<16} {value / count:7.0f} B per request")
    baseline = fig.baseline_freed / count
    print(f"  freed by deleting the baseline results {baseline:7.0f} B per result")
    outcome = fig.freed["outcomes"] / count
    ok = outcome <= TARGET_BYTES
    print(f"\n  per stored outcome: {outcome:.1f} B (target <= {TARGET_BYTES} B) "
          f"{'OK' if ok else 'MISSED'}; {outcome / baseline:.2f}x the baseline")


def print_times(fig: Figures, calls: int, cli_calls: int) -> None:
    print(f"\nbatch status time, medians of {calls:,} calls each (interleaved)")
    small_t = statistics.median(fig.times["small"])
    big_t = statistics.median(fig.times["big"])
    print(f"  Producer.batch_status  {fig.small:>6,} items  {small_t * 1e6:8.1f} µs")
    print(f"  Producer.batch_status  {fig.count:>6,} items  {big_t * 1e6:8.1f} µs")
    ratio(f"{fig.count:,} / {fig.small} items", big_t, small_t, 2.0, at_least=False)
    if fig.cli_times:
        cli_small = statistics.median(fig.cli_times["small"])
        cli_big = statistics.median(fig.cli_times["big"])
        print(f"  dispatchq batch status -json (subprocess, {cli_calls} runs each): "
              f"{fig.small} items {cli_small * 1000:.0f} ms, {fig.count:,} items "
              f"{cli_big * 1000:.0f} ms")  # fmt: skip
        ratio(f"CLI {fig.count:,} / {fig.small} items", cli_big, cli_small, 2.0, at_least=False)


def main() -> int:
    args = parse_args()
    fig = run(args)
    print(f"Figure 5: Redis memory per request, {fig.count:,}-item batch through "
          f"{fig.workers} dispatchq worker(s), {fig.elapsed:.1f} s")  # fmt: skip
    bad = False
    for name, status in fig.statuses.items():
        if status is None:
            print(f"  {name} batch: no status")
            bad = True
            continue
        codes = dict(sorted(status.exit_codes.items()))
        failed = status.total - codes.get(0, 0)
        bad = bad or failed > 0
        print(f"  {name} batch: {status.total:,} requests, exit codes {codes}, failed {failed}")
    print(f"  payload blobs stored: {fig.blobs:,}")
    print_memory(fig)
    print_times(fig, args.calls, args.cli_calls)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
