"""`dispatchq health`: exit 0 only while a worker (on this host, with --local) beats."""

from __future__ import annotations

import socket

import pytest
import redis

from dispatchq.cli.main import main
from dispatchq.devstack.ports import free_port
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.store.liveness import Heartbeat

QUEUE = "health-test"


@pytest.fixture(autouse=True)
def settings_env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("DISPATCHQ_QUEUE", QUEUE)


def test_no_worker(redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    Heartbeat(redis_client, "another-queue", f"w1@{socket.gethostname()}").beat()
    assert main(["health"]) == 1
    assert f'No worker consumes queue "{QUEUE}"' in capsys.readouterr().err


def test_a_worker_elsewhere_is_not_local(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    Heartbeat(redis_client, QUEUE, "w1@another-host").beat()
    assert main(["health"]) == 0
    assert capsys.readouterr().out == "w1@another-host\n"
    assert main(["health", "--local"]) == 1
    assert "on this host" in capsys.readouterr().err


def test_a_local_worker(redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    here = f"w2@{socket.gethostname()}"
    Heartbeat(redis_client, QUEUE, "w1@another-host").beat()
    Heartbeat(redis_client, QUEUE, here).beat()
    assert main(["health", "--local"]) == 0
    assert capsys.readouterr().out == f"{here}\n"


def test_a_stopped_worker_is_gone(redis_client: redis.Redis) -> None:
    beat = Heartbeat(redis_client, QUEUE, f"w1@{socket.gethostname()}")
    beat.beat()
    beat.stop()
    assert main(["health", "--local"]) == 1


def test_redis_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["health"]) == 1
    assert "Error talking to Redis" in capsys.readouterr().err
