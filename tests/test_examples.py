"""The producer examples (examples/), run as written against a real worker.

`send_task.py` runs in a Python where dispatchq's own packages cannot be imported (only
Celery and redis-py are), as in a service that has only `celery[redis]` installed;
`lpush.sh` builds its message by hand and pushes it with redis-cli. Each outcome is what
the outcome format of docs/formats.md says (validated against its schema).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from dispatchq.cli.main import main
from dispatchq.core.outcome import OUTCOME_SCHEMA
from dispatchq.devstack.redis_server import find_redis_server
from dispatchq.producer.api import RequestStatus
from tests.support.nomad_jobs import add_fault
from tests.support.stack import QUEUE, Stack

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Run the example with dispatchq's packages made unimportable: it may use Celery only.
WITHOUT_DISPATCHQ = (
    "import runpy, sys\n"
    "for name in ('config', 'dispatch', 'worker', 'producer', 'devstack', 'nomadsim'):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": stack.redis.url,
        "DISPATCHQ_QUEUE": QUEUE,
        "TIMEOUT": "60",
        "PYTHONPATH": "",
    }


def test_send_task_with_only_celery(running: Stack) -> None:
    ok = subprocess.run(
        [sys.executable, "-c", WITHOUT_DISPATCHQ, str(EXAMPLES / "send_task.py"),
         "encode", "profile=hd"],
        env=_env(running), capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    outcome = json.loads(ok.stdout)
    assert (outcome["status"], outcome["exit_code"]) == ("complete", 0)
    assert outcome["dispatched_job_id"].startswith("encode/dispatch-")

    refused = subprocess.run(
        [sys.executable, "-c", WITHOUT_DISPATCHQ, str(EXAMPLES / "send_task.py"), "encode"],
        env=_env(running), capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    outcome = json.loads(refused.stdout)
    assert refused.returncode == 1
    assert (outcome["error_kind"], outcome["exit_code"]) == ("validation", 1)
    assert "required meta keys: [profile]" in outcome["error_message"]


def test_lpush_with_redis_cli(running: Stack) -> None:
    cli = shutil.which("redis-cli") or str(Path(find_redis_server()).with_name("redis-cli"))
    env = {**_env(running), "REDIS_CLI": cli}
    script = str(EXAMPLES / "lpush.sh")
    cases = [(["encode", '{"profile": "hd"}'], 0), (["huge"], 2), (["no-such-job"], 1)]
    for args, code in cases:
        done = subprocess.run(
            ["sh", script, *args], env=env, capture_output=True, text=True, timeout=90,
            check=False,
        )  # fmt: skip
        assert done.returncode == code, (args, done.stdout, done.stderr)
        meta = json.loads(done.stdout)
        jsonschema.Draft202012Validator(OUTCOME_SCHEMA).validate(meta)
        assert meta["result"]["exit_code"] == code
    assert meta["result"]["error_kind"] == "not_found"


def test_a_foreign_routing_key_still_retries_into_the_queue(
    running: Stack, redis_client: redis.Redis
) -> None:
    """A producer that leaves Celery's default routing key ("celery") on its message: the
    retry (four 500s: more than the client's attempts in place) comes back to our queue."""
    add_fault(running.sim.address, {"kind": "error", "route": "dispatch", "count": 4})
    request_id = str(uuid.uuid4())
    redis_client.lpush(QUEUE, _message(request_id, routing_key="celery"))
    with running.producer() as producer:
        status = producer.wait([request_id], timeout=60)[request_id]
    assert status.outcome is not None and status.outcome.exit_code == 0, status
    assert redis_client.llen("celery") == 0


def _message(request_id: str, routing_key: str = QUEUE) -> str:
    body: list[Any] = [
        [],
        {"request_id": request_id, "job_id": "encode", "meta": {"profile": "hd"}},
        None,
    ]
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "dispatchq.dispatch", "id": request_id},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": routing_key}},
    })  # fmt: skip


def test_wait_blocks_for_an_id_not_known_yet(
    running: Stack, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A foreign producer's request has no record until a worker takes it: `wait` waits for
    it as for a queued one, and `status` says it is queued or unknown."""
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", running.redis.url)
    monkeypatch.setenv("DISPATCHQ_QUEUE", QUEUE)
    request_id = str(uuid.uuid4())
    assert main(["status", request_id]) == 1
    assert re.search(r"^State +=  ?queued or unknown$", capsys.readouterr().out, re.M)
    assert main(["wait", request_id, "-timeout", "0.5"]) == 1
    assert "queued or unknown" in capsys.readouterr().out

    waited: dict[str, RequestStatus] = {}
    with running.producer() as producer:
        waiter = threading.Thread(target=lambda: waited.update(producer.wait([request_id], 60)))
        waiter.start()
        time.sleep(1.0)  # the wait has begun before anything names the request
        redis_client.lpush(QUEUE, _message(request_id))
        waiter.join(70)
    outcome = waited[request_id].outcome
    assert outcome is not None and outcome.exit_code == 0, waited
