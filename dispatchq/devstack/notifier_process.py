"""Run `dispatchq notifier` (webhook delivery, `dispatchq.notifier.webhooks`) as a process of its
own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from dispatchq.config.connection import RedisTarget
from dispatchq.devstack.process_group import ProcessGroup
from dispatchq.store import keys


@dataclass
class NotifierProcess(ProcessGroup):
    """A notifier in its own process group, configured by environment variables."""

    env: Mapping[str, str]
    log_path: Path | None = None
    claim_idle: float = 60.0
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dispatchq.cli", "notifier",
                "--claim-idle", str(self.claim_idle)]  # fmt: skip

    def start(self, timeout: float = 30.0) -> NotifierProcess:
        env = {**os.environ, **self.env}
        out = self.log_path.open("ab") if self.log_path is not None else None
        try:
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=subprocess.DEVNULL,
                stderr=out if out is not None else subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            if out is not None:
                out.close()
        self._wait_ready(env, timeout)
        return self

    def _wait_ready(self, env: Mapping[str, str], timeout: float) -> None:
        """Ready once its consumer group exists on the event stream."""
        client = RedisTarget.from_env(env).client()
        stream = env.get("DISPATCHQ_EVENTS_STREAM", keys.EVENTS)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    groups: list[dict[str, bytes]] = client.xinfo_groups(stream)
                except redis.ResponseError:
                    groups = []
                if any(g["name"] == keys.NOTIFIER_GROUP.encode() for g in groups):
                    return
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"notifier exited during start-up (see {self.log_path})")
                if time.monotonic() > deadline:
                    raise TimeoutError("notifier did not start in time")
                time.sleep(0.05)
        finally:
            client.close()

    def __enter__(self) -> NotifierProcess:
        return self.start()
