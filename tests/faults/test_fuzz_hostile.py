"""Hostile input as classes (issue 15), fuzzed against a real worker: messages that name
requests of ours, mangled in every way the worker must survive (envelope, headers, body,
content type, eta, foreign task names, huge arguments), carrying hostile payload references
(FIFOs, devices, trickling servers, allow-list bypasses, malformed URLs).

Invariants: every item has a reason a user can read (the request's outcome, or a dead
letter naming it); no worker stalls (a good request sent afterwards completes within
seconds, by the same process); Redis memory stays bounded (the dead-letter list within
its documented cap, whatever was sent)."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatchq.store import dlq, keys
from tests.faults.test_fuzz import json_values
from tests.support.faults import FaultStack, drained, wait_until
from tests.support.hostile import Trickle
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MANGLINGS = ("none",) * 12 + ("eta", "no_delivery_tag", "body_not_base64",
             "body_not_protocol_2", "pickle", "chord_unlock", "backend_cleanup", "bad_retries",
             "huge_kwargs", "positional")  # fmt: skip


def _mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` four times in five, so that most messages reach the payload resolver."""
    return st.integers(0, 4).flatmap(lambda n: rare if n == 0 else usual)


def _refs(root: Path, trickle_port: int) -> list[str]:
    allowed = f"127.0.0.1:{trickle_port}"
    return [
        f"file://{root}/ok.json",
        f"file://{root}/fifo",
        f"file://{root}/dir",
        "file:///dev/zero",
        f"file://{root}/escape",
        f"file://{root}/a%00b",
        "file://[/x",
        f"http://{allowed}/slow",
        f"http://127.0.0.2:{trickle_port}\\@{allowed}/x",
        f"http://user:pw@{allowed}@127.0.0.2/x",
        "http://127.0.0.1:99999/x",
        "http://[::1/x",
        "https://example.com/x",
        "data:,hello",
        "data:;base64,@@",
        "blob:sha256:" + "0" * 64,
        "s3://bucket/key",
    ]


def _envelope(request_id: str, kwargs: dict[str, Any], mangling: str) -> str:
    args: list[Any] = ["positional"] if mangling == "positional" else []
    if mangling == "huge_kwargs":
        kwargs = {**kwargs, "junk": "x" * 2_000_000}
    body = json.dumps([args, kwargs, {}]).encode()
    task = {"chord_unlock": "celery.chord_unlock", "backend_cleanup": "celery.backend_cleanup"}
    headers: dict[str, Any] = {"lang": "py", "task": task.get(mangling, "dispatchq.dispatch"),
                               "id": request_id, "root_id": request_id, "retries": 0}  # fmt: skip
    message: dict[str, Any] = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": request_id,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    if mangling == "eta":
        headers["eta"] = "2099-01-01T00:00:00+00:00"
    elif mangling == "no_delivery_tag":
        del message["properties"]["delivery_tag"]
    elif mangling == "body_not_base64":
        message["body"] = "%%%"
    elif mangling == "body_not_protocol_2":
        message["body"] = base64.b64encode(json.dumps(kwargs).encode()).decode()
    elif mangling == "pickle":
        message["content-type"] = "application/x-python-serialize"
    elif mangling == "bad_retries":
        headers["retries"] = "many"
    return json.dumps(message)


def test_hostile_messages_and_references_each_get_a_reason(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    root = tmp_path / "payloads"
    root.mkdir()
    (root / "ok.json").write_text('{"ok": 1}')
    (root / "dir").mkdir()
    (root / "escape").symlink_to("/etc/hostname")
    os.mkfifo(root / "fifo")
    trickle = Trickle(headers_too=False)
    trickle.start()
    stack = fault_stack.with_env(
        DISPATCHQ_PAYLOAD_FILE_ROOTS=f"{root},/dev",
        DISPATCHQ_PAYLOAD_HTTP_HOSTS=f"127.0.0.1:{trickle.port}",
        DISPATCHQ_PAYLOAD_HTTP_TIMEOUT="1",
    )
    refs = _refs(root, trickle.port)
    items: dict[str, str] = {}
    kwargs = st.fixed_dictionaries(
        {
            "v": st.just(1),
            "job_id": _mostly(st.sampled_from(["plain"] * 6 + ["no-payload", ""]), json_values),
            "payload_ref": _mostly(st.sampled_from(refs), st.none() | json_values),
        },
        optional={
            "meta": _mostly(st.dictionaries(st.text("abc", max_size=4), st.text(max_size=4),
                                            max_size=2), json_values),
            "priority": _mostly(st.integers(0, 100), st.integers(-5, 120) | json_values),
        },
    )  # fmt: skip

    @given(kwargs=kwargs, mangling=st.sampled_from(MANGLINGS))
    @settings(
        max_examples=160,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    def generate(kwargs: dict[str, Any], mangling: str) -> None:
        request_id = f"hostile-{len(items)}-{mangling}"
        items[request_id] = _envelope(request_id, {**kwargs, "request_id": request_id}, mangling)

    generate()
    client = stack.client()
    try:
        with stack.worker("hostile") as worker, stack.producer() as producer:
            pid = worker.process.pid if worker.process else 0
            started = time.monotonic()
            pipe = client.pipeline(transaction=False)
            for request_id, item in items.items():  # as `enqueue` does: a record, then the item
                pipe.hset(keys.request(request_id), "state", "queued")
                pipe.expire(keys.request(request_id), 600)
                pipe.lpush(QUEUE, item)
            pipe.execute()

            def unexplained() -> list[str]:
                lettered = {e.task_id for e in dlq.entries(client)}
                return [
                    rid for rid in items
                    if rid not in lettered and not producer.result(rid).done
                ]  # fmt: skip

            wait_until(lambda: drained(client) and not unexplained(), 120, "a reason for each")
            elapsed = time.monotonic() - started
            sentinel = producer.enqueue("encode", meta={"profile": "hd"})
            sent = time.monotonic()
            outcome = producer.wait([sentinel], timeout=15)[sentinel].outcome
            sentinel_seconds = time.monotonic() - sent
            assert worker.process is not None and worker.process.poll() is None
            assert worker.process.pid == pid, "the worker restarted"
            statuses = {rid: producer.result(rid) for rid in items}
        dlq_bytes = int(client.memory_usage(keys.DLQ, samples=0) or 0)
        dead = dlq.entries(client)
        used = int(client.info("memory")["used_memory"])
    finally:
        trickle.stop.set()
        trickle.sock.close()
        client.close()
    output = stack.worker_output()
    kinds = [s.outcome.error_kind for s in statuses.values() if s.outcome is not None]
    stack.report(
        "hostile messages + payload refs",
        requests=len(items),
        faults=f"{len(items)} generated hostile items",
        lost=0,
        doubled=0,
        notes=f"{len(dead)} dead-lettered, {kinds.count('payload')} payload errors; "
        f"explained in {elapsed:.1f} s; good request after: {sentinel_seconds:.1f} s; "
        f"DLQ {dlq_bytes // 1024} KiB",
    )
    assert outcome is not None and outcome.exit_code == 0
    assert sentinel_seconds < 10
    assert kinds.count("payload") >= 10, kinds  # the references did reach the resolver
    for rid, status in statuses.items():  # an outcome says why; a dead letter says why
        if status.outcome is not None and status.outcome.exit_code == 1:
            assert status.outcome.error_message, rid
        if status.outcome is None:
            assert any(e.task_id == rid and e.reason for e in dead), rid
    for rid in items:  # a FIFO, a trickle, a bypass: never "dispatching" forever
        assert statuses[rid].state not in ("dispatching", "monitoring"), statuses[rid]
    assert all(len(e.raw.encode()) <= dlq.MAX_ENTRY_BYTES for e in dead)
    assert dlq_bytes <= dlq.MAX_ENTRIES * dlq.MAX_ENTRY_BYTES
    assert used < 200 * 1024 * 1024
    assert "Unrecoverable error" not in output
    assert "raised unexpected" not in output
    assert "hunter" not in output
