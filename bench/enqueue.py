"""Figure 1: enqueue 10,000 requests.

Ours (`Producer.dispatch_batch`: record + message per request, the payload in the
message, one script call per 500) against, in the same run and on the same redis-server: a
`task.delay()` loop (Celery's default publishing, 1,000 requests, scaled), and the same
protocol-2 messages built by hand and pushed with a raw pipelined LPUSH (the ceiling: no
records, no lanes, no checks; the same payload in each message as ours sends it, a
`data:` reference). Medians of 5 runs, interleaved.

    .venv/bin/python -m bench.enqueue [--count 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
from base64 import b64encode

import redis
from celery import Celery

from bench.common import interleaved_rates, ratio, report
from dispatchq.config.settings import Settings
from dispatchq.core.request import DispatchRequest
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer
from dispatchq.store.messages import celery_message, new_request_id

QUEUE = "bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.count, args.runs)
    report(f"Enqueue {args.count:,} requests (medians of {args.runs} runs)", rows)
    rates = {name: median for name, median, _ in rows}
    ratio("dispatch_batch / delay() loop", rates["dispatch_batch"], rates["delay() loop"], 4.0)
    ratio("dispatch_batch / raw LPUSH", rates["dispatch_batch"], rates["raw LPUSH pipeline"], 0.8)


def measure(count: int, runs: int) -> list[tuple[str, float, list[float]]]:
    """(scenario, median rate, each run's rate) of the three, interleaved."""
    payload = json.dumps({"source": "s3://media/raw/clip.mov"}).encode()
    inline_ref = "data:;base64," + b64encode(payload).decode()  # as ours sends it
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        settings = Settings(redis_url=server.url, queue=QUEUE)
        producer = Producer(settings)
        app = Celery("bench", broker=server.url, backend=server.url)
        app.conf.task_default_queue = QUEUE
        app.conf.task_serializer = "json"

        @app.task(name="dispatchq.dispatch")
        def dispatch(**_: object) -> None:
            """The real task's name; never run here."""

        def delay_loop() -> int:
            client.flushall()
            n = min(count, 1000)
            for _ in range(n):
                dispatch.delay(job_id="video-encode", meta={"profile": "hd"})
            return n

        def raw_lpush() -> int:
            client.flushall()
            meta = {"profile": "hd"}
            messages = [
                celery_message(
                    DispatchRequest(
                        request_id=new_request_id(), job_id="video-encode", meta=meta,
                        payload_ref=inline_ref,
                    ).to_message(),
                    QUEUE,
                )
                for _ in range(count)
            ]  # fmt: skip
            pipe = client.pipeline(transaction=False)
            for i in range(0, count, 500):
                pipe.lpush(QUEUE, *messages[i : i + 500])
            pipe.execute()
            return count

        items = [{"payload": payload, "meta": {"profile": "hd"}} for _ in range(count)]

        def ours() -> int:
            client.flushall()
            producer.dispatch_batch("video-encode", items, preflight=False)
            return count

        rows = interleaved_rates(
            {"delay() loop": delay_loop, "raw LPUSH pipeline": raw_lpush, "dispatch_batch": ours},
            runs,
        )
        producer.close()
        client.close()
    return rows


if __name__ == "__main__":
    main()
