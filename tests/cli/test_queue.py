"""`dispatchq queue` on a real redis-server: the backlog per lane, tenant and batch."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

from dispatchq.cli.main import main
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.producer.enqueue import Enqueuer, NewRequest

QUEUE = "cli-lanes-test"


@dataclass
class Shown:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_queue(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Shown]:
    """`dispatchq queue ARGS` against the Redis at `url`, in this process."""

    def run(url: str, *args: str) -> Shown:
        monkeypatch.setenv("DISPATCHQ_REDIS_URL", url)
        monkeypatch.setenv("DISPATCHQ_QUEUE", QUEUE)
        monkeypatch.delenv("DISPATCHQ_CONFIG", raising=False)
        capsys.readouterr()
        try:
            code = main(["queue", *args])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return Shown(code, out, err)

    return run


def test_queue_shows_the_backlog_per_lane_tenant_and_batch(
    redis_server: RedisServer, redis_client: redis.Redis, run_queue: Callable[..., Shown]
) -> None:
    enqueuer = Enqueuer(redis_client, queue=QUEUE, result_ttl=60, blob_ttl=60)
    enqueuer.enqueue(
        [NewRequest("encode", request_id=f"qa-{n}", batch_id="qa", tenant="acme") for n in range(4)]
        + [NewRequest("encode", request_id="q-b", batch_id="qb")]
        + [NewRequest("encode", request_id="q-i")]
    )
    shown = run_queue(redis_server.url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "queue": QUEUE,
        "interactive": 1,
        "tenants": [
            {"tenant": "-", "waiting": 1, "batches": [{"batch_id": "qb", "waiting": 1}]},
            {"tenant": "acme", "waiting": 4, "batches": [{"batch_id": "qa", "waiting": 4}]},
        ],
        "total": 6,
    }
    text = run_queue(redis_server.url)
    assert text.returncode == 0, text.stderr
    assert "Queue cli-lanes-test: 6 waiting" in text.stdout
    assert any(line.split() == ["batch", "acme", "qa", "4"] for line in text.stdout.splitlines())


def test_queue_says_so_when_redis_cannot_be_read(run_queue: Callable[..., Shown]) -> None:
    shown = run_queue("redis://127.0.0.1:1/0")
    assert shown.returncode == 1
    assert "Error reading the queue" in shown.stderr
    assert "Traceback" not in shown.stderr
