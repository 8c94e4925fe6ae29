"""`dispatchq job dispatch` as a subprocess against nomadsim: stdout, stderr, exit code."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.support.stub_server import Reply, Seen, StubServer, unused_port

pytestmark = pytest.mark.integration

SHORT = "[0-9a-f]{8}"
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TASK = {"Name": "t", "Driver": "mock_driver", "Resources": {"CPU": 100, "MemoryMB": 64}}


def job(job_id: str, *, parameterized: dict[str, Any] | None = None, cpu: int = 100) -> Any:
    return {
        "ID": job_id,
        "Type": "batch",
        "ParameterizedJob": parameterized,
        "TaskGroups": [
            {"Name": "cache", "Tasks": [{**TASK, "Resources": {"CPU": cpu, "MemoryMB": 64}}]}
        ],
    }


class Sim:
    """Admin and API calls on one nomadsim."""

    def __init__(self, address: str, token: str = "") -> None:
        self.address = address
        self.headers = {"X-Nomad-Token": token} if token else {}

    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        response = requests.request(
            method, self.address + path, json=body, params=params, headers=self.headers, timeout=10
        )
        assert response.ok, response.text
        return response.json() if response.content else None

    def register(self, spec: Any, namespace: str = "default") -> None:
        self.call("PUT", "/v1/jobs", {"Job": spec}, namespace=namespace)

    def dispatch_requests(self) -> int:
        return int(self.call("GET", "/_sim/stats")["requests_by_route"].get("dispatch", 0))


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> Any:
    """`dispatchq job dispatch -direct <args>` with only the given NOMAD_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOMAD_")}
    return subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", "-direct", *args],
        input=stdin,
        capture_output=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def out(result: Any) -> list[str]:
    return list(result.stdout.decode().splitlines())


def err(result: Any) -> str:
    return str(result.stderr.decode())


@pytest.fixture(scope="module")
def sim(nomadsim: NomadSimProcess) -> Sim:
    sim = Sim(nomadsim.address)
    sim.register(job("clijob-video", parameterized={"MetaOptional": ["k"]}))
    sim.register(job("clijob-needs", parameterized={"Payload": "required"}))
    sim.register(job("clijob-web"))
    sim.register(job("clijob-big", parameterized={}, cpu=10_000_000))
    return sim


@pytest.fixture
def env(sim: Sim) -> Iterator[dict[str, str]]:
    yield {"NOMAD_ADDR": sim.address}
    sim.call("DELETE", "/_sim/faults")
    sim.call("PUT", "/_sim/scheduler", {"fail_next_evals": 0, "schedule_delay_ms": 0})


# The contract's verb for a new allocation is "created" (its CreateIndex is not below the
# evaluation's). nomadsim answers CreateIndex 0 in AllocListStubs, which makes the CLI say
# "modified"; test_new_allocation_is_created pins the contract, the others accept both.
ALLOC_VERB = "(?:created|modified)"


def check_success(lines: list[str], parent: str, short: str = SHORT, verb: str = ALLOC_VERB) -> str:
    """The seed's output for a dispatch that is placed; returns the dispatched job ID."""
    child = rf"{parent}/dispatch-\d+-[0-9a-f]{{8}}"
    expected = [
        rf"Dispatched Job ID = ({child})",
        rf"Evaluation ID     = ({short})",
        "",
        rf'==> Monitoring evaluation "({short})"',
        rf'    Evaluation triggered by job "({child})"',
        rf'    Allocation "{short}" {verb}: node "{short}", group "cache"',
        r'    Evaluation status changed: "pending" -> "complete"',
        rf'==> Evaluation "({short})" finished with status "complete"',
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    return lines[0].split(" = ")[1]


def test_success(env: dict[str, str]) -> None:
    result = run("clijob-video", env=env)
    assert (result.returncode, err(result)) == (0, "")
    check_success(out(result), "clijob-video")


def test_new_allocation_is_created(env: dict[str, str]) -> None:
    result = run("clijob-video", env=env)
    check_success(out(result), "clijob-video", verb="created")


def test_verbose_prints_36_character_ids(env: dict[str, str]) -> None:
    result = run("-verbose", "clijob-video", env=env)
    assert result.returncode == 0, err(result)
    check_success(out(result), "clijob-video", short=UUID)


def test_detach(env: dict[str, str], sim: Sim) -> None:
    result = run("-detach", "clijob-video", env=env)
    assert (result.returncode, err(result)) == (0, "")
    first, second = out(result)
    child = first.removeprefix("Dispatched Job ID = ")
    assert re.fullmatch(rf"Evaluation ID     = {SHORT}", second)
    assert sim.call("GET", f"/v1/job/{quote(child, safe='')}")["ID"] == child


def test_stdin_and_file_input_and_meta(env: dict[str, str], sim: Sim, tmp_path: Path) -> None:
    result = run("-meta", "k=a=b", "--meta", "k=last", "clijob-video", "-", env=env, stdin=b"hi")
    assert result.returncode == 0, err(result)
    child = sim.call("GET", "/v1/job/" + quote(out(result)[0][20:], safe=""))
    assert base64.b64decode(child["Payload"]) == b"hi"
    assert child["Meta"] == {"k": "last"}

    source = tmp_path / "input.bin"
    source.write_bytes(b"\x00file payload\xff" * 100)
    result = run("-detach", "clijob-video", str(source), env=env)
    assert result.returncode == 0, err(result)
    child = sim.call("GET", "/v1/job/" + quote(out(result)[0][20:], safe=""))
    assert base64.b64decode(child["Payload"]) == source.read_bytes()


def test_oversize_payload_is_refused_before_sending(
    env: dict[str, str], sim: Sim, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 16385)
    before = sim.dispatch_requests()
    result = run("clijob-video", str(source), env=env)
    assert result.returncode == 1
    assert out(result) == []
    assert err(result) == "Failed to dispatch job: Payload exceeds maximum size; 16385 > 16384\n"
    assert sim.dispatch_requests() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-meta", "novalue", "clijob-video"], "Error parsing meta value: novalue\n"),
        (
            ["clijob-video", "/nonexistent/input.json"],
            "Error reading input data: open /nonexistent/input.json: no such file or directory\n",
        ),
    ],
)
def test_input_errors(env: dict[str, str], args: list[str], message: str) -> None:
    result = run(*args, env=env)
    assert (result.returncode, out(result), err(result)) == (1, [], message)


@pytest.mark.parametrize("args", [[], ["clijob-video", "-", "extra"], ["job", "-meta", "k=v"]])
def test_wrong_argument_count(env: dict[str, str], args: list[str]) -> None:
    result = run(*args, env=env)
    assert result.returncode == 1
    assert out(result) == []
    message, usage = err(result).split("\n", 1)
    assert message == ("This command takes one or two argument: <parameterized job> [input source]")
    assert "Usage: dispatchq job dispatch [options] <parameterized job> [input source]" in usage


def test_unknown_flag_exits_1(env: dict[str, str]) -> None:
    result = run("-bogus", "clijob-video", env=env)
    assert result.returncode == 1
    assert err(result).startswith("flag provided but not defined: -bogus\n")


@pytest.mark.parametrize(
    ("job_id", "body"),
    [
        ("clijob-missing", "parameterized job not found"),
        ("clijob-web", 'Specified job "clijob-web" is not a parameterized job'),
        ("clijob-needs", "Payload is not provided but required by parameterized job"),
    ],
)
def test_refused_dispatch(env: dict[str, str], sim: Sim, job_id: str, body: str) -> None:
    before = sim.dispatch_requests()
    result = run(job_id, env=env)
    assert (result.returncode, out(result)) == (1, [])
    assert err(result) == f"Failed to dispatch job: Unexpected response code: 500 ({body})\n"
    assert sim.dispatch_requests() == before + 1  # validation errors are never retried


def test_placement_failure_exits_2(env: dict[str, str]) -> None:
    result = run("clijob-big", env=env)
    assert (result.returncode, err(result)) == (2, ""), out(result)
    lines = out(result)
    assert lines[-5:] == [
        lines[-5],
        '    Task Group "cache" (failed to place 1 allocation):',
        "      * Resources exhausted on 3 nodes",
        '      * Dimension "cpu" exhausted on 3 nodes',
        lines[-1],
    ]
    assert re.fullmatch(
        rf'==> Evaluation "{SHORT}" finished with status "complete" but failed to place all '
        "allocations:",
        lines[-5],
    )
    assert re.fullmatch(
        rf'    Evaluation "{SHORT}" waiting for additional capacity to place remainder', lines[-1]
    )


def test_next_eval_chain(env: dict[str, str], sim: Sim) -> None:
    sim.call("PUT", "/_sim/scheduler", {"fail_next_evals": 1, "followup_wait_ms": 100})
    result = run("clijob-video", env=env)
    assert (result.returncode, err(result)) == (0, "")
    lines = out(result)
    first, second = (line for line in lines if line.startswith("==> Monitoring evaluation"))
    assert first != second
    assert re.fullmatch(rf'==> Evaluation "{SHORT}" finished with status "failed"', lines[6])
    assert lines[7] == second
    assert re.fullmatch(rf'==> Evaluation "{SHORT}" finished with status "complete"', lines[-1])


def test_monitor_blocks_instead_of_polling(env: dict[str, str], sim: Sim) -> None:
    """While the scheduler sits on the evaluation, the monitor waits in a blocking query."""
    sim.call("PUT", "/_sim/scheduler", {"schedule_delay_ms": 1500})
    before = sim.call("GET", "/_sim/stats")["requests_by_route"].get("evaluation", 0)
    result = run("clijob-video", env=env)
    assert (result.returncode, err(result)) == (0, "")
    after = sim.call("GET", "/_sim/stats")["requests_by_route"]["evaluation"]
    # One read per change of the evaluation (created, complete), plus the first.
    assert after - before <= 3


def test_evaluation_disappearing(env: dict[str, str], sim: Sim) -> None:
    """A proxy in front of nomadsim loses the evaluation after its first read."""
    sim.call("PUT", "/_sim/scheduler", {"schedule_delay_ms": 2000})
    reads: list[str] = []

    def respond(seen: Seen) -> Reply:
        if seen.path.startswith("/v1/evaluation/"):
            reads.append(seen.path)
            if len(reads) > 2:  # the first eval read and its allocations pass
                return Reply(404, "eval not found")
        answer = requests.request(
            seen.method, sim.address + seen.raw_path, data=seen.body or None, timeout=10
        )
        index = answer.headers.get("X-Nomad-Index", "0")
        return Reply(answer.status_code, answer.content, {"X-Nomad-Index": index})

    with StubServer() as proxy:
        proxy.respond = respond
        result = run("-verbose", "clijob-video", env={"NOMAD_ADDR": proxy.address})
    assert result.returncode == 1
    lines = out(result)
    eval_id = lines[1].removeprefix("Evaluation ID     = ")
    assert lines[3:] == [
        f'==> Monitoring evaluation "{eval_id}"',
        f'    Evaluation triggered by job "{lines[0][20:]}"',
    ]
    assert err(result) == f'==> No evaluation with id "{eval_id}" found\n'


def test_connection_refused() -> None:
    port = unused_port()
    result = run("clijob-video", env={"NOMAD_ADDR": f"http://127.0.0.1:{port}"})
    assert (result.returncode, out(result)) == (1, [])
    assert err(result) == (
        f'Failed to dispatch job: Put "http://127.0.0.1:{port}/v1/job/clijob-video/dispatch": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused\n"
    )


def test_bad_address_is_a_client_setup_error() -> None:
    result = run("-address", "ftp://nomad", "clijob-video")
    assert result.returncode == 1
    assert err(result).startswith('Error initializing client: invalid address "ftp://nomad"')


def test_idempotent_repeat_prints_one_line(env: dict[str, str]) -> None:
    first = run("-idempotency-token", "clijob-tok-1", "clijob-video", env=env)
    assert first.returncode == 0, err(first)
    child = check_success(out(first), "clijob-video")
    again = run("-idempotency-token", "clijob-tok-1", "clijob-video", env=env)
    assert (again.returncode, out(again), err(again)) == (0, [f"Dispatched Job ID = {child}"], "")


def test_id_prefix_template_and_priority(env: dict[str, str], sim: Sim) -> None:
    result = run(
        "-detach", "-id-prefix-template", "nightly", "-priority", "70", "clijob-video", env=env
    )
    assert result.returncode == 0, err(result)
    child = out(result)[0][20:]
    assert re.fullmatch(r"clijob-video/dispatch-nightly-\d+-[0-9a-f]{8}", child)
    assert sim.call("GET", "/v1/job/" + quote(child, safe=""))["Priority"] == 70


def test_namespaces(env: dict[str, str], sim: Sim) -> None:
    sim.call("PUT", "/v1/namespace/clijob-ns", {"Name": "clijob-ns"})
    sim.register(job("clijob-ns-job", parameterized={}), namespace="clijob-ns")
    missing = run("-detach", "clijob-ns-job", env=env)
    assert missing.returncode == 1
    assert "parameterized job not found" in err(missing)
    assert run("-namespace", "clijob-ns", "clijob-ns-job", env=env).returncode == 0
    from_env = run("clijob-ns-job", env={**env, "NOMAD_NAMESPACE": "clijob-ns"})
    assert from_env.returncode == 0, err(from_env)
    check_success(out(from_env), "clijob-ns-job")


def test_retries_transport_errors_and_no_leader(env: dict[str, str], sim: Sim) -> None:
    # Refused before anything was written: retried even without an idempotency token.
    sim.call("POST", "/_sim/faults", {"kind": "error", "route": "dispatch", "count": 1})
    sim.call("POST", "/_sim/faults", {"kind": "rate_limit", "route": "dispatch", "count": 1})
    # Reads are always safe to repeat.
    sim.call("POST", "/_sim/faults", {"kind": "cut", "route": "evaluation", "count": 1})
    before = sim.dispatch_requests()
    result = run("clijob-video", env=env)
    assert (result.returncode, err(result)) == (0, "")
    check_success(out(result), "clijob-video")
    assert sim.dispatch_requests() == before + 3


def test_cut_dispatch_is_replayed_only_with_a_token(env: dict[str, str], sim: Sim) -> None:
    sim.call("POST", "/_sim/faults", {"kind": "cut", "route": "dispatch", "count": 1})
    before = sim.dispatch_requests()
    result = run("clijob-video", env=env)
    assert result.returncode == 1
    assert err(result).startswith('Failed to dispatch job: Put "')
    assert sim.dispatch_requests() == before + 1

    sim.call("POST", "/_sim/faults", {"kind": "cut", "route": "dispatch", "count": 1})
    result = run("-detach", "-idempotency-token", "clijob-cut", "clijob-video", env=env)
    assert (result.returncode, err(result)) == (0, "")
    assert sim.dispatch_requests() == before + 3


@pytest.fixture(scope="module")
def acl_sim() -> Iterator[Sim]:
    with NomadSimProcess(args=["--acl"]) as process:
        bootstrap = requests.put(f"{process.address}/v1/acl/bootstrap", timeout=10).json()
        admin = Sim(process.address, bootstrap["SecretID"])
        admin.register(job("clijob-video", parameterized={}))
        admin.call(
            "PUT",
            "/v1/acl/policy/dispatch-only",
            {
                "Name": "dispatch-only",
                "Rules": 'namespace "default" { capabilities = ["dispatch-job"] }',
            },
        )
        yield admin


def test_acl(acl_sim: Sim) -> None:
    env = {"NOMAD_ADDR": acl_sim.address}
    denied = run("clijob-video", env=env)
    assert (denied.returncode, out(denied)) == (1, [])
    assert (
        err(denied) == "Failed to dispatch job: Unexpected response code: 403 (Permission denied)\n"
    )

    bogus = run("clijob-video", env={**env, "NOMAD_TOKEN": "00000000-0000-0000-0000-000000000000"})
    assert "403 (Permission denied)" in err(bogus)

    management = acl_sim.headers["X-Nomad-Token"]
    allowed = run("-token", management, "clijob-video", env={**env, "NOMAD_TOKEN": "bogus"})
    assert (allowed.returncode, err(allowed)) == (0, "")
    check_success(out(allowed), "clijob-video")
    assert management not in allowed.stdout.decode() + err(allowed)


def test_acl_dispatch_without_read_fails_in_the_monitor(acl_sim: Sim) -> None:
    token = acl_sim.call(
        "PUT", "/v1/acl/token", {"Name": "d", "Type": "client", "Policies": ["dispatch-only"]}
    )["SecretID"]
    result = run(
        "-verbose", "clijob-video", env={"NOMAD_ADDR": acl_sim.address, "NOMAD_TOKEN": token}
    )
    assert result.returncode == 1
    lines = out(result)
    eval_id = lines[1].removeprefix("Evaluation ID     = ")
    assert lines[2:] == [""]
    assert err(result) == f'==> No evaluation with id "{eval_id}" found\n'
    assert token not in result.stdout.decode() + err(result)
