"""A whole local dispatchq stack: redis-server, nomadsim with a demo job, worker processes.

Used by `dispatchq demo` (run a fan-out, then stop) and `dispatchq dev` (keep running).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, Self, TypeVar

import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.ports import LOOPBACK
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.devstack.web_process import WebProcess
from dispatchq.devstack.worker_process import WorkerProcess

DEMO_JOB = "video-encode"
DEMO_QUEUE = "dispatchq"
# Six nodes of 8 x 500 MHz encode slots: a burst fills the cluster and
# some placements wait for capacity (blocked evaluations), as on a busy real cluster.
SIM_ARGS = ["--nodes", "6", "--node-cpu", "4000", "--node-memory", "8192", "--run-time", "300ms"]


def demo_job() -> dict[str, Any]:
    """The `video-encode` parameterized job: payload required, meta profile required; its
    task runs on nomadsim's mock_driver, and the meta `run_for` and `exit_code` (optional)
    pick how long each encode runs and how it exits. No restarts or reschedules: a failed
    encode ends at once (Nomad's batch defaults would retry it for a minute)."""
    return {
        "ID": DEMO_JOB,
        "Name": DEMO_JOB,
        "Type": "batch",
        "Datacenters": ["dc1"],
        "Meta": {"run_for": "300ms", "exit_code": "0"},
        "ParameterizedJob": {
            "Payload": "required",
            "MetaRequired": ["profile"],
            "MetaOptional": ["priority", "run_for", "exit_code"],
        },
        "TaskGroups": [
            {
                "Name": "encode",
                "Count": 1,
                "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
                "Tasks": [
                    {
                        "Name": "ffmpeg",
                        "Driver": "mock_driver",
                        "Config": {
                            "run_for": "${NOMAD_META_run_for}",
                            "exit_code": "${NOMAD_META_exit_code}",
                        },
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
    log_dir: Path
    tracker: TrackerProcess | None = None
    """Follows the children of `until` finished requests to their end."""
    web: WebProcess | None = None
    """The dashboard, where the `web` extra is installed."""

    @property
    def env(self) -> dict[str, str]:
        """What another shell exports to use this stack."""
        return {
            "DISPATCHQ_REDIS_URL": self.redis.url,
            "DISPATCHQ_QUEUE": DEMO_QUEUE,
            "NOMAD_ADDR": self.sim.address,
        }


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt in the main thread, like Ctrl-C.

    Python's default for SIGTERM ends the process at once, without running a `finally`:
    `timeout 60 dispatchq demo` left the worker processes running, since they are in
    sessions of their own and no signal sent to the demo's process group reaches them.
    Raised as KeyboardInterrupt, a SIGTERM takes Ctrl-C's path, which stops every child.
    Only the first SIGTERM is raised: a second must not cut that stopping short.
    Elsewhere than in the main thread, where no handler can be installed, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            return
        if _in_finalizer(frame):
            # Raised inside a `__del__` the garbage collector runs, a KeyboardInterrupt is
            # printed and ignored ("Exception ignored in"), and the process would go on as
            # if no SIGTERM had come: deliver it again, outside the finalizer.
            threading.Timer(0.01, signal.raise_signal, (signum,)).start()
            return
        raised = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _in_finalizer(frame: FrameType | None) -> bool:
    """Whether a signal handler interrupted a finalizer (`__del__`), where whatever it raises
    is ignored."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


class _ChildProcess(Protocol):
    def start(self) -> Self: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


_P = TypeVar("_P", bound=_ChildProcess)


def _start(stack: contextlib.ExitStack, child: _P) -> _P:
    """Start `child` with its stop already on `stack`: interrupted while it starts up (a
    worker takes seconds), it is stopped too instead of left running."""
    stack.push(child)
    return child.start()


@contextlib.contextmanager
def local_stack(
    workers: int = 1, concurrency: int = 500, metrics_port: int = 0
) -> Iterator[LocalStack]:
    """Start everything on loopback ports; stop it all on exit, Ctrl-C and SIGTERM included.

    With `metrics_port`, worker i (from 0) serves its Prometheus metrics on that port + i.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dispatchq-")))
        # Every process in a session of its own: a Ctrl-C or `timeout` reaches only this one,
        # which stops them in order (workers, nomadsim, Redis) so no worker loses its Redis.
        redis_server = _start(stack, RedisServer(new_session=True))
        sim = _start(stack, NomadSimProcess(args=SIM_ARGS, new_session=True))
        response = requests.put(f"{sim.address}/v1/jobs", json={"Job": demo_job()}, timeout=10)
        response.raise_for_status()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "DISPATCHQ_"))},
            "DISPATCHQ_REDIS_URL": redis_server.url,
            "DISPATCHQ_QUEUE": DEMO_QUEUE,
            "DISPATCHQ_LOG_FORMAT": "json",
            "NOMAD_ADDR": sim.address,
        }
        procs = []
        for i in range(workers):
            worker_env = dict(env)
            if metrics_port:
                worker_env["DISPATCHQ_METRICS_PORT"] = str(metrics_port + i)
                worker_env["DISPATCHQ_METRICS_ADDR"] = LOOPBACK
            worker = WorkerProcess(
                env=worker_env,
                name=f"demo{i + 1}",
                concurrency=concurrency,
                log_path=logs / f"worker{i + 1}.log",
                task_events=True,  # for Flower (`dispatchq flower`)
            )
            procs.append(_start(stack, worker))
        # Webhooks (notify_url): the notifier, apart from the workers (docs/formats.md, Webhooks).
        # DISPATCHQ_NOTIFY_HOSTS and _SECRET pass through from the caller's environment.
        notifier_env = {**env, **{k: v for k, v in os.environ.items()
                                  if k.startswith("DISPATCHQ_NOTIFY_")}}  # fmt: skip
        _start(stack, NotifierProcess(env=notifier_env, log_path=logs / "notifier.log"))
        tracker_env = dict(env)
        if metrics_port:
            tracker_env["DISPATCHQ_METRICS_PORT"] = str(metrics_port + workers)
            tracker_env["DISPATCHQ_METRICS_ADDR"] = LOOPBACK
        tracker = _start(stack, TrackerProcess(env=tracker_env, log_path=logs / "tracker.log"))
        web = None
        if importlib.util.find_spec("starlette") is not None:  # the `web` extra
            web = _start(stack, WebProcess(env=env, log_path=logs / "web.log"))
        stack.callback(_stop_together, procs)  # the first thing done on the way out
        yield LocalStack(redis_server, sim, procs, logs, tracker, web)


def _stop_together(workers: list[WorkerProcess]) -> None:
    """Stop the workers at once rather than one after another: each takes seconds."""
    threads = [threading.Thread(target=worker.stop) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
