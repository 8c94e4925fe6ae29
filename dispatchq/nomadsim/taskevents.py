"""Task events and task states as Nomad renders them (nomad/structs/structs.go).

`TaskEvent` JSON carries `Details` (the current fields) and the deprecated typed
duplicates (`ExitCode`, `Signal`, `FailsTask`, ...), filled the way the setters
(`SetExitCode`, `SetRestartReason`, ...) fill them; `DisplayMessage` is what
`PopulateEventDisplayMessage` writes. Events are built once and never changed.
"""

from __future__ import annotations

from dispatchq.nomadsim.jsonshape import go_duration, go_quote, rfc3339
from dispatchq.nomadsim.model import JsonObj
from dispatchq.nomadsim.policies import REASON_WITHIN_POLICY

RECEIVED = "Received"
SETUP = "Task Setup"
STARTED = "Started"
TERMINATED = "Terminated"
RESTARTING = "Restarting"
NOT_RESTARTING = "Not Restarting"
KILLING = "Killing"
KILLED = "Killed"
DRIVER_FAILURE = "Driver Failure"
SIBLING_FAILED = "Sibling Task Failed"
FAILED_VALIDATION = "Failed Validation"
BUILDING_TASK_DIR = "Building Task Directory"
MAX_RUN_DURATION = "allocation exceeded max_run_duration"

_FIXED = {
    RECEIVED: "Task received by client",
    STARTED: "Task started by client",
    KILLED: "Task successfully killed",
}


_ZERO: JsonObj = {
    "Type": "",
    "Time": 0,
    "Message": "",
    "DisplayMessage": "",
    "Details": {},
    "FailsTask": False,
    "RestartReason": "",
    "SetupError": "",
    "DriverError": "",
    "ExitCode": 0,
    "Signal": 0,
    "KillTimeout": 0,
    "KillError": "",
    "KillReason": "",
    "StartDelay": 0,
    "DownloadError": "",
    "ValidationError": "",
    "DiskLimit": 0,
    "FailedSibling": "",
    "VaultError": "",
    "TaskSignalReason": "",
    "TaskSignal": "",
    "DriverMessage": "",
    "GenericSource": "",
}
#: Events without fields of their own, made by copying (their Details are shared: no
#: event is changed once made).
_PLAIN: dict[str, JsonObj] = {
    kind: {**_ZERO, "Type": kind, "DisplayMessage": text} for kind, text in _FIXED.items()
}


def task_event(kind: str, time_ns: int, **fields: object) -> JsonObj:
    """A TaskEvent with its zero values, `fields` set, and the display message."""
    if not fields:
        plain = _PLAIN.get(kind)
        if plain is not None:
            return {**plain, "Time": time_ns}
    event: JsonObj = {**_ZERO, "Type": kind, "Time": time_ns, "Details": {}}
    event.update(fields)
    if not event["DisplayMessage"]:
        event["DisplayMessage"] = _display(event)
    return event


def _display(e: JsonObj) -> str:
    kind = e["Type"]
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    if kind == SETUP:
        return str(e["Message"])
    if kind == TERMINATED:
        parts = [f"Exit Code: {e['ExitCode']}"]
        if e["Signal"]:
            parts.append(f"Signal: {e['Signal']}")
        if e["Message"]:
            parts.append(f"Exit Message: {go_quote(e['Message'])}")
        return ", ".join(parts)
    if kind == RESTARTING:
        text = f"Task restarting in {go_duration(e['StartDelay'])}"
        reason = e["RestartReason"]
        return f"{reason} - {text}" if reason and reason != REASON_WITHIN_POLICY else text
    if kind == NOT_RESTARTING:
        return str(e["RestartReason"] or "Task exceeded restart policy")
    if kind == KILLING:
        if e["KillReason"]:
            return str(e["KillReason"])
        if e["KillTimeout"]:
            return f"Sent interrupt. Waiting {go_duration(e['KillTimeout'])} before force killing"
        return "Sent interrupt"
    if kind == DRIVER_FAILURE:
        return str(e["DriverError"] or "Failed to start task")
    if kind == FAILED_VALIDATION:
        return str(e["ValidationError"] or "Validation of task failed")
    if kind == SIBLING_FAILED:
        sibling = e["FailedSibling"]
        return f"Task's sibling {go_quote(sibling)} failed" if sibling else "Task's sibling failed"
    return str(e["Message"])


# -- the setters' combinations used on this path --------------------------------------


_SETUP = task_event(SETUP, 0, Message=BUILDING_TASK_DIR, Details={"message": BUILDING_TASK_DIR})


def setup(time_ns: int) -> JsonObj:
    return {**_SETUP, "Time": time_ns}


def terminated(
    time_ns: int, exit_code: int, signal: int, message: str, oom_killed: bool = False
) -> JsonObj:
    details = {"exit_code": str(exit_code), "signal": str(signal),
               "oom_killed": "true" if oom_killed else "false"}  # fmt: skip
    if message:
        details["exit_message"] = message
    return task_event(TERMINATED, time_ns, ExitCode=exit_code, Signal=signal, Message=message,
                      Details=details)


def restarting(time_ns: int, delay_ns: int, reason: str) -> JsonObj:
    return task_event(RESTARTING, time_ns, StartDelay=delay_ns, RestartReason=reason,
                      Details={"start_delay": str(delay_ns), "restart_reason": reason})


def not_restarting(time_ns: int, reason: str) -> JsonObj:
    return task_event(NOT_RESTARTING, time_ns, RestartReason=reason, FailsTask=True,
                      Details={"restart_reason": reason, "fails_task": "true"})


def driver_failure(time_ns: int, error: str) -> JsonObj:
    return task_event(DRIVER_FAILURE, time_ns, DriverError=error,
                      Details={"driver_error": error})


def failed_validation(time_ns: int, error: str) -> JsonObj:
    return task_event(FAILED_VALIDATION, time_ns, ValidationError=error,
                      Details={"validation_error": error})


def killing(time_ns: int, timeout_ns: int, display: str = "") -> JsonObj:
    return task_event(KILLING, time_ns, KillTimeout=timeout_ns, DisplayMessage=display,
                      Details={"kill_timeout": go_duration(timeout_ns)})


def sibling_failed(time_ns: int, sibling: str) -> JsonObj:
    return task_event(SIBLING_FAILED, time_ns, FailedSibling=sibling,
                      Details={"failed_sibling": sibling})


def task_state(state: str, failed: bool, restarts: int, *, last_restart: int, started: int,
               finished: int, events: list[JsonObj]) -> JsonObj:
    """A TaskState (events: a fresh list the state owns)."""
    return {
        "State": state,
        "Failed": failed,
        "Restarts": restarts,
        "LastRestart": rfc3339(last_restart),
        "StartedAt": rfc3339(started),
        "FinishedAt": rfc3339(finished),
        "Events": events,
        "TaskHandle": None,
    }
