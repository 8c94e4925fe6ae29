"""Fixtures shared by every test package: real servers on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer

pytest_plugins = ["tests.support.stack"]

# Fixtures that start nomadsim (and, through them, workers): a test using one is `slow`.
# redis-server alone is not: it starts once per session in well under a second, and the
# unit layer uses it where Redis's own semantics are the point (scripts, BLMOVE, leases).
_PROCESSES = frozenset({"nomadsim", "sim", "fault_sim"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that starts processes beyond the session's redis-server: the
    integration and fault suites, devstack's tests and any test using a nomadsim fixture.
    `pytest -m "not slow"` is the unit layer (CONTRIBUTING.md)."""
    slow = pytest.mark.slow
    for item in items:
        if (
            item.get_closest_marker("integration")
            or item.get_closest_marker("faults")
            or _PROCESSES & set(getattr(item, "fixturenames", ()))
            or item.path.parent.name == "devstack"  # they start (and restart) servers
        ):
            item.add_marker(slow)


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


# The fault suite's figures (tests/support/faults.py), printed at the end of the run; here,
# not in tests/faults/conftest.py, since pytest-xdist's controller loads only this one.
def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: its figures go to the controller, which prints them all."""
    # imported here: tests.support.* load as pytest plugins first (assertion rewriting)
    from tests.support.faults import FIGURES

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_figures"] = json.dumps([dataclasses.asdict(f) for f in FIGURES])


def pytest_testnodedown(node: Any, error: Any) -> None:
    """In the pytest-xdist controller: a worker's figures, gathered."""
    from tests.support.faults import FIGURES, Figure

    figures = json.loads(getattr(node, "workeroutput", {}).get("fault_figures", "[]"))
    FIGURES.extend(Figure(**figure) for figure in figures)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.support.faults import FIGURES

    if not FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault suite figures")
    write(f"{'scenario':<34} {'requests':>8} {'lost':>5} {'doubled':>7} {'seconds':>7}  faults")
    for fig in FIGURES:
        write(
            f"{fig.scenario:<34} {fig.requests:>8} {fig.lost:>5} {fig.doubled:>7} "
            f"{fig.seconds:>7.1f}  {fig.faults}"
        )
        if fig.notes:
            write(f"{'':<34} {fig.notes}")
