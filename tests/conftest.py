"""Fixtures shared by every test package: real servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from devstack.nomadsim_process import NomadSimProcess
from devstack.redis_server import RedisServer

pytest_plugins = ["tests.support.stack"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session, on a free loopback port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a flushed database of the session's redis-server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def nomadsim() -> Iterator[NomadSimProcess]:
    """One nomadsim (ACLs off, default cluster) for the session, on a free loopback port."""
    with NomadSimProcess() as sim:
        yield sim
