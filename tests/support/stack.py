"""Fixtures for queue tests: a real redis-server, nomadsim and Celery worker processes.

Loaded for every test package by `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatchq.config.settings import Settings
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.api import Producer
from dispatchq.store.liveness import live_workers
from tests.support.nomad_jobs import clear_faults, parameterized_job, register

QUEUE = "dispatchq-test"


@dataclass
class Stack:
    redis: RedisServer
    sim: NomadSimProcess
    env: dict[str, str]
    log_dir: Path

    def worker(self, name: str = "w1", **kwargs: Any) -> WorkerProcess:
        return WorkerProcess(
            env=self.env, name=name, log_path=self.log_dir / f"{name}.log", **kwargs
        )

    def producer(self) -> Producer:
        return Producer(Settings(redis_url=self.redis.url, queue=QUEUE))


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    # room for 200 children of `encode` at once (a batch of 150 never waits for capacity,
    # however fast the gate lets it through); `huge` fits no node
    args = ["--nodes", "2", "--node-cpu", "10000", "--node-memory", "8192"]
    with NomadSimProcess(args=args) as s:
        register(s.address, parameterized_job("encode", meta_required=["profile"]))
        register(s.address, parameterized_job("huge", memory_mb=100_000))
        register(s.address, parameterized_job("needs-payload", payload="required"))
        yield s


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, sim: NomadSimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Stack:
    root = tmp_path_factory.mktemp("payloads")
    env = {
        "DISPATCHQ_REDIS_URL": redis_server.url,
        "DISPATCHQ_QUEUE": QUEUE,
        "DISPATCHQ_TASK_TIME_LIMIT": "10",
        "DISPATCHQ_RETRY_MAX": "4",
        "DISPATCHQ_RETRY_FLOOR": "0.05",
        "DISPATCHQ_RETRY_CAP": "0.2",
        "DISPATCHQ_PAYLOAD_FILE_ROOTS": str(root),
        "DISPATCHQ_LOG_FORMAT": "json",
        "NOMAD_ADDR": sim.address,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    for key in [k for k in os.environ if k.startswith(("NOMAD_", "DISPATCHQ_"))]:
        env.setdefault(key, "")
    return Stack(redis_server, sim, env, tmp_path_factory.mktemp("logs"))


@pytest.fixture
def clean(stack: Stack, redis_client: redis.Redis) -> Iterator[Stack]:
    """The stack with an empty Redis and no faults switched on."""
    clear_faults(stack.sim.address)
    yield stack
    clear_faults(stack.sim.address)


@pytest.fixture(scope="module")
def module_worker(stack: Stack) -> Iterator[WorkerProcess]:
    with stack.worker("shared") as worker:
        yield worker


@pytest.fixture
def running(module_worker: WorkerProcess, clean: Stack, redis_client: redis.Redis) -> Stack:
    """The clean stack with the module's worker consuming (and seen to: its heartbeat,
    which the flush removed, is back)."""
    deadline = time.monotonic() + 10
    while not live_workers(redis_client, QUEUE):
        assert time.monotonic() < deadline, "the module's worker stopped beating"
        time.sleep(0.05)
    return clean


@pytest.fixture
def producer(clean: Stack) -> Iterator[Producer]:
    with clean.producer() as p:
        yield p
