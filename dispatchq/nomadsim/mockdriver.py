"""How a simulated client runs a task: the mock driver's config, interpolated.

drivers/mock/driver.go: `run_for`, `exit_code`, `exit_signal`, `exit_err_msg`,
`start_error`, `start_error_recoverable`, `start_block_for`, `kill_after`. The task
config is interpolated first with the task's environment (client/taskenv: `NOMAD_META_*`
from the job, group and task meta merged, `NOMAD_JOB_ID`, `NOMAD_ALLOC_ID`, ...); an
unknown `${...}` stays as written, as in Nomad.

A value of the wrong type (`exit_code = "abc"`) fails the task with `Failed Validation`
(Nomad fails decoding the config the same way; the text here is nomadsim's); a bad
duration is a start error of the driver (`run_for X not a valid duration: ...`), as in
the mock driver. Differences: a mock_driver task without `run_for` runs for the
configured `--run-time` (Nomad's would exit at once), and tasks of other drivers run
for `--run-time` (batch) or until stopped (service/system) and exit 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dispatchq.nomadsim.jsonshape import parse_go_duration
from dispatchq.nomadsim.model import Alloc, JsonObj

_VAR = re.compile(r"\$\{([^}]+)\}")
#: nomadsim-only meta keys (runner.fail_early_attempts): the first N allocations of a
#: reschedule chain fail with this exit code. Read by nomadsim alone, never by dispatchq.
FAIL_ATTEMPTS = "nomadsim_fail_attempts"
FAIL_EXIT_CODE = "nomadsim_fail_exit_code"
DEFAULT_KILL_TIMEOUT = 5_000_000_000
MAX_KILL_TIMEOUT = 30_000_000_000


@dataclass(slots=True)
class TaskPlan:
    """What the simulated driver does with one task; durations in ns (None: forever)."""

    run_for: int | None
    exit_code: int = 0
    exit_signal: int = 0
    exit_err_msg: str = ""
    start_error: str = ""
    start_error_recoverable: bool = False
    start_block_for: int = 0
    kill_after: int = 0
    kill_timeout: int = DEFAULT_KILL_TIMEOUT
    #: A config that could not be decoded (Failed Validation).
    invalid: str = ""


def task_env(alloc: Alloc, group: JsonObj, task: JsonObj, datacenter: str) -> dict[str, str]:
    """The task's environment (client/taskenv) as far as interpolation needs it."""
    job = alloc.job
    alloc_id, alloc_name = alloc.id, alloc.name
    meta: dict[str, str] = {}
    for source in (job.get("Meta"), group.get("Meta"), task.get("Meta")):
        if source:
            meta.update(source)
    index = alloc_name.rpartition("[")[2].rstrip("]")
    env = {
        "NOMAD_JOB_ID": job["ID"],
        "NOMAD_JOB_NAME": job["Name"],
        "NOMAD_JOB_PARENT_ID": job.get("ParentID") or "",
        "NOMAD_NAMESPACE": job["Namespace"],
        "NOMAD_REGION": job.get("Region") or "global",
        "NOMAD_DC": datacenter,
        "NOMAD_GROUP_NAME": group["Name"],
        "NOMAD_TASK_NAME": task["Name"],
        "NOMAD_ALLOC_ID": alloc_id,
        "NOMAD_SHORT_ALLOC_ID": alloc_id[:8],
        "NOMAD_ALLOC_NAME": alloc_name,
        "NOMAD_ALLOC_INDEX": index,
        "node.unique.name": alloc.node_name,
        "node.unique.id": alloc.node_id,
        "node.datacenter": datacenter,
        "attr.kernel.name": "linux",
    }
    for key, value in meta.items():
        env[f"NOMAD_META_{key}"] = value
        env[f"NOMAD_META_{key.upper()}"] = value
    for key, value in (task.get("Env") or {}).items():
        env[key] = interpolate(value, env)
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Strings with `${name}` replaced from env, recursively in lists and maps."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        return _VAR.sub(lambda m: env.get(m.group(1).strip(), m.group(0)), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def _number(config: JsonObj, key: str) -> int:
    value = config.get(key)
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ValueError(key)
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(key) from None
    if number != int(number):
        raise ValueError(key)
    return int(number)


def _bool(config: JsonObj, key: str) -> bool:
    value = config.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value in ("true", "false", "1", "0"):
        return value in ("true", "1")
    raise ValueError(key)


def _string(config: JsonObj, key: str) -> str:
    value = config.get(key)
    if value is None:
        return ""
    if isinstance(value, bool | dict | list):
        raise ValueError(key)
    return str(value)


def _duration(config: JsonObj, key: str) -> int:
    """The mock driver's parseDuration: empty is 0; raises the driver's start error."""
    text = _string(config, key)
    if not text:
        return 0
    try:
        return parse_go_duration(text)
    except ValueError as exc:
        raise StartError(f"{key} {text} not a valid duration: {exc}") from None


class StartError(Exception):
    pass


def plan_task(task: JsonObj, env: dict[str, str], *, batch: bool) -> TaskPlan:
    """The TaskPlan of one task (StartError: the driver fails to start it)."""
    kill_timeout = min(int(task.get("KillTimeout") or DEFAULT_KILL_TIMEOUT), MAX_KILL_TIMEOUT)
    if task["Driver"] != "mock_driver":
        return TaskPlan(run_for=-1 if batch else None, kill_timeout=kill_timeout)
    raw = task.get("Config") or {}
    config = interpolate(raw, env) if isinstance(raw, dict) else {}
    plan = TaskPlan(run_for=-1 if batch else None, kill_timeout=kill_timeout)
    try:
        plan.exit_code = _number(config, "exit_code")
        plan.exit_signal = _number(config, "exit_signal")
        plan.exit_err_msg = _string(config, "exit_err_msg")
        plan.start_error = _string(config, "start_error")
        plan.start_error_recoverable = _bool(config, "start_error_recoverable")
        for key in ("run_for", "start_block_for", "kill_after"):
            _string(config, key)
    except ValueError as exc:
        key = str(exc)
        plan.invalid = (f"failed to parse config: Incorrect attribute value type: "
                        f'Inappropriate value for attribute "{key}": {config.get(key)!r}')
        return plan
    plan.start_block_for = _duration(config, "start_block_for")
    if config.get("run_for") not in (None, ""):
        plan.run_for = _duration(config, "run_for")
    plan.kill_after = _duration(config, "kill_after")
    return plan


#: Task (by id, with the object to check it is the same) -> the `${...}` names its
#: config uses; (task id, those names' values) -> its plan or start error. Children
#: share their parent's task objects, so a dispatch whose meta repeats an earlier one
#: skips interpolation and parsing.
_NAMES: dict[int, tuple[JsonObj, tuple[str, ...]]] = {}
_PLANS: dict[tuple[int, bool, tuple[str | None, ...]], tuple[JsonObj, TaskPlan | str]] = {}


def _names(task: JsonObj) -> tuple[str, ...]:
    cached = _NAMES.get(id(task))
    if cached is not None and cached[0] is task:
        return cached[1]
    if len(_NAMES) > 10_000:
        _NAMES.clear()
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str):
            for match in _VAR.finditer(value):
                found[match.group(1).strip()] = None
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    if task["Driver"] == "mock_driver":
        walk(task.get("Config"))
        walk(task.get("Env"))
    names = tuple(found)
    _NAMES[id(task)] = (task, names)
    return names


def _meta_values(job: JsonObj, group: JsonObj, task: JsonObj,
                 names: tuple[str, ...]) -> tuple[str | None, ...]:
    """What `${NOMAD_META_<key>}` names are in the task's env (task meta over group
    meta over job meta; `<KEY>` upper-cased works too), without building the env."""
    out: list[str | None] = []
    for name in names:
        key = name[len("NOMAD_META_"):]
        value = None
        for source in (task.get("Meta"), group.get("Meta"), job.get("Meta")):
            if source:
                value = source.get(key)
                if value is None:
                    value = next((v for k, v in source.items() if k.upper() == key), None)
                if value is not None:
                    break
        out.append(value)
    return tuple(out)


def cached_plan(alloc: Alloc, group: JsonObj, task: JsonObj, datacenter: str, *,
                batch: bool) -> TaskPlan | str:
    """plan_task for this alloc's task (a str: the driver's start error), cached by the
    values of the variables the task's config uses."""
    names = _names(task)
    env: dict[str, str] | None = None
    values: tuple[str | None, ...] = ()
    if names:
        if all(n.startswith("NOMAD_META_") for n in names):
            values = _meta_values(alloc.job, group, task, names)
        else:
            env = task_env(alloc, group, task, datacenter)
            values = tuple(env.get(n) for n in names)
    key = (id(task), batch, values)
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is task:
        return cached[1]
    if env is None:
        env = task_env(alloc, group, task, datacenter) if names else {}
    if len(_PLANS) > 10_000:
        _PLANS.clear()
    plan: TaskPlan | str
    try:
        plan = plan_task(task, env, batch=batch)
    except StartError as exc:
        plan = str(exc)
    _PLANS[key] = (task, plan)
    return plan
