"""Completion events and webhooks over real processes: redis-server, a worker, nomadsim,
`dispatchq notifier` and an HTTP receiver on 127.0.0.1 in this test process."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from dispatchq.producer.api import Producer
from dispatchq.store import keys
from dispatchq.store.batches import BatchStore
from dispatchq.store.completion import COMPLETION_SCHEMA, EventStream, parse_entry
from dispatchq.store.dlq import entries as dlq_entries
from dispatchq.store.records import RecordStore
from tests.support.stack import Stack

SECRET = "hook-secret-for-tests"
WAIT = 60.0
VALIDATOR = jsonschema.Draft202012Validator(COMPLETION_SCHEMA)


class Receiver:
    """A webhook receiver: answers `status(n)` to its n-th POST, checks each signature."""

    def __init__(self, status: Callable[[int], int] = lambda _: 200) -> None:
        self.status = status
        self.posts: list[tuple[int, str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    answer = receiver.status(len(receiver.posts))
                    receiver.posts.append(
                        (answer, self.headers["X-Dispatchq-Event-Id"], json.loads(body),
                         signed(self.headers["X-Dispatchq-Signature"], body))
                    )  # fmt: skip
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self) -> set[str]:
        with self.lock:
            return {event_id for status, event_id, _, _ in self.posts if status == 200}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed(header: str, body: bytes) -> bool:
    """The receiver's own check, from docs/formats.md (no dispatchq code)."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    mac = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["v1"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def notifier(stack: Stack, receiver: Receiver, log: Path, **env: str) -> subprocess.Popen[bytes]:
    full = {
        **os.environ, **stack.env,
        "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{receiver.port}",
        "DISPATCHQ_NOTIFY_SECRET": SECRET, **env,
    }  # fmt: skip
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "dispatchq.cli", "notifier", "--claim-idle", "1"],
            env=full, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
        )  # fmt: skip


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(timeout=20)


def until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def stream(client: redis.Redis) -> list[tuple[dict[str, Any], str]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.EVENTS)  # type: ignore[assignment]
    return [parse_entry(fields) for _, fields in entries]


def mixed(producer: Producer, url: str) -> tuple[list[str], str]:
    """A request that succeeds, one whose child cannot be placed (exit 2), one Nomad
    refuses (exit 1), and a batch of one of each; all named `url`."""
    ids = [
        producer.enqueue("encode", meta={"profile": "1080p"}, notify_url=url),
        producer.enqueue("huge", notify_url=url),
        producer.enqueue("encode", notify_url=url),  # no profile: refused by Nomad
    ]
    items: list[dict[str, Any]] = [{"meta": {"profile": p}} for p in ("hd", "sd")]
    items.insert(1, {"meta": {}})
    batch = producer.dispatch_batch("encode", items, preflight=False, notify_url=url)
    return ids, batch


def test_each_ending_and_each_batch_appends_one_event(
    running: Stack, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMAD_ADDR", running.sim.address)
    with running.producer() as producer:
        ids, batch = mixed(producer, "https://hooks.example/x")
        members = list(producer.batches.request_ids(batch))
        statuses = producer.wait(ids + members, timeout=WAIT)
        assert [statuses[i].outcome.exit_code for i in ids] == [0, 2, 1]  # type: ignore[union-attr]
        until(lambda: len(stream(redis_client)) >= 7, "the batch's event")
    time.sleep(0.5)  # anything doubled would show now
    got = stream(redis_client)
    for event, url in got:
        VALIDATOR.validate(event)
        named = event["type"] == "batch.finished" or event["request_id"] in ids
        assert url == ("https://hooks.example/x" if named else "")  # members: the batch's
    by_id = {event["event_id"]: event for event, _ in got}
    assert len(by_id) == len(got) == 7
    assert {by_id[f"request:{i}:1"]["exit_code"] for i in ids} == {0, 1, 2}
    finished = by_id[f"batch:{batch}"]
    assert (finished["status"], finished["succeeded"], finished["failed"]) == ("failed", 2, 1)
    order = [e["event_id"] for e, _ in got]
    assert order.index(f"batch:{batch}") > max(order.index(f"request:{m}:1") for m in members)


def test_webhooks_survive_a_failing_receiver_and_a_killed_notifier(
    running: Stack, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOMAD_ADDR", running.sim.address)
    failing_until = time.monotonic() + 4
    hooks = Receiver(lambda _: 500 if time.monotonic() < failing_until else 200)
    first = notifier(running, hooks, tmp_path / "n1.log")
    try:
        with running.producer() as producer:
            ids, batch = mixed(producer, hooks.url())
            more = [producer.enqueue("encode", meta={"profile": "x"}, notify_url=hooks.url())
                    for _ in range(10)]  # fmt: skip
        expected = {f"request:{i}:1" for i in ids + more} | {f"batch:{batch}"}
        assert len(expected) == 14
        until(lambda: len(hooks.posts) >= 5, "the first (failed) posts")
        stop(first, signal.SIGKILL)  # mid-run: its entries stay pending, unacknowledged
        second = notifier(running, hooks, tmp_path / "n2.log")
        try:
            until(lambda: hooks.delivered() >= expected, "every event delivered")
            until(lambda: not pending(redis_client), "every entry acknowledged")
        finally:
            stop(second)
    finally:
        stop(first, signal.SIGKILL)
        hooks.close()
    assert any(status == 500 for status, *_ in hooks.posts)
    assert all(ok for *_, ok in hooks.posts)  # every signature verifies
    assert {event_id for _, event_id, _, _ in hooks.posts} == expected  # none foreign
    for _, event_id, event, _ in hooks.posts:
        assert event["event_id"] == event_id
        VALIDATOR.validate(event)
    assert not [e for e in dlq_entries(redis_client) if e.kind == "webhook"]
    # how each went is kept beside what it is about (the dashboard shows it)
    status = BatchStore(redis_client, 60).status(batch)
    assert status is not None and status.webhook["state"] == "delivered"
    assert status.webhook["event_id"] == f"batch:{batch}"
    assert status.to_json()["webhook"]["attempts"] >= 1
    records = RecordStore(redis_client, 60)
    for rid in ids + more:
        record = records.load(rid)
        assert record is not None and record.webhook["state"] == "delivered", rid


def test_other_hosts_and_exhausted_retries_are_dead_lettered(
    running: Stack, redis_client: redis.Redis, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.status = lambda _: 503
    process = notifier(running, receiver, tmp_path / "n.log", DISPATCHQ_NOTIFY_RETRY_FOR="2")
    try:
        with running.producer() as producer:
            other = producer.enqueue(
                "encode", meta={"profile": "x"}, notify_url=f"http://localhost:{receiver.port}/"
            )
            failing = producer.enqueue("encode", meta={"profile": "x"}, notify_url=receiver.url())
        until(lambda: len(webhook_letters(redis_client)) == 2, "two dead letters")
        until(lambda: not pending(redis_client), "both entries acknowledged")
    finally:
        stop(process)
    letters = {e.task_id: e for e in webhook_letters(redis_client)}
    assert "not in DISPATCHQ_NOTIFY_HOSTS" in letters[other].reason
    assert "within 2 s" in letters[failing].reason and "HTTP 503" in letters[failing].reason
    assert {event_id for _, event_id, _, _ in receiver.posts} == {f"request:{failing}:1"}
    listed = subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "dlq", "list", "-json"],
        env={**os.environ, **running.env}, capture_output=True, text=True, timeout=30,
        check=True,
    )  # fmt: skip
    assert listed.stdout.count('"webhook"') == 2
    record = RecordStore(redis_client, 60).load(failing)
    assert record is not None and record.webhook["state"] == "dead-lettered"
    assert "HTTP 503" in record.webhook["error"] and record.webhook["attempts"] >= 2
    assert SECRET not in (tmp_path / "n.log").read_text() + listed.stdout


def webhook_letters(client: redis.Redis) -> list[Any]:
    return [e for e in dlq_entries(client) if e.kind == "webhook"]


def pending(client: redis.Redis) -> int:
    info: Any = client.xpending(keys.EVENTS, keys.NOTIFIER_GROUP)
    return int(info["pending"])


def test_the_failed_items_of_a_batch_with_what_reruns_them(
    running: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOMAD_ADDR", running.sim.address)
    with running.producer() as producer:
        _, batch = mixed(producer, "https://hooks.example/x")
        producer.wait(list(producer.batches.request_ids(batch)), timeout=WAIT)
        failed = [json.loads(line) for line in producer.batch_results(batch, failed_only=True)]
    assert [(f["line"], f["meta"], f["payload_ref"], f["exit_code"]) for f in failed] == [
        (2, {}, None, 1)
    ]  # fmt: skip
    source = tmp_path / "items.jsonl"
    source.write_text('{"meta": {"profile": "a"}}\n{"payload": "x", "meta": {"p": "1"}}\n')
    env = {**os.environ, **running.env}
    cli = [sys.executable, "-m", "dispatchq.cli", "batch"]
    submitted = subprocess.run(  # one item Nomad refuses: meta "p" is not permitted
        [*cli, "encode", str(source), "--no-preflight", "--wait", "-json"],
        env=env, capture_output=True, text=True, timeout=WAIT, check=False,
    )  # fmt: skip
    batch_id = json.loads(submitted.stdout.splitlines()[-1])["batch_id"]
    listed = subprocess.run(
        [*cli, "results", batch_id, "--failed"],
        env=env, capture_output=True, text=True, timeout=WAIT, check=True,
    )  # fmt: skip
    [line] = [json.loads(text) for text in listed.stdout.splitlines()]
    assert (line["line"], line["meta"]) == (2, {"p": "1"})
    assert line["payload_ref"] == "data:;base64,eA=="  # "x", small enough to travel inline


def test_a_stopped_notifier_misses_no_webhook_past_the_streams_cap(
    running: Stack, redis_client: redis.Redis, receiver: Receiver, tmp_path: Path
) -> None:
    """1,500 requests end while the notifier is stopped and the stream's cap is 1,000: no
    event is trimmed before the notifier's group has it, and all 1,500 are delivered."""
    name = "dispatchq:events:capped-test"
    redis_client.delete(name)
    env = {"DISPATCHQ_EVENTS_STREAM": name}
    first = notifier(running, receiver, tmp_path / "n1.log", **env)
    try:
        until(lambda: bool(redis_client.exists(name)), "the notifier's group")
    finally:
        stop(first)
    store = RecordStore(redis_client, 600, EventStream(name, maxlen=1_000))
    ids = [f"capped-{n}" for n in range(1_500)]
    for rid in ids:
        outcome = {"v": 1, "status": "complete", "exit_code": 0, "job_id": "encode",
                   "timings": [1.0, 0.1, 0.1], "events": []}  # fmt: skip
        store.mark_done(rid, 0, None, outcome=outcome, notify_url=receiver.url())
    assert redis_client.xlen(name) == 1_500  # past the cap, nothing trimmed unread
    second = notifier(running, receiver, tmp_path / "n2.log", **env)
    try:
        expected = {f"request:{rid}:1" for rid in ids}
        until(lambda: receiver.delivered() >= expected, "every webhook delivered")
    finally:
        stop(second)
    # none foreign (a post the receiver was slow to answer may be retried: at least once)
    assert {event_id for _, event_id, _, _ in receiver.posts} == expected
