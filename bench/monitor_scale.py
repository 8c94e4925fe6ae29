"""Figure 4: one worker process following 5,000 pending evaluations at once: its memory
and its connections to Nomad.

    .venv/bin/python -m bench.monitor_scale [--count 5000] [--schedule-delay 5]
        [--pool P] [--concurrency C] [--sample-seconds 5]

nomadsim's scheduler handles one evaluation per `--schedule-delay` seconds while that
knob is above zero (its queue is FIFO), so with a delay of seconds nearly every dispatched
evaluation stays `pending`. One `dispatchq worker` process (`--pool`/`--concurrency` passed
only when given: by default whatever `dispatchq worker` defaults to) is started, and,
as the baseline measured in the same run, its idle memory is sampled two seconds after it
starts consuming. Then `Producer.dispatch_batch(preflight=False)` enqueues `--count`
requests and the bench waits until every request is dispatched (`batch_status().dispatched
== count`), or until dispatching stalls (less than 1 % more in `--stall` seconds: a
worker that holds only so many requests in flight never gets further while evaluations
stay pending), and then samples, every 0.5 s for `--sample-seconds`:

- memory of the worker's process tree (the main process and any pool children), from
  /proc/<pid>/smaps_rollup: the sum of RSS (the figure's limit, 300 MB) and of PSS;
- the tree's TCP sockets whose remote end is nomadsim's port (by state, from
  /proc/<pid>/fd and /proc/net/tcp; the limit is 16 connections);
- `batch_status().monitoring` and nomadsim's count of pending evaluations.

The maxima over the samples are printed against the limits (and against the count:
a worker whose concurrency caps the requests in flight below `--count` misses the
figure, whatever its memory). Then scheduling is released (`PUT /_sim/scheduler
{"schedule_delay_ms": 0}`; the scheduler picks it up when its current delay ends) and the
bench waits for the batch to finish (or for `--stall` seconds without progress), printing
the exit codes and, for requests that did not finish, their record states and Celery
failures, and how many children nomadsim created (exactly one per request, or something
was doubled). It exits 1 unless every limit was met, every request ended with exit code 0
and nothing was doubled.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import procfs, stack
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer
from dispatchq.store.batches import BatchStatus

RSS_LIMIT = 300 * 1024 * 1024
CONNECTION_LIMIT = 16
MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    memory: procfs.Memory
    connections: dict[str, int]
    monitoring: int
    pending_evals: int

    @property
    def established(self) -> int:
        return self.connections.get("ESTABLISHED", 0)


def sample(pid: int, nomad_port: int, producer: Producer, batch_id: str, sim_url: str) -> Sample:
    pids = procfs.tree(pid)
    memory = procfs.memory(pids)
    connections = dict(procfs.tcp_connections(pids, nomad_port))
    status = producer.batch_status(batch_id)
    stats = requests.get(f"{sim_url}/_sim/stats", timeout=30).json()
    return Sample(
        memory,
        connections,
        status.monitoring if status else 0,
        int(stats["evals_by_status"].get("pending", 0)),
    )


def describe(memory: procfs.Memory) -> str:
    return (
        f"RSS {memory.rss / MB:7.1f} MB  PSS {memory.pss / MB:7.1f} MB  "
        f"({memory.processes} processes, {memory.threads} threads)"
    )


def wait_dispatched(
    producer: Producer, batch_id: str, count: int, stall: float, timeout: float
) -> BatchStatus | None:
    """Until every request is dispatched, dispatching stalls, or the timeout passes."""
    started = time.monotonic()
    mark, mark_time = 0, started
    last_print = 0.0
    status = None
    while True:
        status = producer.batch_status(batch_id)
        dispatched = status.monitoring + status.done if status else 0  # none is refused here
        now = time.monotonic()
        if now - last_print >= 5:
            last_print = now
            print(f"  {now - started:5.0f} s: dispatched {dispatched:,}, "
                  f"monitoring {status.monitoring if status else 0:,}", flush=True)  # fmt: skip
        if dispatched >= count:
            return status
        if dispatched - mark >= max(1, count // 100):
            mark, mark_time = dispatched, now
        if now - mark_time > stall:
            print(f"  dispatching stalled at {dispatched:,} for {stall:g} s")
            return status
        if now - started > timeout:
            print(f"  timed out after {timeout:g} s at {dispatched:,} dispatched")
            return status
        time.sleep(0.5)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--schedule-delay", type=float, default=5.0,
                        help="nomadsim seconds per evaluation while held (default 5)")
    parser.add_argument("--pool", default=None, help="`dispatchq worker --pool`")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="`dispatchq worker --concurrency`")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--stall", type=float, default=30.0,
                        help="seconds without dispatch progress before sampling anyway")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for all dispatches, and again for the finish")
    parser.add_argument("--log-dir", type=Path, default=None)
    return parser.parse_args()  # fmt: skip


def main() -> int:
    args = parse_args()
    count: int = args.count
    delay = ["--schedule-delay", f"{args.schedule_delay:g}"]
    with (
        tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp,
        RedisServer() as server,
        stack.nomadsim(delay) as sim,
    ):
        log_dir: Path = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        env = stack.worker_env(server.url, sim.address)
        [worker] = stack.start_workers(
            1, env, pool=args.pool, concurrency=args.concurrency, log_dir=log_dir
        )
        try:
            assert worker.process is not None
            pid = worker.process.pid
            with Producer(stack.settings(server.url)) as producer:
                time.sleep(2)
                idle = procfs.memory(procfs.tree(pid))
                idle_conns = dict(procfs.tcp_connections(procfs.tree(pid), sim.port))
                print(f"Figure 4: {count:,} pending evaluations, one dispatchq worker"
                      + (f" --pool {args.pool}" if args.pool else "")
                      + (f" -c {args.concurrency}" if args.concurrency else "")
                      + f", nomadsim schedule delay {args.schedule_delay:g} s")  # fmt: skip
                print(f"  idle worker: {describe(idle)}, connections to Nomad {idle_conns}")
                started = time.monotonic()
                batch_id = producer.dispatch_batch(
                    stack.JOB_ID, stack.items(count), preflight=False
                )
                wait_dispatched(producer, batch_id, count, args.stall, args.timeout)
                filled = time.monotonic() - started
                samples = []
                end = time.monotonic() + args.sample_seconds
                while time.monotonic() < end:
                    samples.append(sample(pid, sim.port, producer, batch_id, sim.address))
                    time.sleep(0.5)
                held_ok = print_held(count, idle, samples, filled)
                requests.put(
                    f"{sim.address}/_sim/scheduler", json={"schedule_delay_ms": 0}, timeout=10
                ).raise_for_status()
                released = time.monotonic()
                status = stack.wait_finished(
                    producer, batch_id, timeout=args.timeout, stall=args.stall, poll=0.2
                )
                drained = time.monotonic() - released
                done = status.done if status else 0
                codes = status.exit_codes if status else {}
                ok = codes.get(0, 0)
                print(f"\nAfter release: {done:,}/{count:,} done in {drained:.1f} s, exit codes "
                      f"{dict(sorted(codes.items()))}, "
                      f"failed (exit != 0 or unfinished) {count - ok:,}")  # fmt: skip
                children = int(stack.sim_stats(sim)["dispatches"])
                print(f"  children nomadsim created: {children:,} (one per request: "
                      f"{'yes' if children == count else 'NO'})")  # fmt: skip
                if ok < count:
                    print(f"  not finished or failed: {stack.unfinished(producer, batch_id)}")
        finally:
            stack.stop_all([worker])
    return 0 if ok == count and held_ok and children == count else 1


def print_held(count: int, idle: procfs.Memory, samples: list[Sample], filled: float) -> bool:
    """Print the maxima over the samples against the limits; True if all were met."""
    rss = max(s.memory.rss for s in samples)
    pss = max(s.memory.pss for s in samples)
    established = max(s.established for s in samples)
    sockets = max(sum(s.connections.values()) for s in samples)
    monitoring = max(s.monitoring for s in samples)
    pending = max(s.pending_evals for s in samples)
    last = samples[-1]
    print(f"\nWhile held ({len(samples)} samples; maxima), {filled:.1f} s after the enqueue:")
    print(f"  requests monitoring (batch_status)      {monitoring:,} of {count:,}")
    print(f"  evaluations pending in nomadsim         {pending:,}")
    print(f"  worker: {describe(last.memory)} (last sample)")
    print(f"  connections to Nomad, by state          {last.connections} (last sample)")
    rss_ok = rss <= RSS_LIMIT
    conn_ok = established <= CONNECTION_LIMIT
    print(f"  RSS (sum over the tree)  {rss / MB:8.1f} MB  idle {idle.rss / MB:.1f} MB  "
          f"+{(rss - idle.rss) / MB:.1f} MB  (limit 300 MB) {'OK' if rss_ok else 'MISSED'}")
    print(f"  PSS (sum over the tree)  {pss / MB:8.1f} MB  idle {idle.pss / MB:.1f} MB")
    print(f"  TCP connections to Nomad (established) {established}  (all states {sockets})  "
          f"(limit {CONNECTION_LIMIT}) {'OK' if conn_ok else 'MISSED'}")  # fmt: skip
    held_ok = monitoring >= count * 0.95
    if not held_ok:
        print(f"  MISSED: only {monitoring:,} of {count:,} requests were monitored at once "
              "(the worker's concurrency caps the requests in flight)")  # fmt: skip
    return rss_ok and conn_ok and held_ok


if __name__ == "__main__":
    raise SystemExit(main())
