"""`dispatchq dev` and `dispatchq demo` as a user runs them: real processes, stopped by
SIGTERM (as `timeout` or a service manager sends it) without leaving any behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis
import requests

from dispatchq.config.settings import Settings
from dispatchq.devstack.stack import DEMO_JOB
from dispatchq.producer.api import Producer
from dispatchq.store.liveness import live_workers

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "dispatchq.cli"]
TIMEOUT = 60


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its start time (to tell a reused PID apart)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            fields = _stat(child)
            if fields is not None and child not in found:
                found[child] = fields[19]
                todo.append(child)
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """The processes that still run (a zombie does not)."""
    running = []
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == started and fields[0] != "Z":
            running.append(pid)
    return running


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started CLI processes (each in a session of its own, like a command in a shell of
    its own); SIGKILLed with their process group and every process below them (the
    stack's servers run in sessions of their own) if a test leaves one running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            below = descendants(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with process:  # closes the pipes and waits
            pass


def start(spawned: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHQ_", "NOMAD_"))}
    process = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    spawned.append(process)
    return process


def read_until(stream: IO[bytes] | None, marker: str) -> list[str]:
    """Lines of `stream` up to the one containing `marker` (the process must print it)."""
    assert stream is not None
    lines = []
    for raw in stream:
        lines.append(raw.decode().rstrip("\n"))
        if marker in lines[-1]:
            return lines
    raise AssertionError(f"the stream ended without {marker!r}: {lines}")


def terminate(process: subprocess.Popen[bytes], below: dict[int, str]) -> int:
    """SIGTERM to the process alone; its exit code, once it and all `below` are gone."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(TIMEOUT)
    assert still_running(below) == []
    return code


def test_dev_exports_a_working_stack_and_stops_it_on_sigterm(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    dev = start(spawn, "dev")
    exports = read_until(dev.stdout, "NOMAD_ADDR=")
    env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
    assert set(env) == {"DISPATCHQ_REDIS_URL", "DISPATCHQ_QUEUE", "NOMAD_ADDR"}

    settings = Settings(redis_url=env["DISPATCHQ_REDIS_URL"], queue=env["DISPATCHQ_QUEUE"])
    with redis.Redis.from_url(env["DISPATCHQ_REDIS_URL"]) as client:
        assert len(live_workers(client, env["DISPATCHQ_QUEUE"])) == 1
    with Producer(settings) as producer:
        rid = producer.enqueue(DEMO_JOB, payload=b"{}", meta={"profile": "720p"})
        outcome = producer.wait([rid], timeout=TIMEOUT)[rid].outcome
    assert outcome is not None
    assert outcome.exit_code == 0

    processes = descendants(dev.pid)
    assert len(processes) >= 3  # redis-server, nomadsim, a worker
    assert terminate(dev, processes) == 0
    assert dev.stderr is not None
    assert "dispatchq dev: stopped" in dev.stderr.read().decode()


def test_sigterm_while_the_stack_starts_leaves_no_process(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    dev = start(spawn, "dev", "--workers", "2")
    deadline = time.monotonic() + TIMEOUT
    # As soon as a worker process exists: it takes a while to be ready, so it is starting.
    while not any("celery" in _cmdline(pid) for pid in descendants(dev.pid)):
        assert dev.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    assert terminate(dev, descendants(dev.pid)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_demo_stops_everything_on_sigterm(spawn: list[subprocess.Popen[bytes]]) -> None:
    demo = start(spawn, "demo", "--count", "5000")
    read_until(demo.stdout, "Stack up")
    processes = descendants(demo.pid)
    assert len(processes) >= 3
    assert terminate(demo, processes) == 130
    assert demo.stdout is not None
    assert "Interrupted: stopping the stack." in demo.stdout.read().decode()


def test_demo_keep_leaves_the_dashboard_up_until_sigterm(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    demo = start(spawn, "demo", "--count", "20", "--keep")
    shown = " ".join(read_until(demo.stdout, "Ctrl-C or SIGTERM"))
    [batch_page] = re.findall(r"Dashboard: (http://127\.0\.0\.1:\d+/batches/\S+)", shown)
    page = requests.get(batch_page, timeout=10)
    assert page.status_code == 200 and "data-state=\"finished\"" in page.text  # ended, kept
    assert terminate(demo, descendants(demo.pid)) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(batch_page, timeout=5)
