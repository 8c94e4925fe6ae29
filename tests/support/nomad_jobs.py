"""Parameterized job specs for tests, and registering them on a Nomad-compatible server."""

from __future__ import annotations

import time
from typing import Any

import redis
import requests

from dispatchq.store import keys


def parameterized_job(
    job_id: str,
    *,
    payload: str = "optional",
    meta_required: list[str] | None = None,
    meta_optional: list[str] | None = None,
    cpu: int = 100,
    memory_mb: int = 64,
    count: int = 1,
    namespace: str = "default",
) -> dict[str, Any]:
    """A batch job with one task group, as `nomad job run -output` would render it."""
    return {
        "ID": job_id,
        "Name": job_id,
        "Namespace": namespace,
        "Type": "batch",
        "Datacenters": ["dc1"],
        "ParameterizedJob": {
            "Payload": payload,
            "MetaRequired": meta_required or [],
            "MetaOptional": meta_optional or [],
        },
        "TaskGroups": [
            {
                "Name": "encode",
                "Count": count,
                "Tasks": [
                    {
                        "Name": "ffmpeg",
                        "Driver": "exec",
                        "Config": {"command": "/bin/true"},
                        "Resources": {"CPU": cpu, "MemoryMB": memory_mb},
                        "DispatchPayload": {"File": "input.json"},
                    }
                ],
            }
        ],
    }


def register(address: str, job: dict[str, Any], token: str | None = None) -> None:
    headers = {"X-Nomad-Token": token} if token else {}
    response = requests.put(f"{address}/v1/jobs", json={"Job": job}, headers=headers, timeout=10)
    response.raise_for_status()


def sim_dispatches(address: str) -> list[dict[str, Any]]:
    """nomadsim's record of every dispatch it accepted."""
    response = requests.get(f"{address}/_sim/dispatches", timeout=10)
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["dispatches"]
    return data


def add_fault(address: str, rule: dict[str, Any]) -> None:
    requests.post(f"{address}/_sim/faults", json=rule, timeout=10).raise_for_status()


def clear_faults(address: str) -> None:
    requests.delete(f"{address}/_sim/faults", timeout=10).raise_for_status()


def set_scheduler(address: str, knobs: dict[str, Any]) -> None:
    """Change nomadsim's scheduler knobs at run time (e.g. `schedule_delay_ms`)."""
    requests.put(f"{address}/_sim/scheduler", json=knobs, timeout=10).raise_for_status()


FAST_SIM = ["--time-scale", "0.001", "--start-time", "5ms", "--nodes", "2",
            "--node-cpu", "200000", "--node-memory", "200000"]  # fmt: skip
"""nomadsim's flags for following: tasks run at a thousandth of their time, on two large
nodes."""

SIM_FAIL = ("nomadsim_fail_attempts", "nomadsim_fail_exit_code")


def mock_encode_job(job_id: str, **group: Any) -> dict[str, Any]:
    """A parameterized mock_driver job whose dispatch meta picks how each child ends:
    `exit_code`, `run_for` (scaled by nomadsim's --time-scale) and `start_error`; Nomad's
    batch restart and reschedule defaults (3 restarts, 1 reschedule). The nomadsim-only
    `nomadsim_fail_attempts` (and `nomadsim_fail_exit_code`) make the first allocations of
    a reschedule chain fail (dispatchq/nomadsim/README.md): a failure, then a successful
    reschedule."""
    job = parameterized_job(
        job_id,
        meta_optional=["exit_code", "run_for", "start_error", *SIM_FAIL],
    )
    job["Meta"] = {"exit_code": "0", "run_for": "20s", "start_error": ""}
    task = job["TaskGroups"][0]["Tasks"][0]
    task.update(Driver="mock_driver", Config={
        "exit_code": "${NOMAD_META_exit_code}",
        "run_for": "${NOMAD_META_run_for}",
        "start_error": "${NOMAD_META_start_error}",
    })  # fmt: skip
    job["TaskGroups"][0].update(group)
    return job


FAIL_FIRST = {"nomadsim_fail_attempts": "1", "nomadsim_fail_exit_code": "7"}
"""nomadsim-only meta (dispatchq/nomadsim/README.md): the chain's first allocation fails with exit
code 7 (after its 3 restarts), the replacement runs the child's config."""


def record_in(client: redis.Redis, rid: str, states: set[bytes]) -> dict[bytes, bytes]:
    """The request's record once its state is one of `states` (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record: dict[bytes, bytes] = client.hgetall(keys.request(rid))  # type: ignore[assignment]
        if record.get(b"state") in states:
            return record
        time.sleep(0.02)
    raise AssertionError(f"{rid} never reached {states}")


def child_running(client: redis.Redis, sim: str, rid: str) -> dict[str, Any]:
    """The running allocation (a stub) of the child a followed request dispatched."""
    child = record_in(client, rid, {b"scheduled", b"running"})[b"dispatched_job_id"].decode()
    return running_alloc(sim, child)


def running_alloc(sim: str, child: str) -> dict[str, Any]:
    """A running allocation (a stub) of the child job, once there is one (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for alloc in requests.get(f"{sim}/v1/job/{child}/allocations", timeout=5).json():
            if alloc["ClientStatus"] == "running":
                return dict(alloc)
        time.sleep(0.02)
    raise AssertionError(f"{child} never ran")
