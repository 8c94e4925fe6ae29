"""Enqueue one dispatch from a Python service that has only `celery[redis]` installed.

    REDIS_URL=redis://127.0.0.1:6379/0 PAYLOAD_REF='data:,{"source":"a.mov"}' \
        python send_task.py video-encode profile=720p

Prints the outcome (see the README's "Outcome format") and exits with its exit code.
"""

import json
import os
import sys
import uuid

from celery import Celery

redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
queue = os.environ.get("DISPATCHQ_QUEUE", "dispatchq")
app = Celery(broker=redis_url, backend=redis_url)
app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])

job_id, pairs = sys.argv[1], sys.argv[2:]
request_id = str(uuid.uuid4())
request = {
    "request_id": request_id,
    "job_id": job_id,
    "meta": dict(pair.split("=", 1) for pair in pairs),
}
if os.environ.get("PAYLOAD_REF"):  # README, "Python API": data:, blob:, file://, http(s)://
    request["payload_ref"] = os.environ["PAYLOAD_REF"]
# queue= is required: Celery's default list is "celery", which dispatchq's workers do not read.
result = app.send_task("dispatchq.dispatch", kwargs=request, task_id=request_id, queue=queue)
# A refused dispatch is not an exception: the outcome says it, with exit code 1.
outcome = result.get(timeout=float(os.environ.get("TIMEOUT", "60")))
print(json.dumps({"request_id": request_id, **outcome}))
sys.exit(outcome["exit_code"])
