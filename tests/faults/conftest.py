"""The fault suite (marker `faults`): real redis-server, nomadsim and worker processes on
loopback, one fault per scenario, each bounded in time. Its figures are printed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from tests.support.faults import FIGURES, WORKER_ENV, FaultStack, Figure
from tests.support.nomad_jobs import clear_faults, parameterized_job, register, set_scheduler


@pytest.fixture(scope="session")
def fault_sim() -> Iterator[NomadSimProcess]:
    """nomadsim with room for thousands of short children at once."""
    args = ["--nodes", "4", "--node-cpu", "400000", "--node-memory", "400000"]
    with NomadSimProcess(args=args) as sim:
        register(sim.address, parameterized_job("encode", meta_required=["profile"]))
        register(sim.address, parameterized_job("plain"))
        register(sim.address, parameterized_job("needs-payload", payload="required"))
        register(sim.address, parameterized_job("no-payload", payload="forbidden"))
        yield sim


@pytest.fixture
def fault_stack(fault_sim: NomadSimProcess, tmp_path: Path) -> Iterator[FaultStack]:
    """A private redis-server (AOF everysec, noeviction) and the session's nomadsim with no
    faults and no scheduling delay; worker processes are the scenario's to start."""
    clear_faults(fault_sim.address)
    set_scheduler(fault_sim.address, {"schedule_delay_ms": 0})
    env = {
        **WORKER_ENV,
        "NOMAD_ADDR": fault_sim.address,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    for key in [k for k in os.environ if k.startswith(("NOMAD_", "DISPATCHQ_"))]:
        env.setdefault(key, "")
    (tmp_path / "logs").mkdir()
    with RedisServer() as server:
        env["DISPATCHQ_REDIS_URL"] = server.url
        yield FaultStack(server, fault_sim, env, tmp_path / "logs")
    clear_faults(fault_sim.address)
    set_scheduler(fault_sim.address, {"schedule_delay_ms": 0})


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: its figures go to the controller, which prints them all."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_figures"] = json.dumps([dataclasses.asdict(f) for f in FIGURES])


def pytest_testnodedown(node: Any, error: Any) -> None:
    """In the pytest-xdist controller: a worker's figures, gathered."""
    figures = json.loads(getattr(node, "workeroutput", {}).get("fault_figures", "[]"))
    FIGURES.extend(Figure(**figure) for figure in figures)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
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
