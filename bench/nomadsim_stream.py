"""nomadsim's CPU per dispatch in the end-to-end bench's situation, event streams included.

    .venv/bin/python -m bench.nomadsim_stream [--count 3000] [--rate 250] [--runs 3]
        [--latency-ms 20] [--subscribers 2] [--base-tree DIR]

Each run starts its own nomadsim (`bench.stack.nomadsim`: 50 nodes, allocations start
after 1 ms and run 10 ms, so every dispatch yields five stream events: Evaluation
JobRegistered, Allocation PlanResult, Evaluation EvaluationUpdated and two Allocation
AllocationUpdated), with `--latency-ms` added to every answer. `--subscribers` threads
each hold `GET /v1/event/stream?topic=Evaluation&topic=Allocation` open (one per worker
process in the end-to-end bench) and read and discard its lines. `--count` dispatches
(`PUT /v1/job/<id>/dispatch`, payload and meta as bench.stack builds them, body as
bench.e2e's bare scenario sends it) are fired at a fixed `--rate` from a pool of threads
with one requests.Session each. When the last answer is in and the streams have seen
every dispatch's five events, nomadsim's CPU seconds (user + system, from /proc) since
the first dispatch are divided by the count; so are its read and write system calls
(/proc/<pid>/io), a figure the machine's load does not move.

`--alive N` measures something else: N children of a mock_driver job that run for
`--alive-run-for` (default 5m) alive at once on one nomadsim (dispatched as fast as
`--threads` sessions go, no streams): nomadsim's CPU per dispatch until all N run, its
RSS then, and its CPU while they all stay alive for 10 s (timers cost nothing until due).

With `--base-tree DIR` (a checkout, e.g. `git worktree add /tmp/sim-base HEAD`), every
run is made twice, once with DIR's nomadsim and once with this tree's, interleaved, so a
change is judged against its baseline under the same machine noise. The figure printed
is CPU microseconds per dispatch (medians): on a shared machine rates are noisy, CPU
per dispatch much less so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench import procfs, stack
from dispatchq.devstack.nomadsim_process import NomadSimProcess

EVENTS_PER_DISPATCH = 5
TOPICS = {"topic": ["Evaluation", "Allocation"]}


class Subscriber(threading.Thread):
    """Reads an event stream and counts the events it carries (heartbeats are `{}`)."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.response = requests.get(
            f"{address}/v1/event/stream", params=TOPICS, stream=True, timeout=60
        )
        self.response.raise_for_status()
        self.events = 0

    def run(self) -> None:
        with contextlib.suppress(requests.RequestException, AttributeError, ValueError):
            for line in self.response.iter_lines(chunk_size=1 << 16):
                self.events += line.count(b'"Topic":')

    def close(self) -> None:
        self.response.close()


def syscalls(pid: int) -> tuple[int, int]:
    """The read and write system calls (any kind of file) `pid` has made so far."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


@contextlib.contextmanager
def started_sim(tree: Path | None, latency_ms: float) -> Iterator[NomadSimProcess]:
    """bench.stack's nomadsim, `python -m nomadsim` run from `tree` when given (the
    process imports nomadsim from its working directory)."""
    extra = ["--latency-ms", f"{latency_ms:g}"] if latency_ms else []
    with contextlib.ExitStack() as exits:
        with contextlib.chdir(tree) if tree else contextlib.nullcontext():
            sim = exits.enter_context(stack.nomadsim(extra))
        yield sim


def one_run(tree: Path | None, args: argparse.Namespace) -> float:
    """nomadsim CPU microseconds per dispatch of one run."""
    count: int = args.count
    bodies = [
        {"JobID": stack.JOB_ID, "Payload": b64encode(stack.payload(n)).decode(),
         "Meta": stack.META, "IdPrefixTemplate": "", "Priority": 0}
        for n in range(count)
    ]  # fmt: skip
    with started_sim(tree, args.latency_ms) as sim:
        assert sim.process is not None
        pid = sim.process.pid
        url = f"{sim.address}/v1/job/{stack.JOB_ID}/dispatch"
        subscribers = [Subscriber(sim.address) for _ in range(args.subscribers)]
        for sub in subscribers:
            sub.start()
        local = threading.local()

        def dispatch(n: int) -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
            session.put(url, json=bodies[n], timeout=30).raise_for_status()

        time.sleep(0.5)
        cpu0, io0 = procfs.cpu_seconds([pid]), syscalls(pid)
        started = time.perf_counter()
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(args.threads) as pool:
            for n in range(count):
                delay = started + n / args.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(dispatch, n))
            for future in futures:
                future.result()
        wanted = EVENTS_PER_DISPATCH * count
        deadline = time.monotonic() + 30
        while any(s.events < wanted for s in subscribers) and time.monotonic() < deadline:
            time.sleep(0.02)
        cpu = procfs.cpu_seconds([pid]) - cpu0
        reads, writes = (b - a for a, b in zip(io0, syscalls(pid), strict=True))
        rate = count / (time.perf_counter() - started)
        seen = [s.events for s in subscribers]
        for sub in subscribers:
            sub.close()
    if any(n != wanted for n in seen):
        raise RuntimeError(f"streams saw {seen} events, expected {wanted} each")
    per = cpu / count * 1e6
    print(f"  {'base' if tree else 'this'}: {per:,.0f} us/dispatch ({rate:,.0f} dispatches/s; "
          f"{reads / count:.2f} reads, {writes / count:.2f} writes per dispatch)", flush=True)
    return per


def alive_job(run_for: str) -> dict[str, Any]:
    """A parameterized mock_driver job whose children run for `run_for` (dispatch meta
    `run_for` and `exit_code` override it)."""
    job = stack.bench_job()
    job["ID"] = job["Name"] = "alive"
    job["Meta"] = {"run_for": run_for, "exit_code": "0"}
    job["ParameterizedJob"]["MetaOptional"] = ["run_for", "exit_code"]
    task = job["TaskGroups"][0]["Tasks"][0]
    task["Config"] = {"run_for": "${NOMAD_META_run_for}", "exit_code": "${NOMAD_META_exit_code}"}
    return job


def alive_run(tree: Path | None, args: argparse.Namespace) -> None:
    count: int = args.alive
    with started_sim(tree, 0) as sim:
        assert sim.process is not None
        pid = sim.process.pid
        requests.put(f"{sim.address}/v1/jobs", json={"Job": alive_job(args.alive_run_for)},
                     timeout=10).raise_for_status()
        url = f"{sim.address}/v1/job/alive/dispatch"
        local = threading.local()

        def dispatch(n: int) -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
            session.put(url, json={"Meta": {"exit_code": str(n % 3)}},
                        timeout=60).raise_for_status()

        cpu0 = procfs.cpu_seconds([pid])
        started = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(dispatch, range(count)))
        while stack.sim_stats(sim)["allocs_by_client_status"].get("running", 0) < count:
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        cpu = procfs.cpu_seconds([pid]) - cpu0
        rss = procfs.memory([pid]).rss
        cpu1 = procfs.cpu_seconds([pid])
        time.sleep(10)
        idle = procfs.cpu_seconds([pid]) - cpu1
        stats = stack.sim_stats(sim)
    print(f"  {'base' if tree else 'this'}: {count:,} children running after {elapsed:.1f} s; "
          f"{cpu / count * 1e6:,.0f} us nomadsim CPU per dispatch; RSS {rss / 2**20:,.0f} MiB; "
          f"{idle / 10 * 100:.1f} % CPU while they stay alive; "
          f"jobs {stats['jobs_by_status']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--alive", type=int, default=0,
                        help="instead: this many long-running children alive at once")
    parser.add_argument("--alive-run-for", default="5m")
    parser.add_argument("--base-tree", type=Path, default=None,
                        help="a checkout whose nomadsim is the baseline, run interleaved")
    args = parser.parse_args()
    trees: list[Path | None] = [args.base_tree.resolve(), None] if args.base_tree else [None]
    if args.alive:
        for tree in trees:
            alive_run(tree, args)
        return
    results: dict[Path | None, list[float]] = {tree: [] for tree in trees}
    print(f"{args.count:,} dispatches at {args.rate:g}/s, {args.latency_ms:g} ms latency, "
          f"{args.subscribers} event streams, {os.cpu_count()} CPUs")
    for _ in range(args.runs):
        for tree in trees:
            results[tree].append(one_run(tree, args))
    for tree, runs in results.items():
        name = f"base ({tree})" if tree else "this tree"
        each = ", ".join(f"{r:,.0f}" for r in runs)
        print(f"{name}: median {statistics.median(runs):,.0f} us nomadsim CPU per dispatch "
              f"(runs: {each})")


if __name__ == "__main__":
    main()
