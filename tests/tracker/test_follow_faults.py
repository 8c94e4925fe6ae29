"""Following children through Nomad's bad moments, over real processes (redis-server,
nomadsim with `--time-scale 0.001`, a worker, `dispatchq tracker`): the open event stream
cut mid-run, and Nomad answering 5xx and 429 for a while. Every child still gets exactly
one outcome (one completion event, the batch counted once), and the right one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
import requests

from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.batch_input import BatchItem
from dispatchq.store import keys
from tests.support.nomad_jobs import FAIL_FIRST, add_fault, child_running, clear_faults
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def running(stack: Stack) -> Iterator[Stack]:
    with stack.worker("ff1"):
        yield stack


def _items(count: int) -> list[BatchItem]:
    """Every fourth child fails with exit code 3 after its restarts and reschedule (8 runs
    of 0.3 to 0.5 s); the others complete after 1 to 3.5 s (scaled run times)."""
    return [
        BatchItem(meta={"exit_code": "3", "run_for": f"{300 + (n * 53) % 200}s"}
                  if n % 4 == 0 else
                  {"exit_code": "0", "run_for": f"{1000 + (n * 53) % 2500}s"})
        for n in range(count)
    ]  # fmt: skip


def _want(request_id: str) -> int:
    ordinal = int(request_id.rsplit("-", 1)[-1])  # 1-based: item n is ordinal n + 1
    return 2 if (ordinal - 1) % 4 == 0 else 0


def _wait(check: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _handed_off(client: redis.Redis, ids: list[str]) -> bool:
    states = [client.hget(keys.request(rid), "state") for rid in ids]
    return all(s in (b"scheduled", b"running", b"done") for s in states)


def _completion_events(client: redis.Redis) -> Counter[str]:
    """request.finished events per request ID, from the completion stream."""
    counts: Counter[str] = Counter()
    for _id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.EVENTS)):
        event = json.loads(fields[b"event"])
        if event["type"] == "request.finished":
            counts[event["request_id"]] += 1
    return counts


def _check_exactly_one_right_outcome(
    producer: Producer, client: redis.Redis, batch: str, count: int
) -> None:
    _wait(lambda: (producer.batch_status(batch) or _NOT_YET).done >= count,
          "every child to end", timeout=120)  # fmt: skip
    status = producer.batch_status(batch)
    assert status is not None
    assert (status.done, status.exit_codes) == (count, {0: count - count // 4, 2: count // 4})
    wrong = []
    ids = []
    for line in producer.batch_results(batch):
        entry = json.loads(line)
        ids.append(entry["request_id"])
        outcome = entry["outcome"]
        [alloc] = outcome["child"]["allocations"]
        task = alloc["tasks"]["ffmpeg"]
        want = _want(entry["request_id"])
        if (outcome["exit_code"], task["exit_code"]) != (want, 3 if want else 0):
            wrong.append((entry["request_id"], outcome["exit_code"], outcome.get("error_kind")))
    assert not wrong, wrong[:5]
    events = _completion_events(client)
    assert {rid: events[rid] for rid in ids} == dict.fromkeys(ids, 1)  # nothing doubled
    assert client.zcard(keys.FOLLOW) == 0


class _NotYet:
    done = 0


_NOT_YET = _NotYet()


def _tracker(stack: Stack, name: str, *args: str) -> TrackerProcess:
    return TrackerProcess(env=stack.env, log_path=stack.log_dir / f"{name}.log", args=list(args))


def _log_events(stack: Stack, name: str, event: str) -> int:
    """How many times the tracker logged `event` (JSON lines)."""
    path = stack.log_dir / f"{name}.log"
    if not path.exists():
        return 0
    found = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            found += json.loads(line).get("event") == event
        except (ValueError, AttributeError):
            continue
    return found


def _streams(sim: str) -> int:
    return int(requests.get(f"{sim}/_sim/stats", timeout=5).json()["event_streams"])


def test_the_open_event_stream_cut_mid_run(running: Stack, redis_client: redis.Redis) -> None:
    """The tracker's open stream is dropped mid-body several times while 40 children end
    (`POST /_sim/event-stream/cut`); the forced sweep is an hour away, so an end that
    happened while the stream was down is only seen by the reconcile after reconnecting."""
    sim = running.sim.address
    count = 40
    with _tracker(running, "tracker-cut-open", "--sweep", "3600"), \
            running.producer() as producer:  # fmt: skip
        _wait(lambda: _log_events(running, "tracker-cut-open", "tracker.leading"),
              "the tracker to lead")  # fmt: skip
        _wait(lambda: _streams(sim) >= 1, "the tracker's stream to be open")
        batch = producer.dispatch_batch("enc", _items(count), until="finished",
                                        preflight=False, batch_id="cut-open")  # fmt: skip
        ids = [json.loads(line)["request_id"] for line in producer.batch_results(batch)]
        _wait(lambda: _handed_off(redis_client, ids), "every child to be handed off")
        cuts = 0
        for _ in range(6):  # children end between and during the cuts
            cuts += requests.post(f"{sim}/_sim/event-stream/cut", timeout=5).json()["cut"]
            time.sleep(0.4)
        _check_exactly_one_right_outcome(producer, redis_client, batch, count)
    assert cuts >= 6  # (the worker's evaluation feed is cut too)
    assert _log_events(running, "tracker-cut-open", "tracker.stream_lost") >= 1
    assert _log_events(running, "tracker-cut-open", "tracker.stream_connected") >= 1


def _answered(sim: str) -> dict[str, int]:
    """nomadsim's answers so far, by status."""
    stats = requests.get(f"{sim}/_sim/stats", timeout=5).json()
    return {str(k): int(v) for k, v in stats["responses_by_status"].items()}


def _cli_direct_wait(stack: Stack) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", "-direct", "-wait",
         "-meta", "run_for=2500s", "enc"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=stack.env,
    )  # fmt: skip


def test_nomad_answering_5xx_and_429_for_a_while(running: Stack, redis_client: redis.Redis) -> None:
    """For 3 s, about half of the reads of jobs and their allocations answer 503 or 500
    and an eighth 429, the event stream 500 and the index read 429 (after a cut, so the
    tracker must reconnect through them), while children end: each gets exactly one
    outcome, the right one. A `-direct -wait` following its child by blocking queries
    through the same faults ends right too."""
    sim = running.sim.address
    count = 40
    with _tracker(running, "tracker-faults"), running.producer() as producer:
        batch = producer.dispatch_batch("enc", _items(count), until="finished",
                                        preflight=False, batch_id="faults-1")  # fmt: skip
        ids = [json.loads(line)["request_id"] for line in producer.batch_results(batch)]
        _wait(lambda: _handed_off(redis_client, ids), "every child to be handed off")
        direct = _cli_direct_wait(running)
        try:
            before = _answered(sim)
            for rule in (
                {"kind": "error", "route": "job*", "probability": 0.3, "status": 503},
                {"kind": "error", "route": "job*", "probability": 0.3},
                {"kind": "rate_limit", "route": "job*", "probability": 0.25},
                {"kind": "error", "route": "event-stream"},
                {"kind": "rate_limit", "route": "evaluations"},
            ):
                add_fault(sim, rule)
            requests.post(f"{sim}/_sim/event-stream/cut", timeout=5).raise_for_status()
            time.sleep(3.0)  # children end meanwhile
            after = _answered(sim)
        finally:
            clear_faults(sim)
        try:
            out, err = direct.communicate(timeout=120)
        finally:
            direct.kill()
        _check_exactly_one_right_outcome(producer, redis_client, batch, count)
    faulted = {status: after[status] - before.get(status, 0) for status in after}
    assert min(faulted.get("500", 0), faulted.get("503", 0), faulted.get("429", 0)) > 0, faulted
    assert direct.returncode == 0, (out, err)
    assert "completed: every allocation's tasks succeeded" in out.decode().splitlines()[-1]


@pytest.mark.timeout(300)  # a minute of faults, then the endings' checks, on a loaded machine
def test_every_kind_of_ending_through_nomad_errors_and_a_cut_stream(
    running: Stack, redis_client: redis.Redis
) -> None:
    """Children ending each their own way (success, a failure after restarts and a
    reschedule, a start error, a failure then a successful reschedule, an OOM kill then a
    restart, an operator's stop then the replacement, a `nomad job stop`) while, for a
    minute, about four reads in ten of jobs and their allocations answer 500, 503 or 429,
    the event stream 500, and the open stream is cut; the children end throughout that
    minute (`run_for` 1.5 s to 45 s): every ending still the right one, none before its
    child's end, each request ended once (one completion event: its record's `ends` is
    1)."""
    sim = running.sim.address
    cases: dict[str, tuple[dict[str, str], int, str]] = {
        "ok": ({"run_for": "45000s"}, 0, "finished"),
        "exit3": ({"exit_code": "3", "run_for": "1500s"}, 2, "failed"),
        "start-error": ({"start_error": "no such file: ffmpeg"}, 2, "failed"),
        "rescheduled-ok": ({"run_for": "20000s", **FAIL_FIRST}, 0, "finished"),
        "oom": ({"run_for": "30000s"}, 0, "finished"),
        "operator-stop": ({"run_for": "40000s"}, 0, "finished"),
        "job-stop": ({"run_for": "3600s"}, 1, "error"),
    }
    with _tracker(running, "tracker-all-endings"), running.producer() as producer:
        enqueued = time.time()
        ids = {name: producer.enqueue("enc", meta=meta, until="finished",
                                      request_id=f"all-{name}")
               for name, (meta, _, _) in cases.items()}  # fmt: skip
        # no outcome before this (Unix time): what the child still had to run
        earliest = {"ok": enqueued + 45, "rescheduled-ok": enqueued + 20}
        oom = child_running(redis_client, sim, ids["oom"])
        requests.post(f"{sim}/_sim/allocations/{oom['ID']}/fail", timeout=5,
                      json={"exit_code": 137, "signal": 9, "oom_killed": True}
                      ).raise_for_status()  # fmt: skip
        earliest["oom"] = time.time() + 30  # restarted: runs its 30 s again
        moved = child_running(redis_client, sim, ids["operator-stop"])
        requests.post(f"{sim}/v1/allocation/{moved['ID']}/stop", timeout=5).raise_for_status()
        earliest["operator-stop"] = time.time() + 40  # its replacement runs 40 s
        stopped = child_running(redis_client, sim, ids["job-stop"])["JobID"]
        requests.delete(f"{sim}/v1/job/{stopped}", timeout=5).raise_for_status()
        try:
            for rule in (
                {"kind": "error", "route": "job*", "probability": 0.15, "status": 503},
                {"kind": "error", "route": "job*", "probability": 0.15},
                {"kind": "rate_limit", "route": "job*", "probability": 0.15},
                {"kind": "error", "route": "event-stream"},
            ):
                add_fault(sim, rule)
            requests.post(f"{sim}/_sim/event-stream/cut", timeout=5).raise_for_status()
            faulted_until = time.time() + 60.0
            while time.time() < faulted_until:  # the children end meanwhile, none early
                not_yet = [n for n, at in earliest.items() if time.time() < at - 1]
                early = [n for n in not_yet if producer.result(ids[n]).outcome is not None]
                assert not early, f"ended before their child could have: {early}"
                time.sleep(1.0)
        finally:
            clear_faults(sim)
        statuses = producer.wait(list(ids.values()), timeout=90)
    for name, (_, code, status) in cases.items():
        outcome = statuses[ids[name]].outcome
        assert outcome is not None, name
        assert (outcome.exit_code, outcome.status) == (code, status), (name, outcome.to_json())
        assert redis_client.hget(keys.request(ids[name]), "ends") == b"1", name
    events = [json.loads(f[b"event"]) for _, f in cast(
        list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrange(keys.EVENTS))]
    for name, rid in ids.items():  # one completion event each, and `dispatchq status` agrees
        outcome = statuses[rid].outcome
        assert outcome is not None
        mine = [e for e in events if e.get("request_id") == rid]
        assert [(e["type"], e["exit_code"]) for e in mine] == [
            ("request.finished", outcome.exit_code)], name
        shown = subprocess.run(
            [sys.executable, "-m", "dispatchq.cli", "status", rid], capture_output=True,
            text=True, env=running.env, timeout=60, check=False,
        )  # fmt: skip
        assert shown.returncode == outcome.exit_code, (name, shown.stdout, shown.stderr)
        assert re.search(rf"^Status += {outcome.status}$", shown.stdout, re.M), shown.stdout
        if outcome.error_message:
            assert outcome.error_message in shown.stdout, (name, shown.stdout)
    assert statuses[ids["job-stop"]].outcome.error_kind == "stopped"  # type: ignore[union-attr]
    moved_outcome = statuses[ids["operator-stop"]].outcome
    assert moved_outcome is not None and moved_outcome.child is not None
    [alloc] = moved_outcome.child["allocations"]
    assert alloc["id"] != moved["ID"]  # the replacement's ending
