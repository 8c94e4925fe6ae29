"""docker-compose.yml and the Dockerfile: valid, and set up the way docs/operations.md says.

Where a Compose client is installed (`docker compose`, else the older `docker-compose`),
the assertions run on what `config` makes of the file: validated against the Compose
schema, interpolated and normalized. Without one they run on the file as pyyaml reads it,
after a structural check of the subset of the Compose specification the file uses. The
structural check runs in both cases.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatchq.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

TOP_LEVEL = {"services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "build", "command", "depends_on", "deploy", "entrypoint", "environment", "expose",
    "healthcheck", "image", "ports", "profiles", "restart", "stop_grace_period", "volumes",
}  # fmt: skip
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
DURATION = re.compile(r"^(\d+(\.\d+)?(h|m|s|ms|us|ns))+$")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_client() -> list[str] | None:
    """The installed Compose command, if any."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def interpolate(value: Any) -> Any:
    """`${VAR:-default}` as Compose resolves it with VAR unset."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def config(raw: dict[str, Any]) -> dict[str, Any]:
    """The Compose model: `config`'s output where a client is installed, else the file."""
    client = compose_client()
    if client is None:
        return {k: v for k, v in interpolate(raw).items() if not k.startswith("x-")}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOMAD_", "DISPATCHQ_", "REDIS_", "COMPOSE_"))
    }
    result = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = yaml.safe_load(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def words(command: Any) -> list[str]:
    """A command as its words, from either the list or the string form."""
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def test_structure(raw: dict[str, Any]) -> None:
    extra = {k for k in raw if not k.startswith("x-")} - TOP_LEVEL
    assert not extra, f"unknown top-level keys {extra}"
    services = raw["services"]
    declared_volumes = set(raw.get("volumes") or {})
    for name, service in services.items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {unknown}"
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in CONDITIONS
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
        if "restart" in service:
            assert service["restart"] in RESTART
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if not source.startswith(("/", ".")):
                assert source in declared_volumes, f"{name}: undeclared volume {source}"
        health = service.get("healthcheck")
        if health is not None:
            test = health["test"]
            assert isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL", "NONE")
            for key in ("interval", "timeout", "start_period"):
                if key in health:
                    assert DURATION.match(health[key]), f"{name}: {key}={health[key]!r}"
        if "stop_grace_period" in service:
            assert DURATION.match(service["stop_grace_period"])
        for port in service.get("ports") or []:
            assert re.fullmatch(r"\d+(:\d+)?", str(port)), f"{name}: port {port!r}"
        if "environment" in service:
            assert isinstance(service["environment"], dict)
            assert all(isinstance(v, str) for v in service["environment"].values())


def test_services(config: dict[str, Any]) -> None:
    assert {"redis", "nomadsim", "nomadsim-jobs", "worker", "flower", "notifier"} <= set(
        config["services"]
    )


def test_redis_keeps_what_it_is_given(config: dict[str, Any]) -> None:
    argv = words(config["services"]["redis"]["command"])
    assert flag_value(argv, "--appendonly") == "yes"
    assert flag_value(argv, "--appendfsync") == "everysec"
    assert flag_value(argv, "--maxmemory-policy") == "noeviction"
    assert flag_value(argv, "--maxmemory") == "1gb"


def test_workers(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    assert int(worker["deploy"]["replicas"]) > 1
    assert "-E" in words(worker["command"])  # task events, for Flower
    env = worker["environment"]
    assert env["DISPATCHQ_REDIS_URL"] == "redis://redis:6379/0"
    assert env["NOMAD_ADDR"] == "http://nomadsim:4646"
    assert int(env["DISPATCHQ_METRICS_PORT"]) > 0
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_worker_healthcheck_is_a_dispatchq_command(config: dict[str, Any]) -> None:
    test = words(config["services"]["worker"]["healthcheck"]["test"])
    assert test[:2] == ["CMD", "dispatchq"]
    name, *rest = test[2:]
    command = cli.commands[name]
    assert name == "health"
    assert command.make_context("health", list(rest)).params["local"]


def test_flower_reads_the_workers_broker(config: dict[str, Any]) -> None:
    """`dispatchq flower` from the image, with the workers' Redis and queue."""
    services = config["services"]
    flower, worker = services["flower"], services["worker"]
    assert words(flower["command"])[0] == "flower"
    assert "build" in flower
    for name in ("DISPATCHQ_REDIS_URL", "DISPATCHQ_QUEUE"):
        assert flower["environment"][name] == worker["environment"][name]
    assert "--extra flower" in DOCKERFILE.read_text()  # the image has Flower


def test_a_real_nomad_agent_is_one_uncomment_away() -> None:
    text = COMPOSE_FILE.read_text()
    block = re.search(r"^  # nomad:\n((?:  #.*\n)+)", text, re.MULTILINE)
    assert block is not None
    uncommented = "services:\n  nomad:\n" + re.sub(r"^  # ", "  ", block.group(1), flags=re.M)
    nomad = yaml.safe_load(uncommented)["services"]["nomad"]
    assert nomad["image"].startswith("hashicorp/nomad:")
    assert words(nomad["command"])[:2] == ["agent", "-dev"]


def test_the_image_has_every_package() -> None:
    """The Dockerfile copies the package that pyproject.toml installs, and the top-level
    folders its links point to (worker/, producer/, config/)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert patterns == ["dispatchq", "dispatchq.*"]
    linked = {p.readlink().name for p in (ROOT / "dispatchq").iterdir() if p.is_symlink()}
    assert linked == {"worker", "producer", "config"}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", DOCKERFILE.read_text(), re.MULTILINE))
    assert copied == {"dispatchq"} | linked
