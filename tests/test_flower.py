"""Flower against dispatchq: `dispatchq flower` and a worker started as `dispatchq dev` starts
them (task events on). Flower's workers, tasks, task result and queue length endpoints
answer, a message without argument reprs shows its arguments, and a refused dispatch shows
its exit code 1 in the result Flower displays."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from dispatchq.devstack.ports import free_port, stop_process, wait_for_port
from dispatchq.devstack.worker_process import WorkerProcess
from tests.support.stack import QUEUE, Stack

pytestmark = pytest.mark.integration

WAIT = 60


@pytest.fixture(params=["dispatchq flower", "celery -A dispatchq.worker flower"])
def flower(clean: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """Flower started by `dispatchq flower`, or the Celery way on the worker's app."""
    port = free_port()
    env = {**os.environ, **clean.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    start = (["dispatchq.cli", "flower", "--"] if request.param == "dispatchq flower"
             else ["celery", "-A", "dispatchq.worker", "flower"])  # fmt: skip
    command = [sys.executable, "-m", *start, f"--port={port}", "--address=127.0.0.1"]
    with (clean.log_dir / "flower.log").open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def _until(read: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = read()
        if value:
            return value
        assert time.monotonic() < deadline, f"Flower never showed {what}"
        time.sleep(0.25)


def _get(url: str) -> Any:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
    return answer.json()


def _hand_built(request_id: str, job_id: str) -> bytes:
    """A message as a producer in another language builds it: no argsrepr/kwargsrepr."""
    body: list[Any] = [
        [],
        {"request_id": request_id, "job_id": job_id, "meta": {"profile": "hd"}},
        None,
    ]
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "dispatchq.dispatch", "id": request_id},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": QUEUE}},
    }).encode()  # fmt: skip


def test_flower_sees_workers_tasks_results_and_the_queue(
    clean: Stack, flower: str, redis_client: redis.Redis
) -> None:
    worker = WorkerProcess(env=clean.env, name="flowered", log_path=clean.log_dir / "fw.log",
                           task_events=True)  # fmt: skip
    with worker, clean.producer() as producer:
        # Flower has the worker's heartbeat: its event subscription is live.
        _until(
            lambda: [name for name, alive in _get(f"{flower}/api/workers?status=1").items()
                     if name.startswith("flowered@") and alive],
            "the worker online",
        )  # fmt: skip
        # Flower asks the workers (a broadcast, answered within its inspect timeout): on a
        # loaded machine a first answer can come late, and Flower then lists none.
        _until(
            lambda: [name for name in _get(f"{flower}/api/workers?refresh=1")
                     if name.startswith("flowered@")],
            "the worker in /api/workers",
        )  # fmt: skip
        good = producer.enqueue("encode", meta={"profile": "hd"})
        refused = producer.enqueue("encode", meta={"wrong": "x"})
        raw = str(uuid.uuid4())
        redis_client.lpush(QUEUE, _hand_built(raw, "encode"))
        statuses = producer.wait([good, refused, raw], timeout=WAIT)
        assert [statuses[r].outcome.exit_code for r in (good, refused, raw)] == [0, 1, 0]  # type: ignore[union-attr]

        def finished() -> dict[str, Any]:
            tasks: dict[str, Any] = _get(f"{flower}/api/tasks")
            wanted = {good, refused, raw}
            if wanted <= {t for t, v in tasks.items() if v.get("state") == "SUCCESS"}:
                return tasks
            return {}

        tasks = _until(finished, "the three tasks succeeded")
        for rid in (good, refused, raw):
            assert tasks[rid]["name"] == "dispatchq.dispatch"
            assert "'job_id': 'encode'" in tasks[rid]["kwargs"], tasks[rid]
        assert "'exit_code': 1" in tasks[refused]["result"], tasks[refused]
        assert "'exit_code': 0" in tasks[good]["result"], tasks[good]

        result = _get(f"{flower}/api/task/result/{refused}")
        assert (result["state"], result["result"]["exit_code"]) == ("SUCCESS", 1), result
        assert result["result"]["error_kind"] == "validation"

        lengths = _get(f"{flower}/api/queues/length")
        assert {"name": QUEUE, "messages": 0} in lengths["active_queues"], lengths
