"""deploy/nomad/dispatchq.nomad.hcl, parsed by a real HCL2 parser: the processes it runs,
their health check, graceful drain, and every setting it names is one the code reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from dispatchq.cli.main import cli
from dispatchq.config.settings import Settings
from dispatchq.nomad.config import ENV_NAMES

JOB_FILE = Path(__file__).resolve().parents[1] / "deploy" / "nomad" / "dispatchq.nomad.hcl"
SECRET_NAMES = {"DISPATCHQ_REDIS_URL", "DISPATCHQ_REDIS_SENTINEL_PASSWORD",
                "DISPATCHQ_NOTIFY_SECRET", "NOMAD_TOKEN", "NOMAD_HTTP_AUTH"}  # fmt: skip
OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False,
                               strip_string_quotes=True, preserve_heredocs=False)  # fmt: skip


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    with JOB_FILE.open(encoding="utf-8") as file:
        parsed: dict[str, Any] = hcl2.load(file, serialization_options=OPTIONS)
    return parsed


def _block(blocks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [b[name] for b in blocks if name in b]
    assert len(found) == 1, f"{len(found)} blocks named {name!r}"
    return found[0]


def _groups(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    job = _block(spec["job"], "dispatchq")
    return {name: body for group in job["group"] for name, body in group.items()}


def _tasks(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, body) for group in _groups(spec).values() for task in group["task"]
            for name, body in task.items()]  # fmt: skip


def test_it_runs_workers_two_trackers_and_a_notifier(spec: dict[str, Any]) -> None:
    groups = _groups(spec)
    assert set(groups) == {"workers", "trackers", "notifier"}
    assert groups["workers"]["count"] == "${var.workers}"
    assert (groups["trackers"]["count"], groups["notifier"]["count"]) == (2, 1)
    commands = {name: task["config"][0]["args"][0] for name, task in _tasks(spec)}
    assert commands == {"worker": "worker", "tracker": "tracker", "notifier": "notifier"}
    assert set(commands.values()) <= set(cli.commands)


def test_a_worker_is_healthy_while_it_consumes_and_drains_on_a_new_deployment(
    spec: dict[str, Any],
) -> None:
    workers = _groups(spec)["workers"]
    [check] = workers["service"][0]["check"]
    assert (check["type"], check["command"], check["args"]) == (
        "script", "dispatchq", ["health", "--local"])  # fmt: skip
    job = _block(spec["job"], "dispatchq")
    [update] = job["update"]
    assert (update["max_parallel"], update["health_check"]) == (1, "checks")
    [worker] = workers["task"][0].values()
    assert worker["kill_signal"] == "SIGTERM"
    assert int(worker["kill_timeout"].removesuffix("s")) >= 30


def test_every_setting_it_names_is_read_by_the_code(spec: dict[str, Any]) -> None:
    known = {f"DISPATCHQ_{name.upper()}" for name in Settings.model_fields} | set(ENV_NAMES)
    secrets = spec["locals"][0]["secrets"]
    named = set(re.findall(r"^\s*((?:DISPATCHQ|NOMAD)_[A-Z_]+)=", secrets, re.MULTILINE))
    for _, task in _tasks(spec):
        named |= set(task["env"][0])
        # secrets only from the template (a Nomad Variable): never in the job's env
        assert not {n for n in task["env"][0] if n in SECRET_NAMES}
        [template] = task["template"]
        assert template["data"] == "${local.secrets}" and template["env"] is True
    assert "DISPATCHQ_REDIS_URL" in named
    assert named - known == set()
