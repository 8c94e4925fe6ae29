"""Run a real Celery worker process (`celery -A dispatchq.worker worker`) for the demo and
the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dispatchq.config.connection import RedisTarget
from dispatchq.devstack.process_group import ProcessGroup
from dispatchq.store.liveness import live_workers


@dataclass
class WorkerProcess(ProcessGroup):
    """A worker in its own process group, configured by environment variables."""

    env: Mapping[str, str]
    pool: str = "gevent"
    concurrency: int = 500
    name: str = "w1"
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    task_events: bool = False
    """Send Celery's task events and worker heartbeats, which Flower shows (`-E`): a few
    Redis publishes per request, so off unless something watches."""
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        events = ["-E"] if self.task_events else ["--without-heartbeat"]
        return [
            sys.executable, "-m", "celery", "-A", "dispatchq.worker", "worker",
            "--pool", self.pool,
            "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h",
            "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", *events,
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        env = {**os.environ, **self.env}
        if self.log_path is None:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        else:
            with self.log_path.open("ab") as out:
                self.process = subprocess.Popen(
                    self.command(),
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self._wait_ready(env, timeout)
        return self

    def _wait_ready(self, env: Mapping[str, str], timeout: float) -> None:
        """Ready once the worker's heartbeat is in Redis (it beats once it consumes)."""
        client = RedisTarget.from_env(env).client()
        queue = self.env.get("DISPATCHQ_QUEUE", "dispatchq")
        deadline = time.monotonic() + timeout
        try:
            while not any(h.startswith(f"{self.name}@") for h in live_workers(client, queue)):
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"worker exited during start-up (see {self.log_path})")
                if time.monotonic() > deadline:
                    raise TimeoutError("worker did not start consuming in time")
                time.sleep(0.05)
        finally:
            client.close()

    def __enter__(self) -> WorkerProcess:
        return self.start()
