"""The queue end to end: producer -> Redis -> real worker process -> nomadsim -> outcome."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path

import redis

from dispatchq.config.settings import Settings
from dispatchq.core.outcome import COMPLETE, ERROR, PLACEMENT_FAILED
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import NewRequest
from dispatchq.store import dlq, keys
from tests.support.nomad_jobs import add_fault, set_scheduler, sim_dispatches
from tests.support.stack import QUEUE, Stack

WAIT = 60


def _children(stack: Stack, request_id: str) -> list[dict[str, object]]:
    token = f"dispatchq-{request_id}"
    return [
        d
        for d in sim_dispatches(stack.sim.address)
        if d.get("idempotency_token") == token and not d.get("repeat")
    ]


def test_success(running: Stack, producer: Producer) -> None:
    rid = producer.enqueue("encode", payload=b'{"src":"a.mp4"}', meta={"profile": "hd"})
    status = producer.wait([rid], timeout=WAIT)[rid]
    assert status.outcome is not None, status
    assert status.outcome.status == COMPLETE
    assert status.outcome.exit_code == 0
    assert status.outcome.dispatched_job_id
    assert status.outcome.dispatched_job_id.startswith("encode/dispatch-")
    assert status.outcome.eval_status == "complete"
    assert producer.result(rid).state == "done"
    assert len(_children(running, rid)) == 1


def test_placement_failure_exits_2(running: Stack, producer: Producer) -> None:
    rid = producer.enqueue("huge")
    outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None
    assert outcome.status == PLACEMENT_FAILED
    assert outcome.exit_code == 2
    assert outcome.blocked_eval_id
    assert "encode" in outcome.placement_failures


def test_validation_error_is_not_retried(running: Stack, producer: Producer) -> None:
    rid = producer.enqueue("encode", meta={"wrong": "x"})
    outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None
    assert outcome.exit_code == 1
    assert outcome.status == ERROR
    assert outcome.error_kind == "validation"
    assert outcome.error_message is not None
    assert "Dispatch request included unpermitted metadata keys: [wrong]" in outcome.error_message
    assert _children(running, rid) == []


def test_transient_faults_are_retried_to_one_child(running: Stack, producer: Producer) -> None:
    add_fault(running.sim.address, {"kind": "error", "route": "dispatch", "count": 4})
    add_fault(running.sim.address, {"kind": "rate_limit", "route": "dispatch", "count": 2})
    add_fault(running.sim.address, {"kind": "cut", "route": "dispatch", "count": 2})
    rid = producer.enqueue("encode", meta={"profile": "sd"})
    outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None
    assert outcome.exit_code == 0, outcome
    assert len(_children(running, rid)) == 1


def test_unknown_id(running: Stack, producer: Producer) -> None:
    status = producer.result("no-such-request")
    assert status.state == "unknown"
    assert status.outcome is None
    assert producer.wait(["no-such-request"], timeout=1)["no-such-request"].state == "unknown"


def test_wait_times_out_with_the_pending_state(clean: Stack) -> None:
    settings = Settings(redis_url=clean.redis.url, queue="nobody-consumes-this")
    with Producer(settings) as producer:
        rid = producer.enqueue("encode", meta={"profile": "hd"})
        started = time.monotonic()
        status = producer.wait([rid], timeout=0.5)[rid]
    assert time.monotonic() - started < 10
    assert status.outcome is None
    assert status.state == "queued"


def test_bad_payload_references(running: Stack, producer: Producer) -> None:
    root = Path(running.env["DISPATCHQ_PAYLOAD_FILE_ROOTS"])
    (root / "big.bin").write_bytes(b"x" * 20_000)
    outside = root.parent / "secret"
    outside.write_text("s")
    (root / "escape").unlink(missing_ok=True)
    (root / "escape").symlink_to(outside)
    cases = {
        "blob:sha256:" + "0" * 64: "not found: it expired or was never stored",
        f"file://{root}/absent.json": "No such file or directory",
        f"file://{root}/../secret": "outside the allowed roots",
        f"file://{root}/escape": "outside the allowed roots",
        f"file://{root}/big.bin": "Payload exceeds maximum size; 20000 > 16384",
        "http://127.0.0.1:9/x": "is not in the allow-list",
        "data:;base64,@@": "bad base64",
        "ftp://example/x": "unsupported payload reference",
    }
    ids = {
        producer.enqueue("encode", payload_ref=ref, meta={"profile": "hd"}): text
        for ref, text in cases.items()
    }
    statuses = producer.wait(list(ids), timeout=WAIT)
    for rid, text in ids.items():
        outcome = statuses[rid].outcome
        assert outcome is not None, rid
        assert outcome.exit_code == 1
        assert outcome.error_kind == "payload"
        assert outcome.error_message is not None
        assert text in outcome.error_message, (text, outcome.error_message)
        assert _children(running, rid) == []


def test_raw_protocol2_message_from_a_foreign_producer(
    running: Stack, producer: Producer, redis_client: redis.Redis
) -> None:
    """What a service in another language pushes: the message format of docs/formats.md, by hand."""
    rid = str(uuid.uuid4())
    kwargs = {"v": 1, "request_id": rid, "job_id": "encode", "meta": {"profile": "4k"}}
    body = json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "dispatchq.dispatch",
            "id": rid,
            "root_id": rid,
            "retries": 0,
        },
        "properties": {
            "correlation_id": rid,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    redis_client.lpush(QUEUE, json.dumps(message))
    deadline = time.monotonic() + WAIT
    while producer.result(rid).state in ("unknown", "queued"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None
    assert outcome.exit_code == 0


def test_a_burst_counts_each_delivery_once(
    running: Stack, producer: Producer, redis_client: redis.Redis
) -> None:
    """A busy queue is fetched by a script that also counts the delivery (`dispatchq.broker.fetch`),
    an idle one by BLMOVE and the consumer's count: either way, once per delivery."""
    items = [NewRequest("encode", meta={"profile": "hd"}) for _ in range(40)]
    ids = [rid for rid, _ in producer.enqueuer.enqueue(items)]
    statuses = producer.wait(ids, timeout=WAIT)
    assert all(s.outcome is not None and s.outcome.exit_code == 0 for s in statuses.values())
    counts = [redis_client.hget(keys.request(rid), dlq.DELIVERIES) for rid in ids]
    assert counts == [b"1"] * len(ids)
    assert redis_client.llen(QUEUE) == 0


def test_an_outcome_is_written_once_with_its_record(
    running: Stack, producer: Producer, redis_client: redis.Redis
) -> None:
    """The worker stores the outcome in the script that marks the request done, and Celery
    does not store it a second time (`dispatchq.worker.tasks`): one command names the result key."""
    done = threading.Event()
    seen: list[str] = []
    stop = f"stop-{uuid.uuid4().hex}"

    def watch() -> None:
        with redis_client.monitor() as monitor:  # type: ignore[no-untyped-call]
            done.set()
            for entry in monitor.listen():
                if entry.get("client_type") != "lua":
                    seen.append(entry["command"])
                if stop in entry["command"]:
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert done.wait(10)
    rid = producer.enqueue("encode", meta={"profile": "hd"})
    outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None and outcome.exit_code == 0
    time.sleep(0.5)  # the worker's acknowledgement, after the store
    redis_client.echo(stop)
    watcher.join(10)
    writing = ("EVALSHA", "EVAL", "SET", "SETEX", "MULTI")
    writes = [c for c in seen if keys.celery_result(rid) in c and c.split()[0] in writing]
    # The record's script, twice at most (redis-py retries it once loaded, if this Redis
    # had not seen it yet): Celery's own store would name the result key without it.
    assert writes, seen
    assert all(w.split()[:4] == writes[0].split()[:4] for w in writes), writes
    assert writes[0].split()[3] == keys.request(rid), writes
    assert len(writes) <= 2


def test_every_key_has_a_ttl(running: Stack, producer: Producer, redis_client: redis.Redis) -> None:
    ids = [producer.enqueue("encode", payload=b"p", meta={"profile": "hd"}) for _ in range(3)]
    ids.append(producer.enqueue("encode", meta={"bad": "x"}))
    statuses = producer.wait(ids, timeout=WAIT)
    assert all(s.done for s in statuses.values())
    without_ttl = [
        key.decode()
        for key in redis_client.scan_iter(count=1000)
        if redis_client.ttl(key) < 0 and not keys.is_broker_key(key.decode(), QUEUE)
        and key.decode() not in keys.CAPPED  # the event stream: MAXLEN ~, no TTL
    ]
    assert without_ttl == []
    assert redis_client.ttl(keys.request(ids[0])) > 0
    assert redis_client.ttl(keys.celery_result(ids[0])) > 0


def test_worker_killed_after_dispatch_resumes_without_a_second_child(
    clean: Stack, redis_client: redis.Redis
) -> None:
    """SIGKILL the whole worker while it monitors; a new worker gets the message again once
    the victim's lease lapses, finds the write-ahead record and only monitors."""
    queue = "dispatchq-kill"
    env = {**clean.env, "DISPATCHQ_QUEUE": queue, "DISPATCHQ_TASK_TIME_LIMIT": "6"}
    set_scheduler(clean.sim.address, {"schedule_delay_ms": 3000})
    try:
        victim = WorkerProcess(env=env, name="victim", log_path=clean.log_dir / "victim.log")
        victim.start()
        with Producer(Settings(redis_url=clean.redis.url, queue=queue)) as producer:
            rid = producer.enqueue("encode", meta={"profile": "hd"})
            deadline = time.monotonic() + WAIT
            while producer.result(rid).state != "monitoring":
                assert time.monotonic() < deadline, producer.result(rid)
                time.sleep(0.02)
            victim.kill()
            assert producer.result(rid).outcome is None
            with WorkerProcess(env=env, name="rescuer", log_path=clean.log_dir / "rescuer.log"):
                outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
            assert outcome is not None
            assert outcome.exit_code == 0, outcome
            assert outcome.eval_status == "complete"
    finally:
        set_scheduler(clean.sim.address, {"schedule_delay_ms": 0})
    assert len(_children(clean, rid)) == 1
    rescuer_log = (clean.log_dir / "rescuer.log").read_text()
    assert "request.resumed" in rescuer_log
    assert "request.dispatched" not in rescuer_log
