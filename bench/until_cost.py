"""What following children to their end costs: the same batch `until` finished against
`until` scheduled, per request, in the same run.

    .venv/bin/python -m bench.until_cost [--count 2000] [--runs 3] [--workers 2]

Each run starts nomadsim (`--time-scale 0.001`: every child's task runs 20 ms) and a
redis-server, `--workers` dispatchq workers and, for `until` finished, one tracker; a batch
of `--count` children that all succeed. Per request, medians of the interleaved runs: the
CPU of dispatchq's processes (workers, and the tracker when one runs), and the commands
redis-server ran (INFO commandstats, scripts' commands included). The budget: finished
costs at most 1.3x scheduled in both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

from bench import stack
from bench.batch_endings import SIM_ARGS, _cpu, endings_job
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.producer.api import Producer

JOB = "bench-endings"


def _commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def one_run(until: str, count: int, workers: int, logs: Path) -> tuple[float, float, float]:
    """(CPU ms, Redis commands, the tracker's CPU ms) per request of one batch `until`
    scheduled or finished."""
    sim = NomadSimProcess(args=SIM_ARGS).start()
    try:
        requests.put(f"{sim.address}/v1/jobs", json={"Job": endings_job()},
                     timeout=10).raise_for_status()  # fmt: skip
        with RedisServer() as server:
            env = stack.worker_env(server.url, sim.address)
            env["DISPATCHQ_EVENTS_STREAM"] = ""  # webhooks are another bench's (notify.py)
            procs: list[Any] = stack.start_workers(workers, env, pool=None, concurrency=None,
                                                   log_dir=logs)  # fmt: skip
            if until == "finished":
                procs.append(TrackerProcess(env=env, log_path=logs / "tracker.log").start())
            try:
                with Producer(stack.settings(server.url)) as producer:
                    items = [{"payload": stack.payload(n), "meta": {"run_for": "20s"}}
                             for n in range(count)]  # fmt: skip
                    cpu0, commands0 = _cpu(procs), _commands(producer.redis)
                    tracker0 = _cpu(procs[workers:])
                    batch = producer.dispatch_batch(JOB, items, until=until, preflight=False)
                    status = stack.wait_finished(producer, batch, timeout=max(300.0, count / 5),
                                                 stall=120.0, poll=0.2)  # fmt: skip
                    if status is None or status.exit_codes != {0: count}:
                        raise RuntimeError(f"the batch did not succeed whole: {status}")
                    time.sleep(0.5)  # the last outcomes' own writes
                    cpu = (_cpu(procs) - cpu0) / count * 1000
                    commands = (_commands(producer.redis) - commands0) / count
                    tracker = (_cpu(procs[workers:]) - tracker0) / count * 1000
                    return cpu, commands, tracker
            finally:
                for proc in procs:
                    proc.stop()
    finally:
        sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float, float]]] = {"scheduled": [], "finished": []}
    with tempfile.TemporaryDirectory(prefix="bench-until-") as logs:
        for n in range(args.runs):
            for until, runs in figures.items():
                runs.append(one_run(until, args.count, args.workers, Path(logs)))
                cpu, commands, tracker = runs[-1]
                print(f"  run {n + 1} until {until:<9} CPU {cpu:.2f} ms (tracker "
                      f"{tracker:.2f}), Redis commands {commands:.1f} per request",
                      flush=True)  # fmt: skip
    medians = {until: (statistics.median(c for c, _, _ in runs),
                       statistics.median(m for _, m, _ in runs))
               for until, runs in figures.items()}  # fmt: skip
    (c_s, m_s), (c_f, m_f) = medians["scheduled"], medians["finished"]
    ok = c_f / c_s <= 1.3 and m_f / m_s <= 1.3
    print(f"{args.count:,} requests, medians of {args.runs}: until scheduled CPU {c_s:.2f} ms, "
          f"{m_s:.1f} commands; until finished CPU {c_f:.2f} ms (workers + tracker), "
          f"{m_f:.1f} commands; finished/scheduled CPU {c_f / c_s:.2f}x, commands "
          f"{m_f / m_s:.2f}x (budget <= 1.3x): {'ok' if ok else 'MISSED'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
