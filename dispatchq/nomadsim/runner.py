"""A simulated client's alloc runner and task runners (client/allocrunner).

Each task goes through the task runner's loop (taskrunner/task_runner.go): `Received`
and `Task Setup` once, then the driver (mockdriver.py) starts it (`Started`, or
`Driver Failure` / `Failed Validation`), it exits (`Terminated` with exit_code, signal,
exit_message), and the restart tracker (policies.py) decides: done, `Not Restarting`
(the task fails) or `Restarting` after a delay. A task that fails kills its live
siblings (`Sibling Task Failed`, then `Killing`; alloc_runner.go's
handleTaskStateUpdates). Killing a running task waits the mock driver's `kill_after`,
then `Terminated` and `Killed`; a task waiting to (re)start just ends. A group's
`max_run_duration` (max_run_duration_hook.go) counts from the alloc's CreateTime and
forces ClientStatus `complete` with `allocation exceeded max_run_duration`.

Runners change their own mutable state and tell `Clients` (clients.py) they are dirty;
the client writes the allocation (TaskStates, ClientStatus) once per loop iteration.
Timers come from one heap (`Clients.timers`), not one asyncio handle per task.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from dispatchq.nomadsim import taskevents as te
from dispatchq.nomadsim.jsonshape import now_ns, rfc3339
from dispatchq.nomadsim.mockdriver import FAIL_ATTEMPTS, FAIL_EXIT_CODE, TaskPlan, cached_plan
from dispatchq.nomadsim.model import Alloc, JsonObj
from dispatchq.nomadsim.policies import RestartTracker

if TYPE_CHECKING:
    import asyncio

    from dispatchq.nomadsim.config import SimConfig
    from dispatchq.nomadsim.timers import Timers


class Host(Protocol):
    """What a runner needs of the simulated clients that run it (`clients.Clients`)."""

    config: SimConfig
    loop: asyncio.AbstractEventLoop
    timers: Timers

    def mark(self, run: AllocRun) -> None: ...

    def write_now(self, run: AllocRun) -> None: ...

PENDING, RUNNING, DEAD = "pending", "running", "dead"


class TaskRun:
    __slots__ = (
        "events",
        "failed",
        "finished_at",
        "gen",
        "last_restart",
        "name",
        "plan",
        "restarts",
        "start_error",
        "started_at",
        "state",
        "tracker",
    )

    def __init__(self, name: str, plan: TaskPlan | None, start_error: str,
                 tracker: RestartTracker) -> None:
        self.name = name
        self.plan = plan
        self.start_error = start_error
        self.state = PENDING
        self.failed = False
        self.restarts = 0
        self.last_restart = 0
        self.started_at = 0
        self.finished_at = 0
        self.events: list[JsonObj] = []
        self.tracker = tracker
        #: Bumped to cancel the task's pending timer.
        self.gen = 0

    def render(self) -> JsonObj:
        return te.task_state(self.state, self.failed, self.restarts,
                             last_restart=self.last_restart, started=self.started_at,
                             finished=self.finished_at, events=list(self.events))


def _plans(alloc: Alloc, group: JsonObj, node_dc: str) -> list[tuple[JsonObj, TaskPlan | None,
                                                                       str]]:
    batch = alloc.job["Type"] in ("batch", "sysbatch")
    out: list[tuple[JsonObj, TaskPlan | None, str]] = []
    for task in group["Tasks"]:
        plan = cached_plan(alloc, group, task, node_dc, batch=batch)
        if isinstance(plan, str):
            out.append((task, None, plan))
        else:
            if task["Driver"] == "mock_driver" and not plan.invalid:
                plan = fail_early_attempts(alloc, group, task, plan)
            out.append((task, plan, ""))
    return out


def fail_early_attempts(alloc: Alloc, group: JsonObj, task: JsonObj, plan: TaskPlan) -> TaskPlan:
    """nomadsim's own test knob (no Nomad has it): with meta `nomadsim_fail_attempts` = N,
    the mock_driver tasks of the first N allocations of a reschedule chain (those whose
    RescheduleTracker holds fewer than N events) exit with `nomadsim_fail_exit_code`
    (default 1) instead of their config's exit code; the replacements after them run as
    configured. A real Nomad cannot express this (a task's environment says nothing of
    reschedule attempts), and ignores the meta keys."""
    sources = [m for m in (alloc.job.get("Meta"), group.get("Meta"), task.get("Meta")) if m]
    if not any(FAIL_ATTEMPTS in m for m in sources):
        return plan  # (the usual case: no dict built)
    meta: dict[str, str] = {}
    for source in sources:
        meta.update(source)
    raw_attempts, raw_code = meta[FAIL_ATTEMPTS], meta.get(FAIL_EXIT_CODE, "1")
    if not (raw_attempts.isascii() and raw_attempts.isdigit()
            and raw_code.isascii() and raw_code.isdigit() and 0 < int(raw_code) < 256):
        return replace(plan, invalid=(
            f"nomadsim: meta {FAIL_ATTEMPTS} must be a whole number and {FAIL_EXIT_CODE} "
            f"one from 1 to 255, not {raw_attempts!r} and {raw_code!r}"))
    attempts = len((alloc.reschedule_tracker or {}).get("Events") or ())
    if attempts >= int(raw_attempts):
        return plan
    return replace(plan, exit_code=int(raw_code))


class AllocRun:
    """One allocation on a simulated client."""

    __slots__ = ("alloc_id", "clients", "finished", "forced", "gen", "state_changed", "tasks")

    def __init__(self, clients: Host, alloc: Alloc, group: JsonObj, node_dc: str) -> None:
        self.clients = clients
        self.alloc_id = alloc.id
        now = clients.loop.time()
        scale = clients.config.time_scale
        batch = alloc.job["Type"] in ("batch", "sysbatch")
        policy = group["RestartPolicy"]
        self.tasks = [TaskRun(task["Name"], plan, error, RestartTracker(policy, batch, now, scale))
                      for task, plan, error in _plans(alloc, group, node_dc)]
        #: A client status set by the runner itself (max_run_duration), with its text.
        self.forced: tuple[str, str] | None = None
        self.finished = False
        self.gen = 0
        #: The loop time of a task's State change not written yet (0: none).
        self.state_changed = 0.0

    # -- timers ------------------------------------------------------------------------

    def _after(self, task: TaskRun, ns: int, fn: Any, scaled: bool = True) -> None:
        task.gen += 1
        seconds = ns / 1e9 * (self.clients.config.time_scale if scaled else 1.0)
        self.clients.timers.at(self.clients.loop.time() + seconds, self._fire, task, task.gen,
                               fn)

    def _fire(self, task: TaskRun, gen: int, fn: Any) -> None:
        if task.gen == gen and not self.finished:
            self._settle()
            fn(task)

    def _dirty(self) -> None:
        self.clients.mark(self)

    def _settle(self) -> None:
        """Every task-state change gets its own allocation update: before a timer
        changes anything, a change of an earlier loop iteration that is not written yet
        (a loaded loop ran this timer before the pending flush) is written; changes of
        one instant share an update. Called first by everything a timer runs."""
        if self.state_changed and self.state_changed != self.clients.loop.time():
            self.clients.write_now(self)

    def _set_state(self, task: TaskRun, state: str) -> None:
        if task.state != state:
            self.state_changed = self.clients.loop.time()
            task.state = state

    # -- the task runner loop ----------------------------------------------------------

    def receive(self, alloc: Alloc, max_run_ns: int | None) -> None:
        """The client has the alloc: set up every task and start it."""
        self._settle()
        now = now_ns()
        for task in self.tasks:
            task.events.append(te.task_event(te.RECEIVED, now))
            task.events.append(te.setup(now))
        if max_run_ns is not None:
            scale = self.clients.config.time_scale
            due = alloc.create_time + max_run_ns * scale - now
            self.gen += 1
            self.clients.timers.at(self.clients.loop.time() + max(0.0, due / 1e9),
                                   self._max_run, self.gen)
        for task in self.tasks:
            if task.state == PENDING:
                self._begin(task)
        self._dirty()

    def _begin(self, task: TaskRun) -> None:
        plan = task.plan
        if plan is not None and plan.invalid:
            task.events.append(te.failed_validation(now_ns(), plan.invalid))
            self._decide(task, success=False, start_error=True, recoverable=False)
        elif plan is None:
            task.events.append(te.driver_failure(now_ns(), task.start_error))
            self._decide(task, success=False, start_error=True, recoverable=False)
        elif plan.start_block_for > 0:
            self._after(task, plan.start_block_for, self._launch)
        else:
            self._launch(task)

    def _launch(self, task: TaskRun) -> None:
        plan = task.plan
        assert plan is not None
        now = now_ns()
        if plan.start_error:
            task.events.append(te.driver_failure(now, plan.start_error))
            self._decide(task, success=False, start_error=True,
                         recoverable=plan.start_error_recoverable)
            return
        task.events.append(te.task_event(te.STARTED, now))
        self._set_state(task, RUNNING)
        task.started_at = now
        if plan.run_for is None:
            task.gen += 1
        elif plan.run_for < 0:
            self._after(task, int(self.clients.config.run_time * 1e9), self._exit, scaled=False)
        else:
            self._after(task, plan.run_for, self._exit)
        self._dirty()

    def _exit(self, task: TaskRun) -> None:
        plan = task.plan
        assert plan is not None
        task.events.append(te.terminated(now_ns(), plan.exit_code, plan.exit_signal,
                                         plan.exit_err_msg))
        success = plan.exit_code == 0 and plan.exit_signal == 0 and not plan.exit_err_msg
        self._decide(task, success=success, start_error=False, recoverable=False)

    def _decide(self, task: TaskRun, *, success: bool, start_error: bool,
                recoverable: bool) -> None:
        decision = task.tracker.decide(self.clients.loop.time(), success=success,
                                       start_error=start_error, recoverable=recoverable)
        now = now_ns()
        if decision.state == "Restarting":
            task.events.append(te.restarting(now, decision.delay_ns, decision.reason))
            self._set_state(task, PENDING)
            task.restarts += 1
            task.last_restart = now
            # the delay is in real time already (the tracker scales the policy)
            self._after(task, decision.delay_ns, self._begin, scaled=False)
        else:
            if decision.state == "Not Restarting":
                task.events.append(te.not_restarting(now, decision.reason))
                task.failed = True
            self._dead(task, now)
            if task.failed:
                for other in self.tasks:
                    if other.state != DEAD:
                        other.events.append(te.sibling_failed(now, task.name))
                        self.kill_task(other)
        self._dirty()

    def _dead(self, task: TaskRun, now: int) -> None:
        task.gen += 1
        self._set_state(task, DEAD)
        if not task.finished_at:
            task.finished_at = now

    def crash(self, task_name: str, exit_code: int, signal: int, oom_killed: bool,
              message: str) -> str:
        """A running task ends now, as its driver reports a crash, an OOM kill or a
        signal (`POST /_sim/allocations/<id>/fail`): `Terminated` with those details, then
        the restart policy decides, as for any exit. Answers the task's name; ValueError
        when no task of that name (any, for "") is running."""
        task = next((t for t in self.tasks if t.state == RUNNING
                     and task_name in ("", t.name)), None)  # fmt: skip
        if task is None or self.finished:
            raise ValueError(f"no running task {task_name!r} in allocation {self.alloc_id}"
                             if task_name else f"no running task in allocation {self.alloc_id}")
        self._settle()
        task.gen += 1  # its own exit, due later, is cancelled
        task.events.append(te.terminated(now_ns(), exit_code, signal, message, oom_killed))
        self._decide(task, success=False, start_error=False, recoverable=False)
        return task.name

    # -- killing -----------------------------------------------------------------------

    def kill_task(self, task: TaskRun, display: str = "") -> None:
        if task.state == DEAD or task.finished_at:
            return
        plan = task.plan
        task.events.append(te.killing(now_ns(), plan.kill_timeout if plan else 5_000_000_000,
                                      display))
        if task.state == RUNNING and plan is not None:
            self._after(task, plan.kill_after, self._killed)
        else:
            self._dead(task, now_ns())
        self._dirty()

    def _killed(self, task: TaskRun) -> None:
        plan = task.plan
        assert plan is not None
        now = now_ns()
        task.events.append(te.terminated(now, plan.exit_code, plan.exit_signal,
                                         plan.exit_err_msg))
        task.events.append(te.task_event(te.KILLED, now))
        self._dead(task, now)
        self._dirty()

    def kill(self, display: str = "") -> None:
        self._settle()
        for task in self.tasks:
            self.kill_task(task, display)

    def _max_run(self, gen: int) -> None:
        if gen != self.gen or self.finished:
            return
        self._settle()
        self.forced = ("complete", te.MAX_RUN_DURATION)
        self.kill(te.MAX_RUN_DURATION)
        self._dirty()

    def stop_unstarted(self) -> None:
        """The alloc was stopped before the client ran it: every task ends at once."""
        now = now_ns()
        for task in self.tasks:
            self._dead(task, now)
        self._dirty()

    # -- the allocation's view ---------------------------------------------------------

    def client_status(self) -> tuple[str, str]:
        """alloc_runner.go getClientStatus (or the forced status)."""
        if self.forced is not None:
            return self.forced
        pending = running = dead = failed = False
        for task in self.tasks:
            if task.state == RUNNING:
                running = True
            elif task.state == PENDING:
                pending = True
            elif task.failed:
                failed = True
            else:
                dead = True
        if failed:
            return "failed", "Failed tasks"
        if running:
            return "running", "Tasks are running"
        if pending:
            return "pending", "No tasks have started"
        if dead:
            return "complete", "All tasks have completed"
        return "pending", ""

    @property
    def all_dead(self) -> bool:
        return all(t.state == DEAD for t in self.tasks)

    def task_states(self, terminal: bool) -> JsonObj:
        """TaskStates to report; a terminal alloc reports a FinishedAt for every task
        (alloc_runner.go clientAlloc), without changing the runners' own state."""
        if not terminal:
            return {task.name: task.render() for task in self.tasks}
        now = now_ns()
        states = {}
        for task in self.tasks:
            state = task.render()
            if not task.finished_at:
                state["FinishedAt"] = rfc3339(now)
            states[task.name] = state
        return states

    def last_event(self) -> int:
        """The latest FinishedAt of the tasks (unix ns), now for one still alive."""
        now = now_ns()
        return max(task.finished_at or now for task in self.tasks)
