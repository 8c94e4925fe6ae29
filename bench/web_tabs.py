"""The dashboard's cost: a batch page's live refresh, by batch size; and a hundred open tabs
against the workers.

    .venv/bin/python -m bench.web_tabs [--count 3000] [--tabs 100] [--runs 3]

- **size**: the live part of a batch's page (`/batches/<id>/live`, what an open tab fetches
  every second) for a batch of 10 items and one of 100,000, on one redis-server: Redis
  commands per refresh (`INFO commandstats`, before and after 200 refreshes) and the median
  time of a refresh, for each. Target: the same commands, whatever the size.
- **tabs**: `--count` requests end to end (one batch, `bench.stack`'s cluster and workers)
  with `--tabs` simulated tabs refreshing that batch's live part every second through a
  `dispatchq web` process, against the same with no tab, interleaved run by run. Target:
  within 10 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

from bench import stack
from bench.common import ratio
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.web_process import WebProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import NewRequest
from dispatchq.store import keys


def _web(redis_url: str, log: Path) -> WebProcess:
    env = {"DISPATCHQ_REDIS_URL": redis_url, "DISPATCHQ_QUEUE": stack.QUEUE}
    return WebProcess(env=env, log_path=log).start()


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))


def size_run(log_dir: Path) -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        producer = Producer(stack.settings(server.url))
        rows = []
        for total in (10, 100_000):
            batch_id = f"size-{total}"
            pipe = client.pipeline(transaction=False)
            producer.batches.create(pipe, batch_id, stack.JOB_ID, namespace=None, total=total)
            pipe.execute()
            client.hset(keys.batch(batch_id), mapping={"done": total // 2, "exit:0": total // 2})
            for n in range(min(total, 100)):
                entry = {"request_id": f"r{n}", "exit_code": 2, "error": "task ffmpeg exit code 3"}
                client.rpush(keys.batch_errors(batch_id), json.dumps(entry))
            web = _web(server.url, log_dir / "web-size.log")
            base = web.url.rstrip("/")
            try:
                session = requests.Session()
                url = f"{base}/batches/{batch_id}/live"
                session.get(url, timeout=5).raise_for_status()
                before = _commands(client)
                times = []
                for _ in range(200):
                    started = time.perf_counter()
                    session.get(url, timeout=5).raise_for_status()
                    times.append(time.perf_counter() - started)
                per = (_commands(client) - before - 1) / 200  # the INFO call itself: 1
                rows.append((total, per, statistics.median(times) * 1000))
            finally:
                web.stop()
        producer.close()
    print("\nA batch page's live refresh, by batch size (200 refreshes)")
    for total, per, ms in rows:
        print(f"  {total:>7,} items: {per:.1f} Redis commands per refresh, median {ms:.2f} ms")


def tabs_run(count: int, tabs: int, log_dir: Path) -> float:
    """Seconds to see `count` requests of one batch finished, with `tabs` tabs open."""
    with stack.nomadsim([]) as sim, RedisServer() as server:
        env = stack.worker_env(server.url, sim.address)
        procs = stack.start_workers(1, env, pool=None, concurrency=None, log_dir=log_dir)
        web = _web(server.url, log_dir / "web.log") if tabs else None
        base = web.url.rstrip("/") if web is not None else ""
        stop = threading.Event()
        try:
            with Producer(stack.settings(server.url)) as producer:
                batch_id = f"b{time.time_ns()}"

                def tab(n: int) -> None:
                    session = requests.Session()
                    stop.wait(n / tabs)  # spread over the second, as real tabs are
                    while not stop.is_set():
                        session.get(f"{base}/batches/{batch_id}/live", timeout=10)
                        stop.wait(1.0)

                threads = [threading.Thread(target=tab, args=(n,), daemon=True)
                           for n in range(tabs)]  # fmt: skip
                for thread in threads:
                    thread.start()
                started = time.perf_counter()
                pipe = producer.redis.pipeline(transaction=False)
                producer.batches.create(pipe, batch_id, stack.JOB_ID, namespace=None, total=count)
                pipe.execute()
                producer.enqueuer.enqueue(
                    NewRequest(stack.JOB_ID, payload=item["payload"], meta=item["meta"],
                               request_id=f"{batch_id}-{n}", batch_id=batch_id)
                    for n, item in enumerate(stack.items(count))
                )  # fmt: skip
                status = stack.wait_finished(producer, batch_id, timeout=600, stall=60)
                seconds = time.perf_counter() - started
                if status is None or not status.finished:
                    raise RuntimeError("the batch did not finish")
        finally:
            stop.set()
            if web is not None:
                web.stop()
            stack.stop_all(procs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3_000)
    parser.add_argument("--tabs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        log_dir = Path(tmp)
        size_run(log_dir)
        rates: dict[str, list[float]] = {"no tab": [], f"{args.tabs} tabs": []}
        for _ in range(args.runs):
            for label, tabs in (("no tab", 0), (f"{args.tabs} tabs", args.tabs)):
                rates[label].append(args.count / tabs_run(args.count, tabs, log_dir))
        print(f"\n{args.count:,} requests end to end, one worker (medians of {args.runs} runs)")
        for label, each in rates.items():
            runs = ", ".join(f"{r:,.0f}" for r in each)
            print(f"  {label:<10} median {statistics.median(each):,.0f}/s   runs: {runs}")
        ratio(f"{args.tabs} tabs / no tab", statistics.median(rates[f"{args.tabs} tabs"]),
              statistics.median(rates["no tab"]), 0.9)  # fmt: skip


if __name__ == "__main__":
    main()
