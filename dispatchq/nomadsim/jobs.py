"""Job registration: the api.Job wire type, canonicalisation, validation; stubs."""

from __future__ import annotations

from typing import Any

from dispatchq.nomadsim import godecode as g
from dispatchq.nomadsim.jsonshape import go_list, go_quote, multierror, now_ns
from dispatchq.nomadsim.model import JsonObj
from dispatchq.nomadsim.policies import canonicalize_group

CONSTRAINT = g.struct("api.Constraint", True, LTarget=g.STRING, RTarget=g.STRING, Operand=g.STRING)
CONSTRAINTS = g.slice_of(CONSTRAINT)
RESOURCES = g.struct(
    "api.Resources", True, CPU=g.INT, Cores=g.INT, MemoryMB=g.INT, MemoryMaxMB=g.INT, DiskMB=g.INT
)
TASK = g.struct(
    "api.Task",
    True,
    Name=g.STRING,
    Driver=g.STRING,
    User=g.STRING,
    Config=g.ANY,
    Constraints=CONSTRAINTS,
    Env=g.STRING_MAP,
    Resources=RESOURCES,
    Meta=g.STRING_MAP,
    DispatchPayload=g.struct("api.DispatchPayloadConfig", File=g.STRING),
    Leader=g.BOOL,
)
TASK_GROUP = g.struct(
    "api.TaskGroup",
    True,
    Name=g.STRING,
    Count=g.INT,
    Constraints=CONSTRAINTS,
    Tasks=g.slice_of(TASK),
    Meta=g.STRING_MAP,
)
PARAMETERIZED = g.struct(
    "api.ParameterizedJobConfig",
    Payload=g.STRING,
    MetaRequired=g.STRING_LIST,
    MetaOptional=g.STRING_LIST,
)
JOB = g.struct(
    "api.Job",
    True,
    Region=g.STRING,
    Namespace=g.STRING,
    ID=g.STRING,
    Name=g.STRING,
    Type=g.STRING,
    Priority=g.INT,
    AllAtOnce=g.BOOL,
    Datacenters=g.STRING_LIST,
    NodePool=g.STRING,
    Constraints=CONSTRAINTS,
    TaskGroups=g.slice_of(TASK_GROUP),
    Periodic=g.struct("api.PeriodicConfig", True, Enabled=g.BOOL, Spec=g.STRING),
    ParameterizedJob=PARAMETERIZED,
    Payload=g.BYTES,
    Meta=g.STRING_MAP,
    Stop=g.BOOL,
    ParentID=g.STRING,
    Dispatched=g.BOOL,
    DispatchIdempotencyToken=g.STRING,
    Version=g.UINT64,
)
REGISTER_REQUEST = g.struct(
    "api.JobRegisterRequest",
    Job=JOB,
    EnforceIndex=g.BOOL,
    JobModifyIndex=g.UINT64,
    PolicyOverride=g.BOOL,
    PreserveCounts=g.BOOL,
    EvalPriority=g.INT,
    Region=g.STRING,
    Namespace=g.STRING,
    SecretID=g.STRING,
)

JOB_TYPES = ("service", "batch", "system", "sysbatch")
PAYLOAD_MODES = ("optional", "required", "forbidden")
DEFAULT_CPU = 100
DEFAULT_MEMORY_MB = 300


class RegisterError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _task(raw: JsonObj) -> JsonObj:
    task = dict(raw)
    resources = dict(task.get("Resources") or {})
    resources.setdefault("Networks", None)
    resources.setdefault("Devices", None)
    for name, default in (
        ("CPU", DEFAULT_CPU),
        ("Cores", 0),
        ("MemoryMB", DEFAULT_MEMORY_MB),
        ("MemoryMaxMB", 0),
        ("DiskMB", 0),
    ):
        if resources.get(name) is None:
            resources[name] = default
    task["Resources"] = resources
    for name in ("Name", "Driver", "User"):
        task[name] = task.get(name) or ""
    for name in ("Config", "Constraints", "Env", "Meta", "DispatchPayload"):
        task.setdefault(name, None)
    task["Leader"] = bool(task.get("Leader"))
    return task


def _task_group(raw: JsonObj) -> JsonObj:
    group = dict(raw)
    group["Name"] = group.get("Name") or ""
    group["Count"] = 1 if group.get("Count") is None else group["Count"]
    group["Tasks"] = [_task(t) for t in group.get("Tasks") or ()]
    group.setdefault("Constraints", None)
    group.setdefault("Meta", None)
    return group


def canonicalize(raw: JsonObj, namespace: str, region: str) -> JsonObj:
    """api.Job.Canonicalize plus the conversion to structs.Job: defaults filled in."""
    job = dict(raw)
    job["ID"] = job.get("ID") or ""
    job["Name"] = job.get("Name") or job["ID"]
    job["Namespace"] = namespace
    job["Region"] = job.get("Region") or region
    job["Type"] = job.get("Type") or "service"
    job["Priority"] = 50 if job.get("Priority") is None else job["Priority"]
    job["AllAtOnce"] = bool(job.get("AllAtOnce"))
    job["Datacenters"] = job.get("Datacenters") or ["*"]
    job["NodePool"] = job.get("NodePool") or "default"
    job["TaskGroups"] = [_task_group(tg) for tg in job.get("TaskGroups") or ()]
    if job["Type"] in JOB_TYPES:
        for group in job["TaskGroups"]:
            canonicalize_group(job, group)
    for name in ("Constraints", "Affinities", "Spreads", "Update", "Multiregion", "Periodic",
                 "Reschedule", "Migrate", "Meta", "Payload"):
        job.setdefault(name, None)
    param = job.get("ParameterizedJob")
    if param is not None:
        job["ParameterizedJob"] = {
            "Payload": param.get("Payload") or "optional",
            "MetaRequired": param.get("MetaRequired"),
            "MetaOptional": param.get("MetaOptional"),
        }
    else:
        job["ParameterizedJob"] = None
    for name in ("ParentID", "DispatchIdempotencyToken", "ConsulToken", "ConsulNamespace",
                 "VaultToken", "VaultNamespace", "NomadTokenID", "Status", "StatusDescription"):
        job[name] = job.get(name) or ""
    job["Stop"] = bool(job.get("Stop"))
    job["Dispatched"] = bool(job.get("Dispatched"))
    job["Stable"] = False
    job["SubmitTime"] = now_ns()
    return job


def _group_errors(group: JsonObj) -> list[str]:
    errors = []
    if group["Count"] < 0:
        errors.append("Task group count can't be negative")
    if not group["Tasks"]:
        errors.append("Missing tasks for task group")
    seen: dict[str, int] = {}
    for index, task in enumerate(group["Tasks"]):
        task_errors = []
        if not task["Name"]:
            task_errors.append("Missing task name")
        if not task["Driver"]:
            task_errors.append("Missing task driver")
        if task["Name"] in seen:
            errors.append(
                f"Task {index + 1} redefines '{task['Name']}' from task {seen[task['Name']] + 1}"
            )
        seen.setdefault(task["Name"], index)
        if task_errors:
            errors.append(f"Task {task['Name']} validation failed: {multierror(task_errors)}")
    return errors


def validate(job: JsonObj) -> list[str]:
    """structs.Job.Validate (the parts nomadsim models) plus the admission hooks."""
    errors = []
    if not job["ID"]:
        errors.append("Missing job ID")
    elif " " in job["ID"]:
        errors.append("Job ID contains a space")
    elif "\x00" in job["ID"]:
        errors.append("Job ID contains a null character")
    if job["Type"] not in JOB_TYPES:
        errors.append(f"Invalid job type: {go_quote(job['Type'])}")
    if not 1 <= job["Priority"] <= 100:
        errors.append("Job priority must be between [1, 100]")
    if not job["TaskGroups"]:
        errors.append("Missing job task groups")
    seen: dict[str, int] = {}
    for index, group in enumerate(job["TaskGroups"]):
        if not group["Name"]:
            errors.append(f"Job task group {index + 1} missing name")
        elif group["Name"] in seen:
            errors.append(
                f"Job task group {index + 1} redefines '{group['Name']}' from group "
                f"{seen[group['Name']] + 1}"
            )
        seen.setdefault(group["Name"], index)
        group_errors = _group_errors(group)
        if group_errors:
            errors.append(
                f"Task group {group['Name']} validation failed: {multierror(group_errors)}"
            )
    param = job["ParameterizedJob"]
    if param is not None:
        if job["Type"] not in ("batch", "sysbatch"):
            errors.append('Parameterized job can only be used with "batch" or "sysbatch" scheduler')
        if param["Payload"] not in PAYLOAD_MODES:
            errors.append(f"Unknown payload requirement: {go_quote(param['Payload'])}")
        both = set(param["MetaRequired"] or ()) & set(param["MetaOptional"] or ())
        if both:
            errors.append(
                "Required and optional meta keys should be disjoint. Following keys exist in "
                f"both: {go_list(sorted(both))}"
            )
    if job.get("Payload"):
        errors.append("job can't be submitted with a payload, only dispatched")
    return errors


def check_request(args: JsonObj, path_id: str | None) -> JsonObj:
    """The HTTP-layer checks of jobUpdate (400s)."""
    raw = args.get("Job")
    if raw is None:
        raise RegisterError(400, "Job must be specified")
    if raw.get("ID") is None:
        raise RegisterError(400, "Job ID hasn't been provided")
    if path_id is not None and raw["ID"] != path_id:
        raise RegisterError(400, "Job ID does not match name")
    job: JsonObj = raw
    return job


def check_enforce_index(args: JsonObj, existing: JsonObj | None) -> None:
    if not args.get("EnforceIndex"):
        return
    wanted = args.get("JobModifyIndex") or 0
    prefix = f"Enforcing job modify index {wanted}"
    if wanted == 0 and existing is not None:
        raise RegisterError(500, f"{prefix}: job already exists")
    if wanted and existing is None:
        raise RegisterError(500, f"{prefix}: job does not exist")
    if existing is not None and wanted and existing["JobModifyIndex"] != wanted:
        raise RegisterError(
            500,
            f"{prefix}: job exists with conflicting job modify index: "
            f"{existing['JobModifyIndex']}",
        )


def is_parameterized(job: JsonObj) -> bool:
    return job.get("ParameterizedJob") is not None and not job.get("Dispatched")


def is_periodic(job: JsonObj) -> bool:
    periodic = job.get("Periodic")
    return isinstance(periodic, dict) and periodic.get("Enabled", True) is not False


def list_stub(job: JsonObj, summary: JsonObj | None) -> JsonObj:
    return {
        "ID": job["ID"],
        "ParentID": job["ParentID"],
        "Name": job["Name"],
        "Namespace": job["Namespace"],
        "Datacenters": job["Datacenters"],
        "NodePool": job["NodePool"],
        "Multiregion": job.get("Multiregion"),
        "Type": job["Type"],
        "Priority": job["Priority"],
        "Periodic": is_periodic(job),
        "ParameterizedJob": is_parameterized(job),
        "Stop": job["Stop"],
        "Status": job["Status"],
        "StatusDescription": job["StatusDescription"],
        "JobSummary": summary,
        "CreateIndex": job["CreateIndex"],
        "ModifyIndex": job["ModifyIndex"],
        "JobModifyIndex": job["JobModifyIndex"],
        "SubmitTime": job["SubmitTime"],
        "Meta": job.get("Meta"),
    }


def filter_fields(sample: dict[str, Any]) -> set[str]:
    """The selectors a jobs filter may start with: the Job's fields."""
    return set(sample) | set(JOB.fields) | {"Status", "CreateIndex", "ModifyIndex",
                                             "JobModifyIndex", "SubmitTime", "StatusDescription"}
