"""python-nomad's own tests against nomadsim: someone else's idea of Nomad's HTTP API.

    scripts/python-nomad-suite [pytest arguments]

Downloads the source of the python-nomad release installed in .venv (its tests ship in the
PyPI source archive, without their harness), writes the harness they expect (tests/common.py
and tests/conftest.py: a client for 127.0.0.1 and the port given) and the job files they open
(example.json: a service job `example`, group `cache`, task `redis`;
example_batch_parameterized.json: a parameterized batch job; example.nomad: the first in
HCL), starts nomadsim, and runs the
job, jobs, evaluation, allocation, status and event tests in their files' order (a test
registers `example`, later ones read it), each once (`-p no:flaky`: their reruns off). Not
part of `scripts/test`: it needs PyPI.

What nomadsim does not do by design makes some fail; the output names each failure, and
dispatchq/nomadsim/README.md says which are expected and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from dispatchq.devstack.nomadsim_process import NomadSimProcess

FILES = (
    "test_job.py", "test_jobs.py", "test_evaluation.py", "test_evaluations.py",
    "test_allocation.py", "test_allocations.py", "test_status.py", "test_event.py",
)  # fmt: skip

COMMON = """import os

IP = os.environ.get("NOMAD_IP", "127.0.0.1")
NOMAD_PORT = os.environ.get("NOMAD_PORT", "4646")
NOMAD_TOKEN = os.environ.get("NOMAD_TOKEN") or None
NOMAD_NAMESPACE = "admin"
"""

CONFTEST = """import nomad
import pytest

import tests.common as common


@pytest.fixture
def nomad_setup():
    return nomad.Nomad(host=common.IP, port=common.NOMAD_PORT, verify=False,
                       token=common.NOMAD_TOKEN)


@pytest.fixture
def nomad_setup_with_namespace():
    return nomad.Nomad(host=common.IP, port=common.NOMAD_PORT, verify=False,
                       token=common.NOMAD_TOKEN, namespace=common.NOMAD_NAMESPACE)
"""

RESOURCES = {"CPU": 100, "MemoryMB": 64}

SERVICE = {
    "ID": "example", "Name": "example", "Type": "service", "Datacenters": ["dc1"],
    "TaskGroups": [{
        "Name": "cache", "Count": 1,
        "Tasks": [{"Name": "redis", "Driver": "docker", "Config": {"image": "redis:7"},
                   "Resources": RESOURCES}],
    }],
}  # fmt: skip

PARAMETERIZED = {
    "ID": "example-batch", "Name": "example-batch", "Type": "batch", "Datacenters": ["dc1"],
    "ParameterizedJob": {"Payload": "optional", "MetaRequired": ["time"]},
    "TaskGroups": [{
        "Name": "sleep", "Count": 1,
        "Tasks": [{"Name": "sleep", "Driver": "raw_exec",
                   "Config": {"command": "sleep", "args": ["${NOMAD_META_time}"]},
                   "Resources": RESOURCES}],
    }],
}  # fmt: skip

HCL = """job "example" {
  datacenters = ["dc1"]
  group "cache" {
    task "redis" {
      driver = "docker"
      config { image = "redis:7" }
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
"""


def harness(source: Path) -> None:
    """The files python-nomad's tests import or open, beside them."""
    tests = source / "tests"
    (tests / "__init__.py").touch()
    (tests / "common.py").write_text(COMMON)
    (tests / "conftest.py").write_text(CONFTEST)
    (source / "example.json").write_text(json.dumps({"Job": SERVICE}, indent=2))
    (source / "example_batch_parameterized.json").write_text(
        json.dumps({"Job": PARAMETERIZED}, indent=2)
    )
    (source / "example.nomad").write_text(HCL)


def download(into: Path) -> Path:
    """python-nomad's source archive, the release installed here, unpacked."""
    release = version("python-nomad")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--dest", str(into), f"python-nomad=={release}"],
        check=True,
    )  # fmt: skip
    [archive] = into.glob("python*nomad-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return next(p for p in into.iterdir() if p.is_dir() and (p / "tests").is_dir())


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="python-nomad-") as tmp:
        source = download(Path(tmp))
        harness(source)
        with NomadSimProcess() as sim:
            env = {**os.environ, "NOMAD_IP": "127.0.0.1", "NOMAD_PORT": str(sim.port),
                   "NOMAD_VERSION": "1.10.0", "PYTHONPATH": str(source)}  # fmt: skip
            for name in ("NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_NAMESPACE", "NOMAD_REGION"):
                env.pop(name, None)
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                       "-p", "no:flaky", "-q", "-rf", "--tb=line",
                       *[f"tests/{f}" for f in FILES], *sys.argv[1:]]  # fmt: skip
            return subprocess.run(command, cwd=source, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
