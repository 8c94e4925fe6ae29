"""`until` finished over real processes: nomadsim running mock_driver children (with
`--time-scale 0.001`, so the restart and reschedule delays take milliseconds), a worker,
and `dispatchq tracker`. Each child's meta picks how it ends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.batch_input import BatchItem
from dispatchq.store import keys
from dispatchq.store.batches import BatchStatus
from tests.support.nomad_jobs import (
    FAIL_FIRST,
    FAST_SIM,
    add_fault,
    child_running,
    clear_faults,
    mock_encode_job,
    parameterized_job,
    record_in,
    register,
    running_alloc,
    sim_dispatches,
)
from tests.support.stack import Stack

SECOND = 1_000_000_000
@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=FAST_SIM) as process:
        register(process.address, mock_encode_job("enc"))
        register(process.address, mock_encode_job("enc-mrd", MaxRunDuration=50 * SECOND))
        register(process.address, parameterized_job("huge", memory_mb=10_000_000))
        register(process.address, _two_groups("enc-2g"))
        big = mock_encode_job("enc-big")  # three quarters of a node: one per node at a time
        big["TaskGroups"][0]["Tasks"][0]["Resources"]["CPU"] = 150_000
        register(process.address, big)
        yield process


@pytest.fixture(scope="module")
def running(stack: Stack) -> Iterator[Stack]:
    with stack.worker("fw1"):
        yield stack


def _two_groups(job_id: str) -> dict[str, Any]:
    """A mock_driver child of two groups: `video` (tasks `ffmpeg` and `thumbs`) and
    `audio` (task `sox`); the meta `fail` is the exit code of `thumbs`."""
    job = mock_encode_job(job_id)
    job["ParameterizedJob"]["MetaOptional"] = ["fail"]
    job["Meta"] = {"fail": "0"}
    video = job["TaskGroups"][0]
    video["Name"] = "video"
    ffmpeg = video["Tasks"][0]
    ffmpeg["Config"] = {"run_for": "30s", "exit_code": "0"}
    video["Tasks"] = [ffmpeg, {**ffmpeg, "Name": "thumbs",
                               "Config": {"run_for": "10s", "exit_code": "${NOMAD_META_fail}"}}]
    video["RestartPolicy"] = {"Attempts": 0, "Mode": "fail"}
    video["ReschedulePolicy"] = {"Attempts": 0}
    audio = {**video, "Name": "audio",
             "Tasks": [{**ffmpeg, "Name": "sox", "Config": {"run_for": "5s", "exit_code": "0"}}]}
    job["TaskGroups"] = [video, audio]
    return job


def _tracker(stack: Stack, name: str = "tracker") -> TrackerProcess:
    return TrackerProcess(env=stack.env, log_path=stack.log_dir / f"{name}.log")


def _wait_all(producer: Producer, ids: list[str], timeout: float = 90) -> dict[str, Any]:
    statuses = producer.wait(ids, timeout=timeout)
    missing = [rid for rid, st in statuses.items() if not st.done]
    assert not missing, f"not done: {[(rid, statuses[rid].state) for rid in missing]}"
    return {rid: st.outcome for rid, st in statuses.items()}


def _task(outcome: Any) -> dict[str, Any]:
    [alloc] = outcome.child["allocations"]
    return dict(alloc["tasks"]["ffmpeg"])


def test_mixed_endings_each_with_its_exit_code_and_fields(
    running: Stack, redis_client: redis.Redis
) -> None:
    sim = running.sim.address
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "ok": ("enc", {"exit_code": "0", "run_for": "30s"}),
        "exit3": ("enc", {"exit_code": "3", "run_for": "10s"}),
        "start-error": ("enc", {"start_error": "no such file: ffmpeg"}),
        "rescheduled-ok": ("enc", {"run_for": "20s", **FAIL_FIRST}),
        "max-run": ("enc-mrd", {"run_for": "1h"}),
        "lost": ("enc", {"run_for": "1h"}),
    }
    with _tracker(running), running.producer() as producer:
        ids = {
            name: producer.enqueue(job, meta=meta, until="finished", request_id=f"mix-{name}")
            for name, (job, meta) in cases.items()
        }
        child = child_running(redis_client, sim, ids["lost"])
        node = child["NodeID"]
        requests.post(f"{sim}/_sim/nodes/{node}/down", timeout=5).raise_for_status()
        try:
            outcomes = _wait_all(producer, list(ids.values()))
        finally:
            requests.post(f"{sim}/_sim/nodes/{node}/up", timeout=5).raise_for_status()
    by = {name: outcomes[rid] for name, rid in ids.items()}

    ok = by["ok"]
    assert (ok.status, ok.exit_code, ok.child["status"]) == ("finished", 0, "dead")
    task = _task(ok)
    assert (task["state"], task["failed"], task["exit_code"]) == ("dead", False, 0)
    assert task["finished_at"] >= task["started_at"] > 0

    failed = by["exit3"]
    assert (failed.status, failed.exit_code) == ("failed", 2)
    [alloc] = failed.child["allocations"]
    assert (alloc["client_status"], alloc["reschedules"]) == ("failed", 1)
    task = _task(failed)
    assert (task["failed"], task["exit_code"], task["restarts"]) == (True, 3, 3)
    assert "exited with code 3" in failed.error_message

    again = by["rescheduled-ok"]  # the first allocation failed, its replacement completed
    assert (again.status, again.exit_code, again.error_kind) == ("finished", 0, None)
    [alloc] = again.child["allocations"]
    assert (alloc["client_status"], alloc["reschedules"]) == ("complete", 1)
    task = _task(again)
    assert (task["failed"], task["exit_code"], task["restarts"]) == (False, 0, 0)

    start = by["start-error"]
    assert (start.status, start.exit_code) == ("failed", 2)
    assert "no such file: ffmpeg" in _task(start)["message"]

    mrd = by["max-run"]
    assert (mrd.status, mrd.exit_code) == ("failed", 2)
    [alloc] = mrd.child["allocations"]
    assert alloc["client_description"] == "allocation exceeded max_run_duration"

    lost = by["lost"]  # replaced on the other node, where it completed
    assert (lost.status, lost.exit_code) == ("finished", 0)
    [alloc] = lost.child["allocations"]
    assert alloc["id"] != child["ID"] and alloc["client_status"] == "complete"

    for rid in ids.values():
        assert redis_client.hget(keys.request(rid), "state") == b"done"
        assert redis_client.zscore(keys.FOLLOW, rid) is None


def test_endings_an_operator_or_the_cluster_causes(
    running: Stack, redis_client: redis.Redis
) -> None:
    """A task OOM-killed (nomadsim's `/_sim/allocations/<id>/fail`), restarted by its
    policy, then completing; an allocation stopped by an operator (`POST
    /v1/allocation/<id>/stop`) and one on a drained node (`/v1/node/<id>/drain`, a
    deadline): both replaced, and the request ends with the replacement's ending; one
    task of one group of a two-group child failing, named with its group."""
    sim = running.sim.address
    with _tracker(running, "tracker-ops"), running.producer() as producer:
        ids = {name: producer.enqueue(job, meta=meta, until="finished", request_id=f"ops-{name}")
               for name, job, meta in (("oom", "enc", {"run_for": "2000s"}),  # 2 s here
                                       ("stopped", "enc", {"run_for": "2000s"}),
                                       ("group", "enc-2g", {"fail": "4"}))}  # fmt: skip
        oom = child_running(redis_client, sim, ids["oom"])
        requests.post(f"{sim}/_sim/allocations/{oom['ID']}/fail", timeout=5,
                      json={"exit_code": 137, "signal": 9, "oom_killed": True}
                      ).raise_for_status()  # fmt: skip
        stopped = child_running(redis_client, sim, ids["stopped"])
        requests.post(f"{sim}/v1/allocation/{stopped['ID']}/stop", timeout=5).raise_for_status()
        outcomes = _wait_all(producer, list(ids.values()))
        # then alone (a drain moves everything on its node): a drained node's child
        ids["drained"] = producer.enqueue("enc", meta={"run_for": "2000s"}, until="finished",
                                          request_id="ops-drained")  # fmt: skip
        drained = child_running(redis_client, sim, ids["drained"])
        node = drained["NodeID"]
        requests.post(f"{sim}/v1/node/{node}/drain", timeout=5,
                      json={"DrainSpec": {"Deadline": 300_000_000}}).raise_for_status()
        try:
            outcomes.update(_wait_all(producer, [ids["drained"]]))
        finally:
            requests.post(f"{sim}/v1/node/{node}/drain", timeout=5,
                          json={"DrainSpec": None, "MarkEligible": True}).raise_for_status()
    by = {name: outcomes[rid] for name, rid in ids.items()}

    restarted = by["oom"]  # the same allocation, its task restarted after exit 137
    assert (restarted.status, restarted.exit_code) == ("finished", 0)
    [alloc] = restarted.child["allocations"]
    assert alloc["id"] == oom["ID"] and _task(restarted)["restarts"] == 1, restarted.child

    for name, first in (("stopped", stopped), ("drained", drained)):
        moved = by[name]  # the replacement's ending is the request's
        assert (moved.status, moved.exit_code) == ("finished", 0), name
        [alloc] = moved.child["allocations"]
        assert alloc["id"] != first["ID"] and alloc["client_status"] == "complete", name
    [alloc] = by["drained"].child["allocations"]
    assert alloc["task_group"] == "encode"

    group = by["group"]
    assert (group.status, group.exit_code) == ("failed", 2)
    assert 'group "video"' in group.error_message and "task thumbs exited with code 4" in (
        group.error_message)  # fmt: skip
    assert 'group "audio"' not in group.error_message


def test_blocked_for_an_hour_then_placed_and_children_stopped_or_purged_by_someone(
    running: Stack, redis_client: redis.Redis
) -> None:
    """Two children hold both nodes for an hour of the job's time (3.6 s here); a third
    waits for capacity (a blocked evaluation), is placed when one ends, and succeeds. A
    child stopped by someone (`nomad job stop`) ends exit 1 `stopped`; one purged while
    followed, exit 1 `collected`."""
    sim = running.sim.address
    with _tracker(running, "tracker-blocked"), running.producer() as producer:
        hogs = [producer.enqueue("enc-big", meta={"run_for": "3600s"}, until="finished",
                                 request_id=f"hog-{n}") for n in range(2)]  # fmt: skip
        for rid in hogs:
            child_running(redis_client, sim, rid)
        waiting = producer.enqueue("enc-big", meta={"run_for": "100s"}, until="finished",
                                   request_id="blocked-1")  # fmt: skip
        ended = {}
        for name, purge in (("stopped", "false"), ("purged", "true")):
            rid = producer.enqueue("enc", meta={"run_for": "3600s"}, until="finished",
                                   request_id=f"by-someone-{name}")  # fmt: skip
            child = child_running(redis_client, sim, rid)["JobID"]
            requests.delete(f"{sim}/v1/job/{child}?purge={purge}", timeout=5).raise_for_status()
            ended[name] = rid
        assert producer.result(waiting).state == "scheduled"  # waiting for capacity
        outcomes = _wait_all(producer, [*hogs, waiting, *ended.values()], timeout=120)
    placed = outcomes[waiting]
    assert (placed.status, placed.exit_code) == ("finished", 0)
    assert placed.blocked_eval_id  # it waited on a blocked evaluation, then was placed
    stopped, purged = outcomes[ended["stopped"]], outcomes[ended["purged"]]
    assert (stopped.exit_code, stopped.error_kind) == (1, "stopped")
    assert stopped.error_message == "the child job was stopped before it ended"
    assert (purged.exit_code, purged.error_kind) == (1, "collected")
    assert all(outcomes[rid].exit_code == 0 for rid in hogs)


def test_a_child_collected_before_its_end_was_seen_is_exit_1(
    running: Stack, redis_client: redis.Redis
) -> None:
    """No tracker runs while the child ends and is purged: the tracker that starts later
    reads 404 and ends the request `collected`."""
    sim = running.sim.address
    with running.producer() as producer:
        rid = producer.enqueue("enc", meta={"run_for": "10s"}, until="finished",
                               request_id="gone-1")  # fmt: skip
        record = record_in(redis_client, rid, {b"scheduled", b"running"})
        child = record[b"dispatched_job_id"].decode()
        requests.delete(f"{sim}/v1/job/{child}?purge=true", timeout=5).raise_for_status()
        redis_client.delete(keys.TRACKER_LEASE)  # as if the last leader's lease lapsed
        with _tracker(running, "tracker-late"):
            [outcome] = _wait_all(producer, [rid]).values()
    assert (outcome.status, outcome.exit_code, outcome.error_kind) == ("error", 1, "collected")


def test_a_wait_timeout_while_blocked_is_exit_2(running: Stack) -> None:
    with _tracker(running, "tracker-timeout"), running.producer() as producer:
        rid = producer.enqueue("huge", until="finished", wait_timeout=1.0, request_id="to-1")
        [outcome] = _wait_all(producer, [rid]).values()
    assert (outcome.status, outcome.exit_code) == ("unplaced", 2)


def test_sigkill_of_the_leading_tracker_during_a_fan_out_of_1000(
    running: Stack, redis_client: redis.Redis
) -> None:
    """Two trackers, the leader SIGKILLed while children end: the standby takes over once
    the lease lapses, and every child gets exactly one outcome, the right one."""
    count = 1_000
    items = [
        BatchItem(meta={"exit_code": "3" if n % 10 == 0 else "0",
                        "run_for": f"{100 + (n * 37) % 3000}s"})
        for n in range(count)
    ]  # fmt: skip
    first = _tracker(running, "tracker-a").start()
    standby: TrackerProcess | None = None
    try:
        _wait(lambda: redis_client.exists(keys.TRACKER_LEASE), "the first tracker to lead")
        standby = _tracker(running, "tracker-b").start()
        with running.producer() as producer:
            batch = producer.dispatch_batch(
                "enc", items, until="finished", preflight=False, batch_id="kill-1k"
            )
            _wait(lambda: (producer.batch_status(batch) or _NONE).done >= count // 5,
                  "a fifth of the children to end")  # fmt: skip
            first.kill()
            _wait(lambda: (producer.batch_status(batch) or _NONE).done >= count,
                  "every child to end", timeout=180)  # fmt: skip
            status = producer.batch_status(batch)
            assert status is not None
            assert (status.done, status.exit_codes) == (count, {0: 900, 2: 100})
            wrong = []
            for line in producer.batch_results(batch):
                entry = json.loads(line)
                outcome = entry["outcome"]
                want = 2 if int(entry["request_id"].rsplit("-", 1)[-1]) % 10 == 1 else 0
                if outcome["exit_code"] != want or "child" not in outcome:
                    wrong.append(entry["request_id"])
            assert not wrong, wrong[:5]
        assert redis_client.zcard(keys.FOLLOW) == 0
    finally:
        first.kill()
        if standby is not None:
            standby.stop()


def test_children_that_end_while_the_event_stream_is_cut_are_seen_after_it_returns(
    running: Stack, redis_client: redis.Redis
) -> None:
    """The stream is refused (every new connection cut before an answer) while children
    end; the forced sweep is an hour away: only the reconcile after the reconnect can end
    them. An open stream cut mid-run: tests/tracker/test_follow_faults.py."""
    sim = running.sim.address
    add_fault(sim, {"kind": "cut", "route": "event-stream"})
    tracker = _tracker(running, "tracker-cut")
    tracker.args = ["--sweep", "3600"]
    try:
        with tracker, running.producer() as producer:
            ids = [
                producer.enqueue("enc", meta={"run_for": "300s", "exit_code": str(n % 2)},
                                 until="finished", request_id=f"cut-{n}")
                for n in range(20)
            ]  # fmt: skip
            for rid in ids:  # the tracker saw each one, not ended
                record_in(redis_client, rid, {b"scheduled", b"running"})
            time.sleep(1.0)  # they end meanwhile, unseen (the stream is down)
            clear_faults(sim)
            outcomes = _wait_all(producer, ids, timeout=60)
        assert [outcomes[rid].exit_code for rid in ids] == [0, 2] * 10
    finally:
        clear_faults(sim)


_NONE = BatchStatus("", "", "", 0, "", 0.0)


def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _cli(stack: Stack, *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", *args],
        capture_output=True, env=stack.env, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("path", [[], ["-direct"]], ids=["queued", "direct"])
def test_job_dispatch_wait_prints_the_childs_changes_and_its_end(
    running: Stack, path: list[str]
) -> None:
    with _tracker(running, f"tracker-cli-{len(path)}"):
        ok = _cli(running, *path, "-wait", "-meta", "run_for=200s", "enc")
        failed = _cli(running, *path, "-wait", "-meta", "exit_code=3", "enc")
        again = _cli(running, *path, "-wait", "-meta", "run_for=200s",
                     *[a for k, v in FAIL_FIRST.items() for a in ("-meta", f"{k}={v}")],
                     "enc")  # fmt: skip
        timed = _cli(running, *path, "-wait", "-wait-timeout", "1s", "huge")
    text = ok.stdout.decode()
    assert ok.returncode == 0, (text, ok.stderr)
    assert text.startswith("Dispatched Job ID = enc/dispatch-")
    assert '==> Evaluation "' in text  # the seed's lines first
    assert 'Task "ffmpeg" exited with code 0' in text
    assert text.rstrip().splitlines()[-1].endswith("completed: every allocation's tasks "
                                                   "succeeded (exit code 0)")  # fmt: skip
    text = failed.stdout.decode()
    assert failed.returncode == 2, (text, failed.stderr)
    assert 'Task "ffmpeg" restarting after exit code 3' in text
    assert "placed: rescheduled (attempt 1)" in text
    assert "task ffmpeg exited with code 3" in text.splitlines()[-1]
    text = again.stdout.decode()  # a failure, then a successful reschedule: exit 0
    assert again.returncode == 0, (text, again.stderr)
    assert "placed: rescheduled (attempt 1)" in text
    assert 'Task "ffmpeg" exited with code 0' in text
    assert "completed: every allocation's tasks succeeded" in text.splitlines()[-1]
    assert timed.returncode == 2, (timed.stdout, timed.stderr)
    assert "still waiting for placement" in timed.stdout.decode().splitlines()[-1]


def test_job_dispatch_wait_explains_a_lost_node_in_nomads_words(
    running: Stack,
) -> None:
    """`-wait` through a node lost mid-run: the line says why in Nomad's words (the
    server's desired description), then the replacement's end."""
    sim = running.sim.address
    with _tracker(running, "tracker-cli-words"):
        # (a drain's `stopped: alloc is being migrated` line depends on which views the
        # tracker publishes while the replacement is placed: tested in test_decide.py)
        for action in ("down",):
            before = len(sim_dispatches(sim))
            cli = subprocess.Popen(
                [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", "-wait",
                 "-meta", "run_for=3000s", "enc"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=running.env,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 30
                while len(sim_dispatches(sim)) == before:
                    assert time.monotonic() < deadline, "never dispatched"
                    time.sleep(0.05)
                child = sim_dispatches(sim)[-1]["child_id"]
                alloc = running_alloc(sim, child)
                node = alloc["NodeID"]
                if action == "down":
                    requests.post(f"{sim}/_sim/nodes/{node}/down", timeout=5).raise_for_status()
                else:
                    requests.post(f"{sim}/v1/node/{node}/drain", timeout=5,
                                  json={"DrainSpec": {"Deadline": -1}}).raise_for_status()
                out, err = cli.communicate(timeout=60)
            finally:
                cli.kill()
                if action == "down":
                    requests.post(f"{sim}/_sim/nodes/{node}/up", timeout=5).raise_for_status()
                else:
                    requests.post(f"{sim}/v1/node/{node}/drain", timeout=5,
                                  json={"DrainSpec": None, "MarkEligible": True}
                                  ).raise_for_status()  # fmt: skip
            text = out.decode()
            assert cli.returncode == 0, (text, err)
            short = alloc["ID"][:8]
            why = ("lost: alloc is lost since its node is down" if action == "down"
                   else "stopped: alloc is being migrated")  # fmt: skip
            assert f'Allocation "{short}" {why}' in text, text
            after = text.split(why, 1)[1]  # then a replacement (as the views fell: "placed")
            assert " placed" in after and f'Allocation "{short}"' not in after, text
            assert text.rstrip().splitlines()[-1].endswith("succeeded (exit code 0)"), text



def test_job_dispatch_wait_says_how_every_other_child_ended(running: Stack) -> None:
    """`-wait`, each line the words a person needs, for the endings the tests above leave
    out: a driver's start error, `max_run_duration`, one task of one group of two failing
    (exit 2 each); an operator's `nomad alloc stop` then the replacement (exit 0); the child
    stopped by someone with `nomad job stop` (exit 1)."""
    sim = running.sim.address

    def dispatch(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", "-wait", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=running.env,
        )  # fmt: skip

    def child_of(cli: subprocess.Popen[bytes], before: int) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while len(sim_dispatches(sim)) == before:
            assert cli.poll() is None and time.monotonic() < deadline, "never dispatched"
            time.sleep(0.05)
        return running_alloc(sim, sim_dispatches(sim)[before]["child_id"])

    with _tracker(running, "tracker-cli-every"):
        clis: dict[str, subprocess.Popen[bytes]] = {}
        for name, act in (("alloc-stop", "stop"), ("job-stop", "delete")):  # one at a time
            before = len(sim_dispatches(sim))
            clis[name] = dispatch("-meta", "run_for=2000s", "enc")
            alloc = child_of(clis[name], before)
            if act == "stop":
                requests.post(f"{sim}/v1/allocation/{alloc['ID']}/stop",
                              timeout=5).raise_for_status()  # fmt: skip
            else:
                requests.delete(f"{sim}/v1/job/{alloc['JobID']}", timeout=5).raise_for_status()
        clis["start-error"] = dispatch("-meta", "start_error=no such file: ffmpeg", "enc")
        clis["max-run"] = dispatch("-meta", "run_for=1h", "enc-mrd")
        clis["group"] = dispatch("-meta", "fail=4", "enc-2g")
        out = {name: cli.communicate(timeout=90) for name, cli in clis.items()}
    want = {  # exit code, words in the last line
        "start-error": (2, ["failed", "no such file: ffmpeg"]),
        "max-run": (2, ["allocation exceeded max_run_duration"]),
        "group": (2, ['group "video"', "task thumbs exited with code 4"]),
        "alloc-stop": (0, ["completed: every allocation's tasks succeeded"]),
        "job-stop": (1, ["stopped"]),
    }
    for name, (code, words) in want.items():
        text = out[name][0].decode()
        assert clis[name].returncode == code, (name, text, out[name][1])
        last = text.rstrip().splitlines()[-1]
        assert all(w in last for w in words), (name, last)
        assert last.endswith(f"(exit code {code})"), (name, last)
    assert 'group "audio"' not in out["group"][0].decode().splitlines()[-1]
