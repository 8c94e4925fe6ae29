"""The durability receipt's price: enqueue with `redis_min_replicas=1` (each enqueue call
ends with PUBLISH + WAIT on its connection: one more round trip) against the same enqueue
without it, on one redis-server primary with one replica on loopback, in the same run.
Single requests (`enqueue`, the receipt per request) and a 2,000-item batch
(`dispatch_batch`, one receipt per call). Medians of interleaved runs.

    .venv/bin/python -m bench.receipt [--single 2000] [--batch 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import time

import redis

from bench.common import interleaved_rates, ratio, report
from dispatchq.config.settings import Settings
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.api import Producer

QUEUE = "bench"


def _wait_replica(primary: redis.Redis) -> None:
    deadline = time.monotonic() + 20
    while (primary.info("replication").get("slave0") or {}).get("state") != "online":
        if time.monotonic() > deadline:
            raise TimeoutError("the replica did not come online")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    single: int = args.single
    batch_size: int = args.batch
    with RedisServer() as primary:
        replica_args = ["--replicaof", "127.0.0.1", str(primary.port)]
        with RedisServer(extra_args=replica_args):
            client = redis.Redis.from_url(primary.url)
            _wait_replica(client)
            plain = Producer(Settings(redis_url=primary.url, queue=QUEUE))
            durable = Producer(Settings(redis_url=primary.url, queue=QUEUE, redis_min_replicas=1))
            meta = {"profile": "hd"}
            items = [{"meta": meta} for _ in range(batch_size)]

            def singles(producer: Producer) -> int:
                client.flushall()
                for _ in range(single):
                    producer.enqueue("video-encode", meta=meta)
                return single

            def batch(producer: Producer) -> int:
                client.flushall()
                producer.dispatch_batch("video-encode", items, preflight=False)
                return batch_size

            rows = interleaved_rates(
                {
                    "enqueue, primary's answer": lambda: singles(plain),
                    "enqueue, + receipt (1 replica)": lambda: singles(durable),
                    "dispatch_batch, primary's answer": lambda: batch(plain),
                    "dispatch_batch, + receipt (1 replica)": lambda: batch(durable),
                },
                args.runs,
            )
            report(f"The durability receipt (medians of {args.runs} runs)", rows)
            rates = {name: median for name, median, _ in rows}
            ratio("single enqueue with / without", rates["enqueue, + receipt (1 replica)"],
                  rates["enqueue, primary's answer"], 0.5)  # fmt: skip
            ratio("dispatch_batch with / without", rates["dispatch_batch, + receipt (1 replica)"],
                  rates["dispatch_batch, primary's answer"], 0.9)  # fmt: skip
            plain.close()
            durable.close()
            client.close()


if __name__ == "__main__":
    main()
