"""The wheel as a user installs it: one import root beside a service's own `config` package
and `worker.py`, and a producer install without the daemons' dependencies.

Builds the wheel from this repository, installs it with no extra into a new environment
(its dependencies from the lock, through uv's cache), and imports both sides from a
throwaway project's folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")

pytestmark = pytest.mark.slow

SERVICE = """
import json, sys
import config, worker                      # the service's own
from dispatchq import Producer, enqueue, result, wait   # ours, beside them
import dispatchq.producer.api
assert config.NAME == "the service's config" and worker.NAME == "the service's worker"
heavy = sorted(m for m in ("gevent", "uvloop", "httptools", "prometheus_client", "multidict")
               if m in sys.modules)
print(json.dumps({"dispatchq": dispatchq.__file__, "heavy": heavy}))
"""


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_wheel_installs_one_import_root_beside_a_services_config_and_worker(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    leftover = not (ROOT / "build").exists()  # setuptools builds in the source tree
    try:
        _run(UV, "build", "--wheel", "--out-dir", dist, "--quiet", ROOT, cwd=ROOT)
    finally:
        if leftover:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    [wheel] = dist.glob("dispatchq-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"dispatchq", wheel.name.rsplit("-", 3)[0] + ".dist-info"}, tops
    names = zipfile.ZipFile(wheel).namelist()
    for inside in ("dispatchq/py.typed", "dispatchq/worker/tasks.py",
                   "dispatchq/producer/api.py", "dispatchq/config/settings.py",
                   "dispatchq/store/lua/done.lua"):  # fmt: skip
        assert inside in names, inside

    env = tmp_path / "env"
    _run(UV, "venv", "--quiet", "--python", sys.executable, env)
    python = env / "bin" / "python"
    requirements = tmp_path / "requirements.txt"
    exported = _run(UV, "export", "--frozen", "--no-dev", "--no-emit-project", "--quiet",
                    cwd=ROOT)  # fmt: skip
    requirements.write_text(exported)
    _run(UV, "pip", "install", "--quiet", "--python", python, "-r", requirements)
    _run(UV, "pip", "install", "--quiet", "--no-deps", "--python", python, wheel)

    service = tmp_path / "service"
    (service / "config").mkdir(parents=True)
    (service / "config" / "__init__.py").write_text('NAME = "the service\'s config"\n')
    (service / "worker.py").write_text('NAME = "the service\'s worker"\n')
    shown = json.loads(_run(python, "-c", SERVICE, cwd=service))
    assert shown["dispatchq"].startswith(str(env))  # the installed wheel, not this tree
    assert shown["heavy"] == []  # a producer imports none of the daemons' dependencies
    for module in ("gevent", "uvloop", "prometheus_client"):  # and has none installed
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
        assert probe.returncode != 0, module
    dispatchq = env / "bin" / "dispatchq"
    assert "job" in _run(dispatchq, "--help", cwd=service)  # the client's CLI works
    daemon = subprocess.run([dispatchq, "tracker"], capture_output=True, text=True, check=False)
    assert daemon.returncode == 1
    assert "needs the [worker] extra: pip install 'dispatchq[worker]'" in daemon.stderr
