"""Tasks run like a Nomad client runs them: mock_driver config, TaskStates and events,
the restart tracker, sibling failures (with `--time-scale 0.001`: 1000s of a job spec
is waited for as 1 s)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api, parameterized, unique

FAST = ["--time-scale", "0.001", "--start-time", "5ms", "--run-time", "20ms"]
MS = 1_000_000


@pytest.fixture(scope="module")
def fast() -> Iterator[Api]:
    with NomadSimProcess(args=FAST) as sim:
        client = Api(sim.address)
        yield client
        client.close()


def mock_job(job_id: str, tasks: dict[str, dict[str, Any]], *, restart: dict[str, Any] | None,
             reschedule: dict[str, Any] | None = None, **group: Any) -> dict[str, Any]:
    """A parameterized batch job whose group runs mock_driver tasks with these configs."""
    job = parameterized(job_id, optional=["exit_code", "run_for", "signal"])
    task_list = [{"Name": name, "Driver": "mock_driver", "Config": config}
                 for name, config in tasks.items()]
    job["TaskGroups"][0].update(Tasks=task_list, **group)
    if restart is not None:
        job["TaskGroups"][0]["RestartPolicy"] = restart
    job["TaskGroups"][0]["ReschedulePolicy"] = reschedule or {"Attempts": 0}
    return job


def child_path(child: str) -> str:
    return f"/v1/job/{quote(child, safe='')}"


def final_alloc(api: Api, child: str) -> Any:
    api.wait_for(lambda: api.job(child)["Status"] == "dead", f"{child} to be dead")
    allocs = api.ok("GET", f"{child_path(child)}/allocations")
    latest = next(a for a in allocs if not a["NextAllocation"])
    return api.ok("GET", f"/v1/allocation/{latest['ID']}")


def types(state: dict[str, Any]) -> list[str]:
    return [e["Type"] for e in state["Events"]]


def test_meta_picks_exit_code_and_run_time(fast: Api) -> None:
    """drivers/mock/driver.go (run_for, exit_code) with the task config interpolated by
    client/taskenv (NOMAD_META_<key>, dispatch meta merged over the parent's)."""
    job_id = unique("meta")
    api = fast
    job = mock_job(job_id, {"t": {"run_for": "${NOMAD_META_run_for}",
                                  "exit_code": "${NOMAD_META_exit_code}"}},
                   restart={"Attempts": 0})
    api.register({**job, "Meta": {"exit_code": "0"}})
    ok = api.dispatch(job_id, {"Meta": {"run_for": "150s"}})["DispatchedJobID"]
    bad = api.dispatch(job_id, {"Meta": {"run_for": "10ms", "exit_code": "3"}})
    alloc = final_alloc(api, ok)
    state = alloc["TaskStates"]["t"]
    assert (alloc["ClientStatus"], alloc["ClientDescription"]) == (
        "complete", "All tasks have completed")
    assert types(state) == ["Received", "Task Setup", "Started", "Terminated"]
    assert (state["State"], state["Failed"], state["Restarts"]) == ("dead", False, 0)
    terminated = state["Events"][-1]
    assert terminated["Details"] == {"exit_code": "0", "signal": "0", "oom_killed": "false"}
    assert terminated["DisplayMessage"] == "Exit Code: 0"
    assert state["Events"][1]["DisplayMessage"] == "Building Task Directory"
    assert state["Events"][0]["DisplayMessage"] == "Task received by client"
    ran = terminated["Time"] - state["Events"][2]["Time"]
    assert ran >= 140 * MS  # 150s scaled by 0.001
    failed = final_alloc(api, bad["DispatchedJobID"])
    state = failed["TaskStates"]["t"]
    assert (failed["ClientStatus"], failed["ClientDescription"]) == ("failed", "Failed tasks")
    assert types(state) == ["Received", "Task Setup", "Started", "Terminated", "Not Restarting"]
    assert state["Events"][3]["Details"]["exit_code"] == "3"
    assert state["Events"][3]["ExitCode"] == 3
    not_restarting = state["Events"][4]
    assert not_restarting["Details"] == {"restart_reason": "Policy allows no restarts",
                                         "fails_task": "true"}
    assert not_restarting["FailsTask"] is True
    assert (state["State"], state["Failed"]) == ("dead", True)
    assert state["StartedAt"] <= state["FinishedAt"]
    summary = api.ok("GET", f"{child_path(bad['DispatchedJobID'])}/summary")
    assert summary["Summary"]["g"]["Failed"] == 1


def test_exit_signal_and_message(fast: Api) -> None:
    """drivers/mock/command.go runCommand: ExitResult{ExitCode, Signal, Err}; an error
    message alone makes the exit unsuccessful (ExitResult.Successful)."""
    job_id = unique("signal")
    fast.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_signal": 9,
                                          "exit_err_msg": "oom \"x\""}},
                           restart={"Attempts": 0}))
    alloc = final_alloc(fast, fast.dispatch(job_id)["DispatchedJobID"])
    terminated = alloc["TaskStates"]["t"]["Events"][3]
    assert terminated["Details"] == {"exit_code": "0", "signal": "9", "oom_killed": "false",
                                     "exit_message": 'oom "x"'}
    assert terminated["DisplayMessage"] == 'Exit Code: 0, Signal: 9, Exit Message: "oom \\"x\\""'
    assert terminated["Message"] == 'oom "x"'
    assert alloc["ClientStatus"] == "failed"


def test_restarts_within_policy_then_fail(fast: Api) -> None:
    """client/allocrunner/taskrunner/restarts/restarts.go with the batch default policy
    (3 attempts in 24h, 15s delay + up to 25 % jitter, mode fail)."""
    job_id = unique("restarts")
    fast.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 2}}, restart=None))
    assert fast.job(job_id)["TaskGroups"][0]["RestartPolicy"] == {
        "Attempts": 3, "Interval": 86_400_000_000_000, "Delay": 15_000_000_000,
        "Mode": "fail", "RenderTemplates": False}
    alloc = final_alloc(fast, fast.dispatch(job_id)["DispatchedJobID"])
    state = alloc["TaskStates"]["t"]
    assert types(state) == ["Received", "Task Setup"] + [
        "Started", "Terminated", "Restarting"] * 3 + ["Started", "Terminated", "Not Restarting"]
    assert state["Restarts"] == 3 and state["Failed"] is True
    assert state["LastRestart"] != "0001-01-01T00:00:00Z"
    restarts = [e for e in state["Events"] if e["Type"] == "Restarting"]
    for event in restarts:
        assert event["Details"]["restart_reason"] == "Restart within policy"
        delay = int(event["Details"]["start_delay"])
        assert 15 * MS <= delay <= 15 * MS * 1.25
        assert event["StartDelay"] == delay
        assert event["DisplayMessage"].startswith("Task restarting in 1")
    last = state["Events"][-1]
    assert last["Details"]["restart_reason"] == (
        'Exceeded allowed attempts 3 in interval 24h0m0s and mode is "fail"')


def test_restart_mode_delay_and_stop_while_waiting(fast: Api) -> None:
    """restarts.go mode "delay": over the attempts, wait for the rest of the interval;
    a stop during the wait ends the task (task_runner.go: killed between restarts)."""
    job_id = unique("delay")
    fast.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 1}},
                           restart={"Attempts": 1, "Interval": 5_000_000_000_000,
                                    "Delay": 1_000_000_000, "Mode": "delay"}))
    child = fast.dispatch(job_id)["DispatchedJobID"]

    def delayed() -> Any:
        for alloc in fast.ok("GET", f"{child_path(child)}/allocations"):
            events = (alloc["TaskStates"] or {}).get("t", {}).get("Events", [])
            reasons = [e["Details"].get("restart_reason") for e in events]
            if "Exceeded allowed attempts, applying a delay" in reasons:
                return alloc
        return None

    alloc = fast.wait_for(delayed, "a delayed restart")
    event = alloc["TaskStates"]["t"]["Events"][-1]
    assert event["Type"] == "Restarting"
    assert 0 < int(event["Details"]["start_delay"]) <= 5_000 * MS
    assert event["DisplayMessage"].startswith(
        "Exceeded allowed attempts, applying a delay - Task restarting in ")
    assert fast.job(child)["Status"] == "running"
    fast.ok("DELETE", child_path(child))
    # DesiredStatus stop makes the alloc terminal (the child dead) before its client
    # has killed the task
    final_alloc(fast, child)
    stopped = fast.wait_for(
        lambda: (a := fast.ok("GET", f"/v1/allocation/{alloc['ID']}"))["ClientStatus"]
        == "complete" and a, "the client to stop the alloc")
    state = stopped["TaskStates"]["t"]
    assert types(state)[-2:] == ["Restarting", "Killing"]
    assert (stopped["DesiredStatus"], stopped["ClientStatus"]) == ("stop", "complete")
    assert (state["State"], state["Failed"]) == ("dead", False)


def test_start_errors(fast: Api) -> None:
    """drivers/mock/driver.go StartTask (start_error, start_error_recoverable,
    start_block_for); restarts.go: an unrecoverable start error is not retried."""
    job_id = unique("starterr")
    fast.register(mock_job(job_id, {"t": {"start_error": "no ${NOMAD_META_signal}",
                                          "start_error_recoverable": "${NOMAD_META_run_for}",
                                          "start_block_for": "20s"}},
                           restart={"Attempts": 1, "Delay": 1_000_000_000}))
    hard = fast.dispatch(job_id, {"Meta": {"signal": "gpu", "run_for": "false"}})
    soft = fast.dispatch(job_id, {"Meta": {"signal": "disk", "run_for": "true"}})
    state = final_alloc(fast, hard["DispatchedJobID"])["TaskStates"]["t"]
    assert types(state) == ["Received", "Task Setup", "Driver Failure", "Not Restarting"]
    failure = state["Events"][2]
    assert failure["Details"] == {"driver_error": "no gpu"}
    assert failure["DisplayMessage"] == "no gpu"
    assert failure["Time"] - state["Events"][1]["Time"] >= 19 * MS  # start_block_for
    assert state["Events"][3]["Details"]["restart_reason"] == "Error was unrecoverable"
    assert state["StartedAt"] == "0001-01-01T00:00:00Z"
    state = final_alloc(fast, soft["DispatchedJobID"])["TaskStates"]["t"]
    assert types(state) == ["Received", "Task Setup", "Driver Failure", "Restarting",
                            "Driver Failure", "Not Restarting"]
    assert state["Events"][-1]["Details"]["restart_reason"].startswith(
        "Exceeded allowed attempts 1 in interval 24h0m0s")


def test_bad_config_values(fast: Api) -> None:
    """A value the driver cannot decode fails validation (task_runner.go runDriver:
    `Failed Validation`); a bad duration is the mock driver's start error."""
    job_id = unique("badcfg")
    fast.register(mock_job(job_id, {"t": {"exit_code": "${NOMAD_META_exit_code}",
                                          "run_for": "${NOMAD_META_run_for}"}},
                           restart={"Attempts": 2}))
    invalid = fast.dispatch(job_id, {"Meta": {"exit_code": "abc", "run_for": "1ms"}})
    state = final_alloc(fast, invalid["DispatchedJobID"])["TaskStates"]["t"]
    assert types(state) == ["Received", "Task Setup", "Failed Validation", "Not Restarting"]
    assert "exit_code" in state["Events"][2]["Details"]["validation_error"]
    missing = fast.dispatch(job_id, {"Meta": {"exit_code": "0"}})
    state = final_alloc(fast, missing["DispatchedJobID"])["TaskStates"]["t"]
    assert types(state) == ["Received", "Task Setup", "Driver Failure", "Not Restarting"]
    assert state["Events"][2]["Details"]["driver_error"] == (
        'run_for ${NOMAD_META_run_for} not a valid duration: '
        'time: invalid duration "${NOMAD_META_run_for}"')


def test_failed_task_fails_its_siblings(fast: Api) -> None:
    """client/allocrunner/alloc_runner.go handleTaskStateUpdates: a failed task kills its
    live siblings (`Sibling Task Failed`, then `Killing`, `Terminated`, `Killed`);
    the alloc is failed, the killed sibling is not."""
    job_id = unique("siblings")
    fast.register(mock_job(job_id, {"main": {"run_for": "1000s", "kill_after": "100s"},
                                    "side": {"run_for": "30s", "exit_code": 1},
                                    "done": {"run_for": "1ms"}},
                           restart={"Attempts": 0}))
    first = final_alloc(fast, fast.dispatch(job_id)["DispatchedJobID"])
    # the alloc is failed (terminal) at once; its killed sibling reports later
    assert first["ClientStatus"] == "failed"
    alloc = fast.wait_for(
        lambda: (a := fast.ok("GET", f"/v1/allocation/{first['ID']}"))["TaskStates"]["main"][
            "State"] == "dead" and a, "the sibling to be killed")
    assert alloc["ClientStatus"] == "failed"
    main, side, done = (alloc["TaskStates"][n] for n in ("main", "side", "done"))
    assert (side["Failed"], main["Failed"], done["Failed"]) == (True, False, False)
    assert types(done) == ["Received", "Task Setup", "Started", "Terminated"]
    assert types(main) == ["Received", "Task Setup", "Started", "Sibling Task Failed",
                           "Killing", "Terminated", "Killed"]
    sibling, killing, _, killed = main["Events"][3:]
    assert sibling["Details"] == {"failed_sibling": "side"}
    assert sibling["DisplayMessage"] == "Task's sibling \"side\" failed"
    assert killing["Details"] == {"kill_timeout": "5s"}
    assert killing["DisplayMessage"] == "Sent interrupt. Waiting 5s before force killing"
    assert killed["DisplayMessage"] == "Task successfully killed"
    assert killed["Time"] - killing["Time"] >= 90 * MS  # kill_after 100s scaled
    assert main["State"] == "dead"


def test_other_drivers_run_the_run_time(fast: Api) -> None:
    """Tasks of other drivers (exec, docker...) run `--run-time` and exit 0."""
    job_id = unique("exec")
    job = mock_job(job_id, {"t": {}}, restart=None)
    job["TaskGroups"][0]["Tasks"][0].update(Driver="exec", Config={"command": "false"})
    fast.register(job)
    alloc = final_alloc(fast, fast.dispatch(job_id)["DispatchedJobID"])
    state = alloc["TaskStates"]["t"]
    assert alloc["ClientStatus"] == "complete"
    assert state["Events"][-1]["Details"]["exit_code"] == "0"
    assert state["Events"][-1]["Time"] - state["Events"][2]["Time"] >= 15 * MS
