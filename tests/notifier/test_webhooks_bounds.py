"""The notifier on its own (a real Redis, a receiver thread): bounded memory, signatures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from dispatchq.notifier.webhooks import Notifier, NotifyPolicy, sign, verify
from dispatchq.store import keys
from dispatchq.store.completion import EventStream
from dispatchq.store.records import RecordStore

STORED = {"v": 1, "status": "complete", "exit_code": 0, "job_id": "j", "events": []}


class Gate:
    def __init__(self) -> None:
        self.open = threading.Event()
        self.posts = 0
        self.lock = threading.Lock()


@pytest.fixture
def gated() -> Iterator[tuple[Gate, int]]:
    gate = Gate()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with gate.lock:
                gate.posts += 1
            gate.open.wait(30)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield gate, server.server_address[1]
    gate.open.set()
    server.shutdown()
    server.server_close()


def until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_stuck_receiver_holds_only_max_pending_events(
    redis_client: redis.Redis, gated: tuple[Gate, int]
) -> None:
    gate, port = gated
    store = RecordStore(redis_client, 60)
    for n in range(50):
        store.mark_done(f"r-{n}", 0, None, outcome=STORED, notify_url=f"http://127.0.0.1:{port}/")
    policy = NotifyPolicy(hosts={f"127.0.0.1:{port}"}, secret=b"k", timeout=30)
    notifier = Notifier(redis_client, EventStream(), policy, consumer="c", threads=2,
                        max_pending=5, block=0.05)  # fmt: skip
    stop = threading.Event()
    runner = threading.Thread(target=notifier.run, args=(stop,))
    runner.start()
    try:
        until(lambda: gate.posts == 2, "both threads posting")
        time.sleep(0.3)  # were it unbounded, it would read on meanwhile
        [group] = redis_client.xinfo_groups(keys.EVENTS)
        assert group["pending"] == 5 and group["lag"] == 45  # the rest waits in the stream
        gate.open.set()
        until(lambda: notifier.delivered == 50, "every event delivered")
    finally:
        gate.open.set()
        stop.set()
        runner.join(30)
    [group] = redis_client.xinfo_groups(keys.EVENTS)
    assert (group["pending"], group["lag"]) == (0, 0)


def test_signatures_verify_and_refuse_what_was_changed() -> None:
    now = int(time.time())
    header = sign(b"secret", now, b'{"a":1}')
    assert verify(b"secret", header, b'{"a":1}')
    assert not verify(b"secret", header, b'{"a":2}')
    assert not verify(b"other", header, b'{"a":1}')
    assert not verify(b"secret", sign(b"secret", now - 3600, b"{}"), b"{}")
    assert not verify(b"secret", "garbage", b"{}")
