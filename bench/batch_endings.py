"""Batches followed to their end with mixed endings: what notifications cost, what
`batch status` costs by batch size, and webhooks through a failing receiver and SIGKILLs.

    .venv/bin/python -m bench.batch_endings [--count 10000] [--runs 3] [--workers 2]
        [--status-sizes 10,10000] [--fault-count 1000] [--only e2e,status,fault]

- **e2e**: a `--count`-item batch `--until finished` against nomadsim (mock_driver children
  whose dispatch meta picks their end: 1 in 10 exits 3, so fails after its restarts and
  reschedule, 1 in 50 names a meta key the job does not permit, so Nomad refuses it, exit
  1; the rest exit 0), `--workers` dispatchq workers and one tracker. Notifications off
  (`DISPATCHQ_EVENTS_STREAM=`: no stream, no notifier) and on (the event stream, a
  `dispatchq notifier` and the batch's `notify_url` on a local receiver), interleaved run
  by run (each goes first in turn); the clock runs from `dispatch_batch` until the batch
  is finished (`batch status`). Limit: the medians at most 5 % apart.
- **status**: `batch status` (the CLI's reads: `Producer.batch_status` and the first
  failures) on batches of each of `--status-sizes` items, enqueued with no worker:
  median of 300 calls per size, in interleaved rounds; the largest over the smallest.
- **fault**: `--fault-count` requests `until` finished, each with its own `notify_url`,
  and a batch of as many with one; the receiver answers 500 for 30 s while the workers
  are SIGKILLed and restarted (one every 2 s, alternately, 6 in all): every completion
  event must reach the receiver at least once (lost 0); duplicates are counted.

Medians of `--runs` runs; each e2e run starts its own redis-server and nomadsim.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from bench import procfs, stack
from dispatchq.cli.batch import FIRST_FAILURES
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import NewRequest
from dispatchq.store import keys

JOB = "bench-endings"
SIM_ARGS = [*stack.SIM_ARGS, "--time-scale", "0.001"]
"""bench.stack's cluster, with Nomad's restart and reschedule delays in milliseconds."""


def endings_job() -> dict[str, Any]:
    """bench.stack's job, its mock_driver task ending as its dispatch meta says."""
    job = stack.bench_job()
    job.update(ID=JOB, Name=JOB, Meta={"exit_code": "0", "run_for": "20s"})
    job["ParameterizedJob"] = {"Payload": "optional", "MetaOptional": ["exit_code", "run_for"]}
    task = job["TaskGroups"][0]["Tasks"][0]
    task["Config"] = {"exit_code": "${NOMAD_META_exit_code}", "run_for": "${NOMAD_META_run_for}"}
    return job


def items(count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(count):
        meta = {"exit_code": "3" if n % 10 == 0 else "0", "run_for": f"{20 + n % 40}s"}
        if n % 50 == 1:
            meta = {"bogus": "x"}  # not permitted: Nomad refuses the dispatch (exit 1)
        out.append({"payload": stack.payload(n), "meta": meta})
    return out


class Receiver:
    """A webhook receiver in this process: `status()` answers each POST; counts by event ID."""

    def __init__(self, status: Callable[[], int] = lambda: 200) -> None:
        self.status = status
        self.ok: Counter[str] = Counter()
        self.refused = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                answer = receiver.status()
                with receiver.lock:
                    if answer == 200:
                        receiver.ok[self.headers["X-Dispatchq-Event-Id"]] += 1
                    else:
                        receiver.refused += 1
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sim() -> NomadSimProcess:
    sim = NomadSimProcess(args=SIM_ARGS).start()
    answer = requests.put(f"{sim.address}/v1/jobs", json={"Job": endings_job()}, timeout=10)
    answer.raise_for_status()
    return sim


def _cpu(groups: list[Any]) -> float:
    """CPU seconds so far of the process groups' trees (workers, tracker, notifier)."""
    pids = [g.process.pid for g in groups if g is not None and g.process is not None]
    return sum(procfs.cpu_seconds(procfs.tree(pid)) for pid in pids)


def e2e_run(
    count: int, notify: bool, workers: int, logs: Path
) -> tuple[float, float, dict[int, int]]:
    """Seconds from submit to finished, CPU seconds per item of dispatchq's processes
    (workers, tracker and, with notifications, notifier: less sensitive to a shared
    machine than the wall clock), and the batch's exit codes."""
    receiver = Receiver() if notify else None
    sim = _sim()
    try:
        with RedisServer() as server:
            env = stack.worker_env(server.url, sim.address)
            if not notify:
                env["DISPATCHQ_EVENTS_STREAM"] = ""
            else:
                assert receiver is not None
                env.update(DISPATCHQ_NOTIFY_HOSTS=f"127.0.0.1:{receiver.port}",
                           DISPATCHQ_NOTIFY_SECRET="bench")  # fmt: skip
            procs = stack.start_workers(workers, env, pool=None, concurrency=None, log_dir=logs)
            tracker = TrackerProcess(env=env, log_path=logs / "tracker.log").start()
            notifier = NotifierProcess(env, logs / "notifier.log").start() if notify else None
            try:
                with Producer(stack.settings(server.url)) as producer:
                    listed = items(count)
                    cpu0 = _cpu([*procs, tracker, notifier])
                    started = time.perf_counter()
                    batch = producer.dispatch_batch(
                        JOB, listed, until="finished", preflight=False,
                        notify_url=receiver.url() if receiver else None,
                    )  # fmt: skip
                    status = stack.wait_finished(
                        producer, batch, timeout=max(300.0, count / 10), stall=120.0, poll=0.1
                    )
                    seconds = time.perf_counter() - started
                    cpu = (_cpu([*procs, tracker, notifier]) - cpu0) / count
                    if status is None or not status.finished:
                        raise RuntimeError(f"the batch did not finish: {status}")
                    if receiver is not None:
                        deadline = time.monotonic() + 60
                        while not receiver.ok[f"batch:{batch}"] and time.monotonic() < deadline:
                            time.sleep(0.05)
                        if not receiver.ok[f"batch:{batch}"]:
                            raise RuntimeError("the batch's webhook did not arrive")
                    return seconds, cpu, status.exit_codes
            finally:
                if notifier is not None:
                    notifier.stop()
                tracker.stop()
                stack.stop_all(procs)
    finally:
        sim.stop()
        if receiver is not None:
            receiver.close()


def status_bench(sizes: list[int], calls: int = 300) -> dict[int, float]:
    """Median seconds of `batch status`'s reads per batch size (no workers)."""
    with RedisServer() as server, Producer(stack.settings(server.url)) as producer:
        ids = {}
        for size in sizes:
            batch = producer.dispatch_batch(stack.JOB_ID, stack.items(size), preflight=False)
            for n in range(min(size, 10)):  # first failures (the summary reads 5)
                producer.redis.rpush(keys.batch_errors(batch), f'{{"request_id": "r{n}", '
                                     f'"exit_code": 2, "error": "task ffmpeg exit code 3"}}')
            ids[size] = batch
        timings: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(calls // 10):
            for size in sizes:
                for _ in range(10):
                    started = time.perf_counter()
                    status = producer.batch_status(ids[size])
                    producer.batches.errors(ids[size], FIRST_FAILURES)
                    timings[size].append(time.perf_counter() - started)
                    assert status is not None and status.total == size
        return {size: statistics.median(values) for size, values in timings.items()}


def fault_run(count: int, workers: int, logs: Path, failing_for: float = 30.0) -> dict[str, Any]:
    failing_until = [time.monotonic() + 3600.0]
    receiver = Receiver(lambda: 500 if time.monotonic() < failing_until[0] else 200)
    sim = _sim()
    try:
        with RedisServer() as server:
            env = {**stack.worker_env(server.url, sim.address),
                   "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{receiver.port}",
                   "DISPATCHQ_NOTIFY_SECRET": "bench"}  # fmt: skip
            procs = stack.start_workers(workers, env, pool=None, concurrency=None, log_dir=logs)
            tracker = TrackerProcess(env=env, log_path=logs / "tracker-f.log").start()
            notifier = NotifierProcess(env, logs / "notifier-f.log").start()
            kills = 0
            try:
                with Producer(stack.settings(server.url)) as producer:
                    started = time.monotonic()
                    failing_until[0] = started + failing_for
                    url = receiver.url()
                    listed = items(count)
                    ids = [rid for rid, _ in producer.enqueuer.enqueue(
                        NewRequest(JOB, payload=i["payload"], meta=i["meta"], until="finished",
                                   notify_url=url) for i in listed
                    )]  # fmt: skip
                    batch = producer.dispatch_batch(JOB, listed, until="finished",
                                                    preflight=False, notify_url=url)  # fmt: skip
                    while kills < 6:
                        time.sleep(2.0)
                        slot = kills % len(procs)
                        procs[slot].kill()
                        procs[slot] = stack.start_workers(
                            1, env, pool=None, concurrency=None, log_dir=logs,
                            prefix=f"restarted{kills}-",
                        )[0]  # fmt: skip
                        kills += 1
                    expected = {f"request:{rid}:1" for rid in ids} | {f"batch:{batch}"}
                    deadline = time.monotonic() + 600
                    while time.monotonic() < deadline:
                        with receiver.lock:
                            if expected <= set(receiver.ok):
                                break
                        time.sleep(0.2)
                    seconds = time.monotonic() - started
                with receiver.lock:
                    delivered = set(receiver.ok) & expected
                    duplicates = sum(n - 1 for n in receiver.ok.values())
                    refused = receiver.refused
                return {"events": len(expected), "delivered": len(delivered),
                        "lost": len(expected - delivered), "duplicates": duplicates,
                        "answered_500": refused, "worker_sigkills": kills,
                        "seconds": round(seconds, 1)}  # fmt: skip
            finally:
                notifier.stop()
                tracker.stop()
                stack.stop_all(procs)
    finally:
        sim.stop()
        receiver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--status-sizes", default="10,10000")
    parser.add_argument("--fault-count", type=int, default=1_000)
    parser.add_argument("--only", default="e2e,status,fault")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",")}
    print(f"bench.batch_endings: {args.runs} runs, {os.cpu_count()} CPUs, {args.workers} workers")
    with tempfile.TemporaryDirectory(prefix="bench-endings-") as tmp:
        logs = Path(tmp)
        if "e2e" in only:
            times: dict[str, list[float]] = {"off": [], "on": []}
            cpus: dict[str, list[float]] = {"off": [], "on": []}
            for run in range(1, args.runs + 1):
                for mode in ("off", "on") if run % 2 else ("on", "off"):
                    seconds, cpu, codes = e2e_run(args.count, mode == "on", args.workers, logs)
                    times[mode].append(seconds)
                    cpus[mode].append(cpu)
                    print(f"  run {run} notifications {mode:<3} {seconds:7.2f} s "
                          f"({args.count / seconds:,.0f} items/s), CPU {cpu * 1000:.3f} ms/item, "
                          f"exit codes {codes}", flush=True)  # fmt: skip
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            c_off, c_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
            print(f"e2e: {args.count:,} items until finished, median off {off:.2f} s, on "
                  f"{on:.2f} s, on/off {on / off:.3f} (limit: within 5 %); CPU per item of "
                  f"workers + tracker (+ notifier): off {c_off * 1000:.3f} ms, on "
                  f"{c_on * 1000:.3f} ms, on/off {c_on / c_off:.3f}")  # fmt: skip
        if "status" in only:
            sizes = [int(s) for s in args.status_sizes.split(",")]
            medians = status_bench(sizes)
            shown = ", ".join(f"{size:,} items {medians[size] * 1e6:.0f} us" for size in sizes)
            print(f"status: median of 300 reads: {shown}; largest/smallest "
                  f"{medians[max(sizes)] / medians[min(sizes)]:.2f}")  # fmt: skip
        if "fault" in only:
            figures = fault_run(args.fault_count, args.workers, logs)
            print(f"fault: receiver 500 for 30 s, workers SIGKILLed: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
