"""Completion events and webhooks: what they cost dispatching, and how fast they go out.

    .venv/bin/python -m bench.notify [--count 10000] [--runs 3] [--hooks 2000]
        [--slow-count 2000] [--only stream,deliveries,slow]

- **stream**: `--count` requests end to end against nomadsim (`bench.stack`'s cluster, one
  batch, `--workers` dispatchq workers), with the completion event stream on (the
  default) and off (`DISPATCHQ_EVENTS_STREAM=`), interleaved run by run; the clock runs
  from the enqueue until the batch is finished. Target: within 5 %.
- **deliveries**: `--hooks` request events naming a local receiver (a ThreadingHTTPServer
  in a process of its own, answering 200 at once) are appended to the stream (as the done
  script appends them) once `dispatchq notifier` (8 threads) is ready; the clock runs from
  the first append until every entry is acknowledged (the group's lag and pending both 0).
  Webhook deliveries per second.
- **slow**: `--slow-count` requests end to end, each naming a receiver that sleeps 5 s
  per POST, with a notifier running, against the same requests with no URL and no
  notifier: dispatching must not slow down (the notifier is apart from the workers, and
  holds at most `--max-pending` events).

Medians of `--runs` runs; each run starts its own redis-server and nomadsim.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import procfs, stack
from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import NewRequest
from dispatchq.store import keys
from dispatchq.store.completion import EventStream
from dispatchq.store.records import RecordStore

RECEIVER = """
import http.server, sys, time
delay = float(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if delay:
            time.sleep(delay)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def receiver(delay: float) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(delay)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


CPU: dict[str, list[float]] = {}
"""CPU seconds per request of the worker processes, per scenario (less sensitive to a
shared machine than the rates)."""


def dispatch_run(
    count: int, env_extra: dict[str, str], log_dir: Path, workers: int, *,
    url: str | None = None, notifier_env: dict[str, str] | None = None, label: str = "",
) -> float:  # fmt: skip
    """Seconds to enqueue `count` requests in one batch and see it finished."""
    with stack.nomadsim([]) as sim, RedisServer() as server:
        env = {**stack.worker_env(server.url, sim.address), **env_extra}
        procs = stack.start_workers(workers, env, pool=None, concurrency=None, log_dir=log_dir)
        notifier = None
        try:
            if notifier_env is not None:
                notifier = NotifierProcess({**env, **notifier_env}, log_dir / "notifier.log")
                notifier.start()
            with Producer(stack.settings(server.url)) as producer:
                batch_id = f"b{time.time_ns()}"
                items = stack.items(count)
                cpu0 = _cpu(procs)
                started = time.perf_counter()
                pipe = producer.redis.pipeline(transaction=False)
                producer.batches.create(pipe, batch_id, stack.JOB_ID, namespace=None, total=count)
                pipe.execute()
                producer.enqueuer.enqueue(
                    NewRequest(stack.JOB_ID, payload=item["payload"], meta=item["meta"],
                               request_id=f"{batch_id}-{n}", batch_id=batch_id,
                               notify_url=url)
                    for n, item in enumerate(items)
                )  # fmt: skip
                status = stack.wait_finished(
                    producer, batch_id, timeout=max(120.0, count / 20), stall=60.0
                )
                seconds = time.perf_counter() - started
                CPU.setdefault(label, []).append((_cpu(procs) - cpu0) / count)
                if status is None or not status.finished:
                    raise RuntimeError("the batch did not finish")
        finally:
            if notifier is not None:
                notifier.stop()
            stack.stop_all(procs)
    return seconds


def _cpu(procs: list[stack.DispatchqWorker]) -> float:
    return sum(
        procfs.cpu_seconds(procfs.tree(w.process.pid)) for w in procs if w.process is not None
    )


def deliveries_run(hooks: int, log_dir: Path) -> float:
    """Webhook deliveries per second from a standing start, `hooks` events queued."""
    process, port = receiver(0.0)
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            store = RecordStore(client, 600, EventStream())
            stored = {"v": 1, "status": "complete", "exit_code": 0, "job_id": "j", "events": []}
            url = f"http://127.0.0.1:{port}/hook"
            env = {
                **stack.worker_env(server.url, "http://127.0.0.1:1"),
                "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{port}",
                "DISPATCHQ_NOTIFY_SECRET": "bench",
            }
            with NotifierProcess(env, log_dir / "notifier.log"):  # ready: its group exists
                started = time.perf_counter()
                for n in range(hooks):
                    store.mark_done(f"r-{n}", 0, None, outcome=stored, notify_url=url)
                while True:
                    [group] = client.xinfo_groups(keys.EVENTS)
                    if group["lag"] == 0 and group["pending"] == 0:
                        break
                    time.sleep(0.01)
                seconds = time.perf_counter() - started
            client.close()
    finally:
        process.kill()
        process.wait()
    return hooks / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hooks", type=int, default=2_000)
    parser.add_argument("--slow-count", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default="stream,deliveries,slow")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",")}
    print(f"bench.notify: {args.runs} runs, {os.cpu_count()} CPUs, {args.workers} workers")
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        logs = Path(tmp)
        if "stream" in only:
            rates: dict[str, list[float]] = {"off": [], "on": []}
            for run in range(1, args.runs + 1):
                for mode in ("off", "on"):
                    extra = {"DISPATCHQ_EVENTS_STREAM": "" if mode == "off" else keys.EVENTS}
                    seconds = dispatch_run(args.count, extra, logs, args.workers, label=mode)
                    rate = args.count / seconds
                    rates[mode].append(rate)
                    print(f"  run {run} stream {mode:<3} {rate:8,.0f} requests/s, worker CPU "
                          f"{CPU[mode][-1] * 1000:.3f} ms/request", flush=True)  # fmt: skip
            off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
            print(f"stream: {args.count:,} requests, median off {off:,.0f}/s, on {on:,.0f}/s, "
                  f"on/off {on / off:.3f} (target >= 0.95); worker CPU per request: off "
                  f"{statistics.median(CPU['off']) * 1000:.3f} ms, on "
                  f"{statistics.median(CPU['on']) * 1000:.3f} ms")  # fmt: skip
        if "deliveries" in only:
            got = []
            for run in range(1, args.runs + 1):
                got.append(deliveries_run(args.hooks, logs))
                print(f"  run {run} deliveries {got[-1]:8,.0f}/s", flush=True)
            print(f"deliveries: {args.hooks:,} webhooks to a local receiver, median "
                  f"{statistics.median(got):,.0f}/s (notifier: 8 threads)")  # fmt: skip
        if "slow" in only:
            slow: dict[str, list[float]] = {"none": [], "slow": []}
            for run in range(1, args.runs + 1):
                for mode in ("none", "slow"):
                    rate = args.slow_count / _slow(mode, args.slow_count, logs, args.workers)
                    slow[mode].append(rate)
                    print(f"  run {run} receiver {mode:<4} {rate:8,.0f} requests/s", flush=True)
            none, sleepy = statistics.median(slow["none"]), statistics.median(slow["slow"])
            print(f"slow receiver: {args.slow_count:,} requests, each POSTed to a receiver "
                  f"sleeping 5 s: {sleepy:,.0f}/s vs {none:,.0f}/s with none "
                  f"({sleepy / none:.3f})")  # fmt: skip
    return 0


def _slow(mode: str, count: int, logs: Path, workers: int) -> float:
    if mode == "none":
        return dispatch_run(count, {}, logs, workers)
    process, port = receiver(5.0)
    try:
        notifier_env: dict[str, Any] = {
            "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{port}", "DISPATCHQ_NOTIFY_SECRET": "bench",
        }  # fmt: skip
        return dispatch_run(
            count, {}, logs, workers, url=f"http://127.0.0.1:{port}/slow",
            notifier_env=notifier_env,
        )  # fmt: skip
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
