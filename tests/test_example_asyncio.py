"""examples/asyncio_service.py, run as a user runs it (uvicorn, in a process of its own)
against a real stack: redis-server, nomadsim running mock_driver children, a worker and a
tracker. A slow wait (a child that runs for seconds) is in flight while the same process
answers other requests; a batch's progress streams to its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.ports import LOOPBACK, free_port, stop_process, wait_for_port
from dispatchq.devstack.tracker_process import TrackerProcess
from tests.support.nomad_jobs import FAST_SIM, mock_encode_job, register
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=FAST_SIM) as process:
        register(process.address, mock_encode_job("enc"))
        yield process


@pytest.fixture(scope="module")
def service(stack: Stack) -> Iterator[str]:
    """The example served by uvicorn, with a worker and a tracker behind it."""
    port = free_port()
    env = {**os.environ, **stack.env, "ENCODE_JOB": "enc"}
    logs = stack.log_dir
    with stack.worker("aio-w1"), TrackerProcess(env=stack.env, log_path=logs / "aio-t.log"), \
            (logs / "uvicorn.log").open("ab") as log:  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.asyncio_service:app",
             "--host", LOOPBACK, "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_port(port, timeout=30)
            yield f"http://{LOOPBACK}:{port}"
        finally:
            stop_process(process)


def _encode(base: str, run_for: str) -> str:
    answer = requests.post(f"{base}/encodes", json={"meta": {"run_for": run_for}}, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["request_id"])


def test_a_slow_wait_does_not_hold_up_the_other_requests(service: str) -> None:
    slow = _encode(service, "12000s")  # 12 s at nomadsim's time scale
    got: dict[str, Any] = {}

    def wait_slow() -> None:
        got["slow"] = requests.get(f"{service}/encodes/{slow}?wait=120", timeout=130).json()

    waiting = threading.Thread(target=wait_slow)
    waiting.start()
    time.sleep(0.5)  # its wait is in flight
    for _ in range(20):
        assert requests.get(f"{service}/health", timeout=5).text == "ok"
    quick = _encode(service, "100s")
    done = requests.get(f"{service}/encodes/{quick}?wait=60", timeout=70).json()
    assert done["state"] == "done" and done["outcome"]["exit_code"] == 0
    assert done["outcome"]["child"]["status"] == "dead"  # followed until finished
    assert waiting.is_alive()  # all the above answered while the slow wait went on
    waiting.join(130)
    assert got["slow"]["state"] == "done" and got["slow"]["outcome"]["exit_code"] == 0
    bad = requests.post(f"{service}/encodes", json={"meta": {"x" * 200: "1"}}, timeout=10)
    assert bad.status_code == 400 and "meta" in bad.json()["error"]


def test_a_batchs_progress_streams_to_its_end(service: str) -> None:
    items = [{"meta": {"run_for": "300s", "exit_code": "3" if n == 2 else "0"}}
             for n in range(5)]  # fmt: skip
    answer = requests.post(f"{service}/batches", json={"items": items}, timeout=10)
    batch = answer.json()["batch_id"]
    seen = []
    with requests.get(f"{service}/batches/{batch}/progress", stream=True, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith(b"data: "):
                seen.append(json.loads(line[len(b"data: ") :]))
    assert seen[-1]["finished"] and (seen[-1]["succeeded"], seen[-1]["failed"]) == (4, 1)
    assert len(seen) > 1 and seen[0]["done"] < seen[-1]["done"]  # it moved as it ran
    missing = requests.get(f"{service}/batches/nope/progress", timeout=10)
    assert missing.status_code == 404
