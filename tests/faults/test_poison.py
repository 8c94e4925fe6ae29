"""Poison messages land in the dead-letter list with the reason; the worker keeps working;
`dispatchq dlq list|replay|purge`; every key has a TTL; Redis settings that lose data are
warned about at worker start."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from dispatchq.cli.main import main
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.store import dlq, keys
from tests.support.faults import FaultStack, keys_without_ttl, raw_message, wait_until
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _kwargs_body(**kwargs: Any) -> bytes:
    return json.dumps([[], kwargs, {}]).encode()


def _no_headers() -> str:
    message = json.loads(raw_message(_kwargs_body()))
    message["headers"] = None
    return json.dumps(message)


def _with_eta() -> str:
    message = json.loads(raw_message(_kwargs_body(v=1, job_id="encode")))
    message["headers"]["eta"] = "2099-01-01T00:00:00+00:00"
    return json.dumps(message)


def _malformed_naming(request_id: str) -> str:
    """An envelope kombu cannot deliver (no delivery tag) that names one of our requests."""
    body = _kwargs_body(v=1, request_id=request_id, job_id="encode")
    message = json.loads(raw_message(body, request_id=request_id))
    del message["properties"]["delivery_tag"]
    return json.dumps(message)


POISON: list[tuple[str, bytes | str, str]] = [
    ("undecodable", b"not json{", "the queue item is not JSON"),
    ("undecodable", b"\xff\xfe\x00", "the queue item is not JSON"),
    ("malformed", b"[1, 2]", "a queue message must be a JSON object, not list"),
    ("malformed", b'{"body": "x"}', "the message has no 'properties' object"),
    ("malformed", _no_headers(), "the message names no task"),
    ("malformed", raw_message(b'{"x": 1}'), "not a Celery protocol-2 body"),
    ("content", raw_message(b"not json["), "cannot decode the message"),
    ("content", raw_message(b"\x80\x04K\x01.", content_type="application/x-python-serialize"),
     "Refusing to deserialize untrusted content of type pickle"),
    ("unknown_task", raw_message(_kwargs_body(), task="evil.task"),
     "'evil.task' is not a dispatchq task"),
    # Celery's own tasks are registered on every app: sent by anyone, they used to run
    # (backend_cleanup) or retry every second, forever (chord_unlock).
    ("unknown_task", raw_message(json.dumps([["x"], {"interval": 1}, {}]).encode(),
                                 task="celery.chord_unlock"),
     "'celery.chord_unlock' is not a dispatchq task"),
    ("unknown_task", raw_message(json.dumps([[], {}, {}]).encode(),
                                 task="celery.backend_cleanup"),
     "'celery.backend_cleanup' is not a dispatchq task"),
    ("malformed", b"null", "must be a JSON object, not null"),
    ("invalid_task", _with_eta(), "asks to run"),
    ("invalid_request", raw_message(_kwargs_body(v=1, job_id=3)),
     "invalid dispatch request: request_id: Field required; job_id: Input should be a valid"),
]  # fmt: skip


def _dlq_json(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["dlq", "list", "-json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_poison_messages_are_dead_lettered_and_the_worker_keeps_working(
    fault_stack: FaultStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = fault_stack.with_env(DISPATCHQ_MAX_DELIVERIES="2")
    for name in ("DISPATCHQ_REDIS_URL", "DISPATCHQ_QUEUE"):
        monkeypatch.setenv(name, stack.env[name])
    client = stack.client()
    with stack.worker("w1") as worker, stack.producer() as producer:
        pid = worker.process.pid if worker.process else 0
        for _, item, _ in POISON:
            client.lpush(QUEUE, item)
        # A request whose message already came back twice (say, it killed two workers):
        # (counted before its message is pushed: a fetch may take it at once)
        client.hset(keys.request("capped-1"), dlq.DELIVERIES, 2)
        capped = producer.enqueue("encode", meta={"profile": "hd"}, request_id="capped-1")
        # A malformed envelope naming a request of ours (queued, never taken):
        client.hset(keys.request("ours-1"), "state", "queued")
        client.expire(keys.request("ours-1"), 600)
        client.lpush(QUEUE, _malformed_naming("ours-1"))
        wait_until(lambda: client.llen(keys.DLQ) == len(POISON) + 2, 30, "dead letters")
        good = producer.enqueue("encode", meta={"profile": "hd"})
        after = producer.wait([good, capped, "ours-1"], timeout=30)
        assert worker.process is not None and worker.process.poll() is None
        assert worker.process.pid == pid, "the worker restarted"
        good_outcome = after[good].outcome
        assert good_outcome is not None and good_outcome.exit_code == 0

        ours = after["ours-1"].outcome
        assert ours is not None and ours.exit_code == 1, after["ours-1"]
        assert "delivery_tag must be a non-empty string" in (ours.error_message or "")
        assert client.hget(keys.request("ours-1"), "state") == b"done"

        entries = _dlq_json(capsys)
        assert len(entries) == len(POISON) + 2
        client.delete(keys.request("ours-1"))
        for kind, _, reason in POISON:  # in any order: the worker runs tasks in parallel
            assert any(e["kind"] == kind and reason in e["reason"] for e in entries), reason
        cap_entry = next(e for e in entries if e["task_id"] == capped)
        assert (cap_entry["kind"], cap_entry["replayable"]) == ("delivery_cap", True)
        assert {e["kind"] for e in entries if e["replayable"]} == {"delivery_cap"}
        capped_outcome = after[capped].outcome
        assert capped_outcome is not None and capped_outcome.exit_code == 1
        assert capped_outcome.error_kind == "delivery_cap"
        assert "delivered 3 times (cap 2" in (capped_outcome.error_message or "")

        # replay: the capped request runs afresh; a malformed one is refused
        malformed_id = next(e["task_id"] for e in entries if e["kind"] == "malformed"
                            and e["task_id"])  # fmt: skip
        assert main(["dlq", "replay", malformed_id]) == 1
        assert main(["dlq", "replay", capped]) == 0
        assert f"Replayed {capped} to queue {QUEUE}" in capsys.readouterr().out
        replayed = producer.wait([capped], timeout=30)[capped].outcome
        assert replayed is not None and replayed.exit_code == 0, replayed
        assert len(dlq.entries(client)) == len(POISON) + 1

        assert main(["dlq", "purge"]) == 0
        assert f"Purged {len(POISON) + 1} dead letter(s)" in capsys.readouterr().out
        assert main(["dlq", "list"]) == 0
        assert "No dead letters" in capsys.readouterr().out
        leftover = keys_without_ttl(client)
    client.close()
    output = stack.worker_output()
    stack.report(
        "poison messages",
        requests=len(POISON) + 2,
        faults=f"{len(POISON)} poison messages, 1 past the delivery cap",
        lost=0,
        doubled=0,
        notes="all dead-lettered with the reason; the worker never restarted",
    )
    assert leftover == []
    assert "Unrecoverable error" not in output
    assert "maxmemory-policy" not in output  # noeviction: nothing to warn about


def test_worker_warns_when_redis_may_evict(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Redis that may evict keys (here allkeys-lru) could drop queued requests: the worker
    says so at start."""
    logs = tmp_path_factory.mktemp("evict")
    with RedisServer(extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        env = {"DISPATCHQ_REDIS_URL": server.url, "DISPATCHQ_QUEUE": QUEUE,
               "DISPATCHQ_LOG_FORMAT": "json"}  # fmt: skip
        with WorkerProcess(env=env, name="evict", log_path=logs / "w.log"):
            policy = redis.Redis.from_url(server.url).config_get("maxmemory-policy")
        output = (logs / "w.log").read_text()
    assert policy == {"maxmemory-policy": "allkeys-lru"}
    assert "redis maxmemory-policy is 'allkeys-lru'" in output
    assert "set it to 'noeviction'" in output
