"""`Follower` and `Tracker` on the session's redis-server, with Nomad faked: the records'
scripts are the real ones (first finish wins, the follow set, the stages)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest.mock import patch

import pytest
import redis

from dispatchq.core.outcome import OutcomeRecorder
from dispatchq.core.transcript import Dispatched, EvalFinished, MonitorStarted
from dispatchq.errors import NotFound, ServerError
from dispatchq.store import keys
from dispatchq.store.liveness import heard_trackers
from dispatchq.store.records import RecordStore, StoredResult
from dispatchq.tracker.decide import decide
from dispatchq.tracker.follower import Checked, Follower, FollowPolicy, Tracker
from dispatchq.tracker.leader import Lease, reconcile_all

CHILD = "enc/dispatch-1-abc"


class FakeChildren:
    """Nomad's answers for the child: a job (None: 404) and allocations, or an error."""

    def __init__(self) -> None:
        self.job: dict[str, Any] | None = {"ID": CHILD, "Status": "running", "Stop": False}
        self.allocs: list[dict[str, Any]] = [_alloc("running")]
        self.error: Exception | None = None
        self.reads = 0
        self.listings = 0

    def read_job(self, job_id: str, **_: Any) -> tuple[dict[str, Any], int]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        if self.job is None:
            raise NotFound("job not found", status=404)
        return self.job, 1

    def job_allocations(self, job_id: str, **_: Any) -> tuple[list[dict[str, Any]], int]:
        self.listings += 1
        if self.error is not None:
            raise self.error
        return self.allocs, 1


def _alloc(status: str, code: int = 0) -> dict[str, Any]:
    events = [{"Type": "Terminated", "Details": {"exit_code": str(code)}}]
    state = {"State": "dead" if status != "running" else "running", "Failed": code != 0,
             "Restarts": 0, "Events": events}  # fmt: skip
    return {"ID": "a1", "TaskGroup": "encode", "ClientStatus": status, "DesiredStatus": "run",
            "CreateIndex": 1, "TaskStates": {"ffmpeg": state}}  # fmt: skip


def _results(rid: str, outcome: dict[str, Any]) -> StoredResult:
    meta = {"status": "SUCCESS", "result": outcome, "task_id": rid, "date_done": "x"}
    return StoredResult(keys.celery_result(rid), json.dumps(meta), 0)


@pytest.fixture
def store(redis_client: redis.Redis) -> RecordStore:
    redis_client.flushdb()
    return RecordStore(redis_client, 600)


def _handed_off(
    store: RecordStore, rid: str = "r1", batch: str | None = "b1", deadline: float | None = None
) -> None:
    store.client.hset(keys.request(rid), "state", "queued")  # as enqueue.lua makes it
    store.begin(rid, "enc", batch)
    store.mark_dispatched(rid, CHILD, "e1")
    recorder = OutcomeRecorder("enc")
    for event in (Dispatched(CHILD, "e1", True), MonitorStarted("e1"),
                  EvalFinished("e1", "complete", False)):  # fmt: skip
        recorder.emit(event)
    assert store.hand_off(rid, "", recorder.outcome().to_stored(), deadline)


def test_running_then_finished_and_the_first_finish_wins(store: RecordStore) -> None:
    nomad = FakeChildren()
    one, two = (Follower(nomad, store, _results, clock=lambda: 1000.0) for _ in range(2))
    _handed_off(store)
    assert store.load("r1").state.value == "scheduled"  # type: ignore[union-attr]
    checked = one.check("r1")
    assert checked.verdict is not None and not checked.verdict.ended
    assert store.load("r1").state.value == "running"  # type: ignore[union-attr]
    assert store.client.zscore(keys.FOLLOW, "r1") == 1000.0 + FollowPolicy.sweep
    nomad.job = {"ID": CHILD, "Status": "dead", "Stop": False}
    nomad.allocs = [_alloc("failed", code=3)]
    seen_by_two = store.load("r1")
    assert seen_by_two is not None
    assert one.check("r1").finished
    # a second tracker that read the same end before the first stored it changes nothing
    late = decide(nomad.job, [_alloc("complete")])
    assert not two._finish(seen_by_two, late, Checked("r1"))
    meta = json.loads(store.client.get(keys.celery_result("r1")))  # type: ignore[arg-type]
    outcome = meta["result"]
    assert (outcome["status"], outcome["exit_code"]) == ("failed", 2)
    assert outcome["dispatched_job_id"] == CHILD and outcome["child"]["status"] == "dead"
    assert store.client.hgetall(keys.batch("b1"))[b"done"] == b"1"
    assert store.client.zcard(keys.FOLLOW) == 0
    assert not store.client.exists(keys.partial("r1"))


def test_nomad_failing_is_retried_then_unreachable_after_the_bound(store: RecordStore) -> None:
    nomad, now = FakeChildren(), [1000.0]
    policy = FollowPolicy(unreachable_after=60.0, retry=5.0)
    follower = Follower(nomad, store, _results, policy=policy, clock=lambda: now[0])
    _handed_off(store)
    nomad.error = ServerError("No cluster leader", status=500)
    checked = follower.check("r1")
    assert checked.error and not checked.finished
    assert store.client.zscore(keys.FOLLOW, "r1") == 1005.0
    now[0] = 1061.0
    assert follower.check("r1").finished
    outcome = json.loads(store.client.get(keys.celery_result("r1")))["result"]  # type: ignore[arg-type]
    assert (outcome["exit_code"], outcome["error_kind"]) == (1, "unreachable")


def test_each_child_has_its_own_outage_clock(store: RecordStore) -> None:
    """Another child's good read does not restart the clock of one Nomad fails for."""
    nomad, now = FakeChildren(), [1000.0]
    policy = FollowPolicy(unreachable_after=60.0, retry=5.0)
    follower = Follower(nomad, store, _results, policy=policy, clock=lambda: now[0])
    _handed_off(store, "r1")
    _handed_off(store, "r2")
    nomad.error = ServerError("No cluster leader", status=500)
    assert not follower.check("r1").finished
    now[0], nomad.error = 1030.0, None
    assert not follower.check("r2").finished  # r2 read fine (still running)
    now[0], nomad.error = 1061.0, ServerError("No cluster leader", status=500)
    assert follower.check("r1").finished  # 61 s since r1's first failed read
    outcome = json.loads(store.client.get(keys.celery_result("r1")))["result"]  # type: ignore[arg-type]
    assert outcome["error_kind"] == "unreachable"


def test_the_wait_timeout_holds_while_nomad_fails(store: RecordStore) -> None:
    nomad, now = FakeChildren(), [1000.0]
    policy = FollowPolicy(unreachable_after=60.0, retry=5.0)
    follower = Follower(nomad, store, _results, policy=policy, clock=lambda: now[0])
    _handed_off(store, deadline=1003.0)
    nomad.error = ServerError("No cluster leader", status=500)
    assert not follower.check("r1").finished
    assert store.client.zscore(keys.FOLLOW, "r1") == 1003.0  # due at the deadline, not later
    now[0] = 1003.0
    assert follower.check("r1").finished
    outcome = json.loads(store.client.get(keys.celery_result("r1")))["result"]  # type: ignore[arg-type]
    assert (outcome["exit_code"], outcome["error_kind"]) == (1, "wait_timeout")
    assert "did not answer" in outcome["error_message"]


def test_collected_is_exit_1(store: RecordStore) -> None:
    nomad = FakeChildren()
    nomad.job, nomad.allocs = None, []  # garbage-collected: Nomad lists no allocation
    _handed_off(store, batch=None)
    assert Follower(nomad, store, _results).check("r1").finished
    outcome = json.loads(store.client.get(keys.celery_result("r1")))["result"]  # type: ignore[arg-type]
    assert outcome["error_kind"] == "collected"


def test_one_lease_holder_at_a_time(redis_client: redis.Redis) -> None:
    redis_client.delete(keys.TRACKER_LEASE)
    a, b = Lease(redis_client, "a"), Lease(redis_client, "b")
    assert a.hold() and not b.hold() and a.hold()
    a.release()
    assert b.hold() and not a.hold()


def test_every_tracker_is_seen_leader_and_standbys_until_it_stops(
    redis_client: redis.Redis,
) -> None:
    redis_client.delete(keys.TRACKER_LEASE, keys.TRACKERS)
    a, b = Lease(redis_client, "a"), Lease(redis_client, "b")
    assert a.hold() and not b.hold()
    assert sorted(name for name, _ in heard_trackers(redis_client)) == ["a", "b"]
    assert all(ago < 5 for _, ago in heard_trackers(redis_client))
    redis_client.zadd(keys.TRACKERS, {"gone": time.time() - keys.TRACKER_TTL - 1})
    assert "gone" not in dict(heard_trackers(redis_client))  # a killed one ages out
    b.release()
    assert [name for name, _ in heard_trackers(redis_client)] == ["a"]
    assert 0 < redis_client.ttl(keys.TRACKERS) <= keys.TRACKER_TTL


def test_reconcile_makes_every_child_due_at_its_rate(store: RecordStore) -> None:
    store.client.zadd(keys.FOLLOW, {"x": 5000.0, "y": 10.0, "z": 9000.0})
    assert reconcile_all(store.client, 2.0, 100.0) == 3
    scores = dict(store.client.zrange(keys.FOLLOW, 0, -1, withscores=True))  # type: ignore[arg-type]
    assert scores == {b"y": 10.0, b"x": 100.5, b"z": 101.0}  # a child due sooner keeps its time


def test_an_event_for_a_child_being_checked_wakes_another_check(store: RecordStore) -> None:
    nomad = FakeChildren()
    tracker = Tracker(store.client, Follower(nomad, store, _results), Lease(store.client, "t"))
    _handed_off(store)
    tracker._know(CHILD, "r1")
    with tracker._lock:
        tracker._busy.add("r1")
    tracker.mark(CHILD)
    tracker.mark("someone-else/dispatch-1")
    store.client.zadd(keys.FOLLOW, {"r1": 1e12})
    assert tracker.run_once() == 0  # busy: kept dirty for after the check
    with tracker._lock:
        tracker._busy.clear()
    assert tracker.run_once() == 1
    tracker._pool.shutdown(wait=True)


def test_a_check_that_redis_interrupted_is_made_again_on_the_next_pass(
    store: RecordStore,
) -> None:
    """A child whose check failed because Redis went away (a restart, a failover) is not
    left until its next scheduled check, minutes away: the next pass checks it again."""
    nomad = FakeChildren()
    follower = Follower(nomad, store, _results)
    tracker = Tracker(store.client, follower, Lease(store.client, "t"))
    _handed_off(store)
    store.client.zadd(keys.FOLLOW, {"r1": 1e12})  # not due for a long while
    failures = [redis.ConnectionError("Connection closed by server.")]
    real_check = follower.check

    def check(rid: str) -> Checked:
        if failures:
            raise failures.pop()
        return real_check(rid)

    follower.check = check  # type: ignore[method-assign,assignment]
    tracker._dirty.add("r1")  # an event named its child
    assert tracker.run_once() == 1
    tracker._pool.shutdown(wait=True)
    tracker._pool = ThreadPoolExecutor(1)
    assert tracker.run_once() == 1  # checked again at once
    tracker._pool.shutdown(wait=True)
    assert failures == []


def test_forced_checks_spread_out_as_the_followed_grow(store: RecordStore) -> None:
    """Past `sweep * sweep_rate` children the next forced check is further away, so the
    sweep's reads stay at `sweep_rate` a second whatever the number followed."""
    follower = Follower(FakeChildren(), store, _results, clock=lambda: 1000.0,
                        policy=FollowPolicy(sweep=300.0, sweep_rate=100.0))  # fmt: skip
    tracker = Tracker(store.client, follower, Lease(store.client, "t"))
    store.client.zadd(keys.FOLLOW, {f"other{n}": 1e12 for n in range(99)})
    _handed_off(store)
    tracker._count()
    assert follower.followed == 100
    follower.check("r1")
    assert store.client.zscore(keys.FOLLOW, "r1") == 1000.0 + 300.0  # few: the sweep
    follower.followed = 100_000  # as counted at that size
    follower.check("r1")
    assert store.client.zscore(keys.FOLLOW, "r1") == 1000.0 + 1000.0  # 100,000 / 100 a second
    tracker._pool.shutdown(wait=True)


def test_a_running_child_costs_one_read_and_an_end_is_read_whole(store: RecordStore) -> None:
    """While an allocation is not terminal the child cannot have ended: its allocations
    are the only read. Once none runs, the job is read too, and if it turned dead after
    the allocations were listed (its ModifyIndex past their index), they are listed
    again: the list may lack the allocation that ended it."""
    nomad = FakeChildren()
    follower = Follower(nomad, store, _results, clock=lambda: 1000.0)
    _handed_off(store)
    assert not follower.check("r1").verdict.ended  # type: ignore[union-attr]
    assert (nomad.listings, nomad.reads) == (1, 0)
    nomad.allocs = [_alloc("failed", code=3)]  # listed before the reschedule's end...
    nomad.job = {"ID": CHILD, "Status": "dead", "Stop": False, "ModifyIndex": 7}
    relisted = [{**_alloc("failed", code=3), "NextAllocation": "a2"},
                {**_alloc("complete"), "ID": "a2", "CreateIndex": 2}]  # fmt: skip
    real = nomad.job_allocations

    def listing(job_id: str, **kw: Any) -> tuple[list[dict[str, Any]], int]:
        allocs, index = real(job_id, **kw)
        nomad.allocs = relisted  # ...which the second listing shows
        return allocs, index

    nomad.job_allocations = listing  # type: ignore[method-assign]
    checked = follower.check("r1")
    assert (nomad.listings, nomad.reads) == (3, 1)
    assert checked.finished and checked.verdict is not None
    assert (checked.verdict.status, checked.verdict.exit_code) == ("finished", 0)


def test_a_backlog_of_due_children_is_read_a_pool_at_a_time(store: RecordStore) -> None:
    """100 children due at once: a pass submits `queued` of them; while more than half of
    those are under way the next passes read nothing from Redis; once they are done, the
    next pass reads the next ones (the backlog is read again at once, not after a pause)."""
    release = threading.Event()
    follower = Follower(FakeChildren(), store, _results)
    checked: list[str] = []

    def check(rid: str) -> Checked:
        release.wait(10)
        checked.append(rid)
        store.client.zrem(keys.FOLLOW, rid)
        return Checked(rid)

    follower.check = check  # type: ignore[method-assign,assignment]
    tracker = Tracker(store.client, follower, Lease(store.client, "t"),
                      policy=FollowPolicy(queued=32))  # fmt: skip
    store.client.zadd(keys.FOLLOW, {f"r{n:03d}": float(n) for n in range(100)})
    reads = 0
    real = store.client.zrangebyscore

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return real(*args, **kwargs)

    with patch.object(store.client, "zrangebyscore", counted):
        assert tracker.run_once() == 32
        assert (tracker.run_once(), reads) == (0, 1)  # the pool is behind: nothing read
        release.set()
        assert tracker._wake.wait(5)  # room again: the loop is woken
        deadline = time.monotonic() + 10
        while tracker._busy and time.monotonic() < deadline:  # the rest of the 32 done
            time.sleep(0.01)
        assert tracker.run_once() == 32 and reads == 2
    tracker._pool.shutdown(wait=True)
    assert len(set(checked)) == 64
