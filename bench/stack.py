"""Processes the end-to-end benches start: nomadsim with a bench job, `dispatchq worker`
processes, the naive Celery worker, and helpers to wait for stored outcomes.

Workers are started through the product's public command (`dispatchq worker`, i.e.
`python -m dispatchq.cli.main worker`), passing `--pool` and `--concurrency` only when the bench
was given them, so a bench measures whatever `dispatchq worker` does by default.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from bench import naive_app
from dispatchq.config.settings import Settings
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.api import Producer
from dispatchq.store import keys
from dispatchq.store.batches import BatchStatus

REPO = Path(__file__).resolve().parent.parent
JOB_ID = "bench-encode"
QUEUE = "dispatchq"
# A cluster big enough that no placement ever waits for capacity (50 nodes x 1,000 slots),
# allocations that finish in 11 ms: nomadsim is never what blocks.
SIM_ARGS = ["--nodes", "50", "--node-cpu", "100000", "--node-memory", "1000000",
            "--run-time", "10ms", "--start-time", "1ms"]  # fmt: skip
# Flags every worker gets (ours and the naive one alike): no cluster chatter between workers.
QUIET = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


def bench_job() -> dict[str, Any]:
    """A parameterized batch job with an optional payload and an optional `profile` meta."""
    return {
        "ID": JOB_ID,
        "Name": JOB_ID,
        "Type": "batch",
        "Datacenters": ["dc1"],
        "ParameterizedJob": {"Payload": "optional", "MetaOptional": ["profile"]},
        "TaskGroups": [
            {
                "Name": "encode",
                "Count": 1,
                "Tasks": [
                    {
                        "Name": "ffmpeg",
                        "Driver": "mock_driver",
                        "Resources": {"CPU": 100, "MemoryMB": 10},
                    }
                ],
            }
        ],
    }


def payload(n: int) -> bytes:
    """The n-th request's payload: a distinct small JSON document, as a real fan-out has."""
    return json.dumps({"source": f"s3://media/raw/clip-{n:06d}.mov", "n": n}).encode()


META = {"profile": "1080p"}


def items(count: int) -> list[dict[str, Any]]:
    """`count` batch items for `Producer.dispatch_batch`."""
    return [{"payload": payload(n), "meta": META} for n in range(count)]


@contextlib.contextmanager
def nomadsim(extra: list[str]) -> Iterator[NomadSimProcess]:
    """nomadsim with SIM_ARGS plus `extra`, and the bench job registered."""
    with NomadSimProcess(args=[*SIM_ARGS, *extra]) as sim:
        response = requests.put(f"{sim.address}/v1/jobs", json={"Job": bench_job()}, timeout=10)
        response.raise_for_status()
        yield sim


def sim_stats(sim: NomadSimProcess) -> dict[str, Any]:
    stats: dict[str, Any] = requests.get(f"{sim.address}/_sim/stats", timeout=30).json()
    return stats


def worker_env(redis_url: str, nomad_addr: str) -> dict[str, str]:
    """The environment of a dispatchq worker: this stack, JSON logs (to a file), the
    default log level, no NOMAD_* or DISPATCHQ_* inherited from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "DISPATCHQ_"))}
    env.update(
        DISPATCHQ_REDIS_URL=redis_url,
        DISPATCHQ_QUEUE=QUEUE,
        DISPATCHQ_LOG_FORMAT="json",
        NOMAD_ADDR=nomad_addr,
    )
    return env


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, queue=QUEUE)


@dataclass
class DispatchqWorker(WorkerProcess):
    """`dispatchq worker` in its own process group; `cli_pool` / `cli_concurrency` are
    passed only when set (None: the command's defaults). Readiness, stop and kill are
    WorkerProcess's (the worker's heartbeat in Redis)."""

    cli_pool: str | None = None
    cli_concurrency: int | None = None

    def command(self) -> list[str]:
        options: list[str] = []
        if self.cli_pool:
            options += ["--pool", self.cli_pool]
        if self.cli_concurrency:
            options += ["--concurrency", str(self.cli_concurrency)]
        return [
            sys.executable, "-m", "dispatchq.cli", "worker", *options,
            "--", "--hostname", f"{self.name}@%h", *QUIET, *self.extra_args,
        ]  # fmt: skip


def start_workers(
    count: int,
    env: dict[str, str],
    *,
    pool: str | None,
    concurrency: int | None,
    log_dir: Path,
    prefix: str = "bench",
) -> list[DispatchqWorker]:
    """Start `count` dispatchq workers and wait until each consumes."""
    workers: list[DispatchqWorker] = []
    try:
        for i in range(count):
            worker = DispatchqWorker(
                env=env,
                name=f"{prefix}{i + 1}",
                log_path=log_dir / f"{prefix}{i + 1}.log",
                cli_pool=pool,
                cli_concurrency=concurrency,
            )
            worker.start(timeout=60)
            workers.append(worker)
    except BaseException:
        stop_all(workers)
        raise
    return workers


def stop_all(workers: list[DispatchqWorker]) -> None:
    for worker in workers:
        worker.stop()


@dataclass
class NaiveWorker:
    """`celery -A bench.naive_app worker` in its own process group."""

    redis_url: str
    nomad_addr: str
    pool: str = "prefork"
    concurrency: int = 2
    name: str = "naive"
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 60.0) -> NaiveWorker:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "NAIVE_REDIS_URL": self.redis_url,
            "NAIVE_NOMAD_ADDR": self.nomad_addr,
        }
        command = [
            sys.executable, "-m", "celery", "-A", "bench.naive_app", "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h", *QUIET,
        ]  # fmt: skip
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            if self.log_path and not isinstance(out, int):
                out.close()
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        try:
            while not client.keys(f"{naive_app.READY_PREFIX}{self.name}@*"):
                if self.process.poll() is not None:
                    raise RuntimeError(f"naive worker exited during start-up ({self.log_path})")
                if time.monotonic() > deadline:
                    raise TimeoutError("naive worker did not become ready")
                time.sleep(0.05)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None

    def __enter__(self) -> NaiveWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_finished(
    producer: Producer, batch_id: str, *, timeout: float, stall: float, poll: float = 0.05
) -> BatchStatus | None:
    """Poll `batch_status` every `poll` seconds until the batch is finished, `timeout`
    seconds pass, or `done` has not moved for `stall` seconds (a stuck run ends early
    instead of hanging; the caller reports what did not finish)."""
    started = last_move = time.monotonic()
    last_done = -1
    while True:
        status = producer.batch_status(batch_id)
        now = time.monotonic()
        if status is not None and status.finished:
            return status
        done = status.done if status else 0
        if done != last_done:
            last_done, last_move = done, now
        if now - started > timeout or now - last_move > stall:
            return status
        time.sleep(poll)


def unfinished(producer: Producer, batch_id: str) -> str:
    """What the requests of a batch that did not finish are doing: record states, and
    outcomes stored as a Celery FAILURE (a task that raised) — for the report."""
    ids = list(producer.batches.request_ids(batch_id))
    pipe = producer.redis.pipeline(transaction=False)
    for rid in ids:
        pipe.hget(keys.request(rid), "state")
    states = Counter((s or b"none").decode() for s in pipe.execute())
    metas = result_states(producer.redis, ids)
    failures = Counter(
        str(m["result"].get("exc_type") if isinstance(m.get("result"), dict) else m["status"])
        for m in metas
        if m is not None and m.get("status") != "SUCCESS"
    )
    missing = sum(1 for m in metas if m is None)
    return (
        f"record states {dict(states)}, outcomes missing {missing}, "
        f"Celery task failures {dict(failures)}"
    )


def count_existing(client: redis.Redis, names: list[str], chunk: int = 1000) -> int:
    """How many of the keys `names` exist (EXISTS in chunks, one pipeline)."""
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(names), chunk):
        pipe.exists(*names[i : i + chunk])
    return sum(int(n) for n in pipe.execute())


def wait_stored(client: redis.Redis, request_ids: list[str], timeout: float) -> int:
    """Wait (polling every 50 ms) until every request's outcome key exists; returns how
    many exist when that happens or the timeout passes."""
    names = [keys.celery_result(rid) for rid in request_ids]
    deadline = time.monotonic() + timeout
    while True:
        stored = count_existing(client, names)
        if stored >= len(names) or time.monotonic() > deadline:
            return stored
        time.sleep(0.05)


def result_states(client: redis.Redis, request_ids: list[str]) -> list[dict[str, Any] | None]:
    """The Celery result meta of each request (None where there is none)."""
    out: list[dict[str, Any] | None] = []
    names = [keys.celery_result(rid) for rid in request_ids]
    for i in range(0, len(names), 1000):
        for raw in client.mget(names[i : i + 1000]):
            out.append(json.loads(raw) if raw else None)
    return out
