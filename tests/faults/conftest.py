"""The fault suite (marker `faults`): real redis-server, nomadsim and worker processes on
loopback, one fault per scenario, each bounded in time. Its figures are printed at the end
(tests/conftest.py, which pytest-xdist's controller loads too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from tests.support.faults import WORKER_ENV, FaultStack
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
