"""The naive baseline of figures 2 and 3: a Celery task that only POSTs the dispatch.

What a first attempt at "Nomad dispatch through Celery" looks like: a default Celery app
(JSON, Redis broker and result backend, nothing else tuned) whose task makes one
`requests.post` to `/v1/job/<id>/dispatch` and returns Nomad's JSON answer, which Celery
stores as the result. It does not follow the evaluation and keeps no record.

Run by bench/e2e.py as

    celery -A bench.naive_app worker --pool prefork --concurrency 2

from the repository root, configured by the environment: `NAIVE_REDIS_URL`,
`NAIVE_NOMAD_ADDR`, `NAIVE_QUEUE`. When the worker is ready it writes
`bench:naive:ready:<hostname>` to Redis, which is how the bench knows it consumes.
"""

from __future__ import annotations

import json
import os
import uuid
from base64 import b64encode
from typing import Any

import redis
import requests
from celery import Celery
from celery.signals import worker_ready

TASK = "bench.naive.dispatch"
READY_PREFIX = "bench:naive:ready:"

REDIS_URL = os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
NOMAD_ADDR = os.environ.get("NAIVE_NOMAD_ADDR", "http://127.0.0.1:4646")
QUEUE = os.environ.get("NAIVE_QUEUE", "naive")

app = Celery("naive", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_serializer = "json"
app.conf.result_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True


@app.task(name=TASK)
def dispatch(job_id: str, payload: str, meta: dict[str, str]) -> Any:
    """POST the dispatch (payload already base64) and return Nomad's answer."""
    response = requests.post(
        f"{NOMAD_ADDR}/v1/job/{job_id}/dispatch",
        json={"JobID": job_id, "Payload": payload, "Meta": meta},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", "naive")
    client = redis.Redis.from_url(REDIS_URL)
    client.set(READY_PREFIX + hostname, "1")
    client.close()


def message(job_id: str, payload: bytes, meta: dict[str, str], queue: str = QUEUE) -> tuple[
    str, str
]:
    """(task ID, the kombu envelope of one `dispatch` call) as kombu's Redis transport
    stores it on the queue list: what `dispatch.delay(...)` would LPUSH, built by hand so
    the bench can pipeline thousands of them and the publisher is not the bottleneck."""
    task_id = str(uuid.uuid4())
    kwargs = {"job_id": job_id, "payload": b64encode(payload).decode(), "meta": meta}
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([[], kwargs, embed]).encode()
    envelope = {
        "body": b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": TASK, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": "()", "kwargsrepr": repr(kwargs), "origin": "bench",
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }  # fmt: skip
    return task_id, json.dumps(envelope)
