"""A whole local dispatchq stack: redis-server, nomadsim with a demo job, worker processes.

Used by `dispatchq demo` (run a fan-out, then stop) and `dispatchq dev` (keep running).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devstack.nomadsim_process import NomadSimProcess
from devstack.redis_server import RedisServer
from devstack.worker_process import WorkerProcess

DEMO_JOB = "video-encode"
DEMO_QUEUE = "dispatchq"
# Six nodes of 8 x 500 MHz encode slots: a burst fills the cluster and
# some placements wait for capacity (blocked evaluations), as on a busy real cluster.
SIM_ARGS = ["--nodes", "6", "--node-cpu", "4000", "--node-memory", "8192", "--run-time", "300ms"]


def demo_job() -> dict[str, Any]:
    """The `video-encode` parameterized job: payload required, meta profile required."""
    return {
        "ID": DEMO_JOB,
        "Name": DEMO_JOB,
        "Type": "batch",
        "Datacenters": ["dc1"],
        "ParameterizedJob": {
            "Payload": "required",
            "MetaRequired": ["profile"],
            "MetaOptional": ["priority"],
        },
        "TaskGroups": [
            {
                "Name": "encode",
                "Count": 1,
                "Tasks": [
                    {
                        "Name": "ffmpeg",
                        "Driver": "exec",
                        "Config": {"command": "ffmpeg", "args": ["-i", "${NOMAD_TASK_DIR}/in"]},
                        "Resources": {"CPU": 500, "MemoryMB": 256},
                        "DispatchPayload": {"File": "input.json"},
                    }
                ],
            }
        ],
    }


@dataclass
class LocalStack:
    redis: RedisServer
    sim: NomadSimProcess
    workers: list[WorkerProcess]

    @property
    def env(self) -> dict[str, str]:
        """What another shell exports to use this stack."""
        return {
            "DISPATCHQ_REDIS_URL": self.redis.url,
            "DISPATCHQ_QUEUE": DEMO_QUEUE,
            "NOMAD_ADDR": self.sim.address,
        }


@contextlib.contextmanager
def local_stack(workers: int = 1, concurrency: int = 500) -> Iterator[LocalStack]:
    """Start everything on loopback ports; stop it all on exit, Ctrl-C included."""
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dispatchq-")))
        redis_server = stack.enter_context(RedisServer())
        sim = stack.enter_context(NomadSimProcess(args=SIM_ARGS))
        response = requests.put(f"{sim.address}/v1/jobs", json={"Job": demo_job()}, timeout=10)
        response.raise_for_status()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "DISPATCHQ_"))},
            "DISPATCHQ_REDIS_URL": redis_server.url,
            "DISPATCHQ_QUEUE": DEMO_QUEUE,
            "DISPATCHQ_LOG_FORMAT": "json",
            "NOMAD_ADDR": sim.address,
        }
        procs = [
            stack.enter_context(
                WorkerProcess(
                    env=env,
                    name=f"demo{i + 1}",
                    concurrency=concurrency,
                    log_path=logs / f"worker{i + 1}.log",
                )
            )
            for i in range(workers)
        ]
        yield LocalStack(redis_server, sim, procs)
