"""Backpressure end to end: real worker processes, redis-server and nomadsim."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.api import Producer
from dispatchq.store import keys
from dispatchq.store.batches import BatchStatus
from tests.support.nomad_jobs import add_fault, parameterized_job, register
from tests.support.stack import Stack

WAIT = 90
SLOW_JOB = "slow-encode"


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    """Overrides the stack's nomadsim: children of `slow-encode` run for 1.5 s."""
    with NomadSimProcess(args=["--nodes", "2", "--node-cpu", "4000", "--node-memory", "4096"]) as s:
        job = parameterized_job(SLOW_JOB)
        job["TaskGroups"][0]["Tasks"][0]["Config"] = {"run_for": "1500ms"}
        register(s.address, job)
        register(s.address, parameterized_job("encode"))
        register(s.address, parameterized_job("huge", memory_mb=100_000))
        yield s


def _events(log: str) -> set[str]:
    """The events of a worker log's JSON lines (Celery's own lines are plain text)."""
    return {json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")}


def worker(stack: Stack, name: str, **settings: str) -> WorkerProcess:
    env = {**stack.env, **{f"DISPATCHQ_{k.upper()}": v for k, v in settings.items()}}
    return WorkerProcess(env=env, name=name, log_path=stack.log_dir / f"{name}.log")


def finished(producer: Producer, batch_id: str) -> BatchStatus:
    deadline = time.monotonic() + WAIT
    while not (status := producer.batch_status(batch_id)) or not status.finished:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


class UnfinishedSampler:
    """Polls the parent's JobSummary and keeps the largest Pending + Running seen."""

    def __init__(self, address: str, job_id: str) -> None:
        self.url = f"{address}/v1/job/{job_id}/summary"
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UnfinishedSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                children = session.get(self.url, timeout=5).json()["Children"]
                self.most = max(self.most, children["Pending"] + children["Running"])
                self._stop.wait(0.02)


def test_the_cap_bounds_unfinished_children(clean: Stack, producer: Producer) -> None:
    """Eight 1.5 s children under a cap of 2: never more than 3 unfinished at once (the cap,
    plus at most one dispatch in flight while the summary is re-read: see
    dispatchq.core.backpressure), and every request still ends scheduled, none requeued to
    failure. Without the cap all eight run together."""
    items: list[dict[str, object]] = [{} for _ in range(8)]
    with (
        worker(clean, "capped", max_unfinished_children="2", retry_max="0"),
        UnfinishedSampler(clean.sim.address, SLOW_JOB) as sampler,
    ):
        status = finished(producer, producer.dispatch_batch(SLOW_JOB, items, preflight=False))
    assert status.exit_codes == {0: 8}, status
    assert 2 <= sampler.most <= 3


def test_requeues_at_the_gate_do_not_use_up_retries(clean: Stack, producer: Producer) -> None:
    """With no retries allowed and a 0.3 s wait at the gate, requests that wait for a
    child slot several times are requeued each time and still end scheduled."""
    settings = {"max_unfinished_children": "1", "dispatch_max_wait": "0.3", "retry_max": "0"}
    with worker(clean, "requeued", **settings):
        batch_id = producer.dispatch_batch(SLOW_JOB, [{} for _ in range(3)], preflight=False)
        status = finished(producer, batch_id)
    assert status.exit_codes == {0: 3}, status
    log = (clean.log_dir / "requeued.log").read_text()
    assert "request.throttled" in _events(log)


@pytest.mark.parametrize(
    ("job_id", "exit_code", "fault"),
    [
        ("encode", 0, {"kind": "rate_limit", "route": "dispatch", "count": 2}),  # two 429s
        ("huge", 2, None),  # no node has the memory: resources exhausted
    ],
)
def test_nomad_pushing_back_slows_the_shared_rate(
    clean: Stack,
    producer: Producer,
    redis_client: redis.Redis,
    *,
    job_id: str,
    exit_code: int,
    fault: dict[str, object] | None,
) -> None:
    if fault:
        add_fault(clean.sim.address, fault)
    with worker(clean, f"slowed-{job_id}", dispatch_rate="100"):
        rid = producer.enqueue(job_id)
        outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None
    assert outcome.exit_code == exit_code
    assert float(redis_client.hget(keys.RATE, "rate") or 0) == pytest.approx(50, rel=0.2)
    log = (clean.log_dir / f"slowed-{job_id}.log").read_text()
    assert "backpressure.slowed" in _events(log)
