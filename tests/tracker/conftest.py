"""Fixtures of the following suite: nomadsim running tasks a thousand times faster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.support.nomad_jobs import FAST_SIM, mock_encode_job, register


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    """nomadsim with the mock_driver encode job `enc` (a module may add jobs of its own)."""
    with NomadSimProcess(args=FAST_SIM) as process:
        register(process.address, mock_encode_job("enc"))
        yield process
