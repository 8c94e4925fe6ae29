"""Group commit: calls made while one is out share the next call; a refused group is run
again one by one; then endings of one batch stored as one group on a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from dispatchq.store import keys
from dispatchq.store.batches import BatchStore
from dispatchq.store.group import GroupCommit
from dispatchq.store.records import RecordStore
from tests.store.test_completion import events, finish


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def run_in_threads(call: Callable[[int], Any], count: int) -> dict[int, Any]:
    answers: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            answers[i] = call(i)
        except Exception as err:  # noqa: BLE001  (the answer is the error)
            answers[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return answers


class HeldFirst:
    """A `run` whose first call waits until `waiting` more items are queued behind it."""

    def __init__(self, waiting: int, fail: Callable[[Sequence[int]], Exception | None]) -> None:
        self.groups: list[list[int]] = []
        self.waiting = waiting
        self.fail = fail
        self.group: GroupCommit[int, int] | None = None

    def __call__(self, items: Sequence[int]) -> list[int]:
        if not self.groups:
            assert self.group is not None
            wait_for(lambda: len(self.group._queue) >= self.waiting)  # type: ignore[union-attr]
        self.groups.append(list(items))
        error = self.fail(items)
        if error is not None:
            raise error
        return [i * 10 for i in items]


def test_calls_made_while_one_is_out_share_the_next_call() -> None:
    run = HeldFirst(waiting=9, fail=lambda items: None)
    group: GroupCommit[int, int] = GroupCommit(run, most=5)
    run.group = group
    answers = run_in_threads(group.commit, 10)
    assert answers == {i: i * 10 for i in range(10)}
    assert [len(g) for g in run.groups] == [1, 5, 4]  # the first alone, then at most 5
    assert sorted(i for g in run.groups for i in g) == list(range(10))


def test_a_refused_group_runs_again_one_by_one_and_only_the_refused_call_fails() -> None:
    def refuse_three(items: Sequence[int]) -> Exception | None:
        return redis.ResponseError("WRONGTYPE") if 3 in items else None

    run = HeldFirst(waiting=5, fail=refuse_three)
    group: GroupCommit[int, int] = GroupCommit(run)
    run.group = group
    answers = run_in_threads(group.commit, 6)
    assert isinstance(answers.pop(3), redis.ResponseError)
    assert answers == {i: i * 10 for i in (0, 1, 2, 4, 5)}
    assert [len(g) for g in run.groups[:2]] == [1, 5]
    assert sorted(g[0] for g in run.groups[2:]) == [1, 2, 3, 4, 5]  # then one by one


def test_a_lost_connection_fails_every_call_of_its_group_and_the_next_group_still_runs() -> None:
    def lose_the_second(items: Sequence[int]) -> Exception | None:
        return redis.ConnectionError("lost") if len(run.groups) == 2 else None

    run = HeldFirst(waiting=4, fail=lose_the_second)
    group: GroupCommit[int, int] = GroupCommit(run)
    run.group = group
    answers = run_in_threads(group.commit, 5)
    lost = [i for i, a in answers.items() if isinstance(a, redis.ConnectionError)]
    assert sorted(lost) == sorted(run.groups[1]) and len(lost) == 4
    assert group.commit(7) == 70  # nothing left stuck


def test_a_lost_connection_fails_the_callers_waiting_for_the_next_group_at_once() -> None:
    """A failover: the call out fails, and those waiting behind it fail with it instead of
    making a call of their own into the same outage, after it."""

    def lose_the_first(items: Sequence[int]) -> Exception | None:
        return redis.ConnectionError("lost") if len(run.groups) == 1 else None

    run = HeldFirst(waiting=4, fail=lose_the_first)
    group: GroupCommit[int, int] = GroupCommit(run)
    run.group = group
    answers = run_in_threads(group.commit, 5)
    assert all(isinstance(a, redis.ConnectionError) for a in answers.values()), answers
    assert run.groups == [[0]]  # one call made
    assert group.commit(7) == 70  # and the next caller runs


@pytest.mark.slow
def test_endings_of_one_batch_stored_as_one_group_count_once_each(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RecordStore(redis_client, 60)
    pipe = redis_client.pipeline()
    BatchStore(redis_client, 60).create(pipe, "b-1", "video", namespace=None, total=12)
    pipe.execute()
    run = store._endings._run
    calls: list[int] = []

    def held(group: Sequence[Any]) -> list[Any]:
        if not calls:  # the first ending waits until the 11 others are queued
            wait_for(lambda: len(store._endings._queue) >= 11)
        calls.append(len(group))
        return run(group)

    monkeypatch.setattr(store._endings, "_run", held)
    codes = [0] * 9 + [2, 1, 0]
    answers = run_in_threads(lambda i: finish(store, f"r-{i}", codes[i], "b-1"), 12)
    assert answers == dict.fromkeys(range(12), True)
    assert calls == [1, 11]  # two calls of done.lua for 12 endings
    finish(store, "r-4", 1, "b-1")  # a late duplicate: changes nothing (the counts below)
    batch = redis_client.hgetall(keys.batch("b-1"))
    assert (batch[b"done"], batch[b"exit:0"], batch[b"exit:1"], batch[b"exit:2"]) == (
        b"12", b"10", b"1", b"1"
    )  # fmt: skip
    got = [event for event, _ in events(redis_client)]
    assert sorted(e["event_id"] for e in got[:-1]) == sorted(f"request:r-{i}:1" for i in range(12))
    assert got[-1]["event_id"] == "batch:b-1"  # once, after every item's
    assert (got[-1]["succeeded"], got[-1]["failed"]) == (10, 2)
    for i in range(12):
        assert redis_client.exists(keys.celery_result(f"r-{i}"))


GEVENT_KILLS = """
from gevent import monkey
monkey.patch_all()
import gevent
from gevent.event import Event
from dispatchq.store.group import GroupCommit

release, groups = Event(), []

def run(items):
    groups.append(list(items))
    if len(groups) == 1:
        release.wait()  # the first call hangs (a primary gone) while others queue
    return [i * 10 for i in items]

group = GroupCommit(run)
first = gevent.spawn(group.commit, 0)
gevent.sleep(0.01)
waiting = [gevent.spawn(group.commit, i) for i in (1, 2, 3)]
gevent.sleep(0.01)
gevent.killall(waiting[:2])  # two of them stopped (a time limit) while they wait
release.set()
print(first.get(timeout=5), waiting[2].get(timeout=5), group.commit(4))
print(groups)
"""


@pytest.mark.slow
def test_callers_stopped_while_they_wait_leave_no_group_behind() -> None:
    """Under gevent, as a worker runs it: callers killed while a call hangs (the pool's
    time limit) are neither run nor waited for; the next group runs, and the next call."""
    done = subprocess.run([sys.executable, "-c", GEVENT_KILLS], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answers, groups = done.stdout.splitlines()
    assert answers == "0 30 40"
    assert groups == "[[0], [3], [4]]"


@pytest.mark.slow
def test_an_ending_redis_refuses_fails_alone_and_the_groups_counts_stay_exact(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ending of a group whose request record holds another type of value (a hostile
    client's doing): its caller gets Redis's error, the others are stored and counted,
    their batch's counters written."""
    store = RecordStore(redis_client, 60)
    pipe = redis_client.pipeline()
    BatchStore(redis_client, 60).create(pipe, "b-2", "video", namespace=None, total=3)
    pipe.execute()
    redis_client.set(keys.request("r-bad"), "not a hash")
    run = store._endings._run
    calls: list[int] = []

    def held(group: Sequence[Any]) -> list[Any]:
        calls.append(len(group))
        if len(calls) == 1:
            wait_for(lambda: len(store._endings._queue) >= 2)
        return run(group)

    monkeypatch.setattr(store._endings, "_run", held)
    by_rid: dict[str, Any] = {}

    def end(rid: str) -> None:
        try:
            by_rid[rid] = finish(store, rid, 0, "b-2")
        except redis.ResponseError as err:
            by_rid[rid] = err

    threads = []
    for n, rid in enumerate(["r-ok1", "r-ok2", "r-bad"]):  # in this order: r-ok2 before r-bad
        threads.append(threading.Thread(target=end, args=(rid,)))
        threads[-1].start()
        def started(n: int = n) -> bool:
            return len(calls) == 1 if n == 0 else len(store._endings._queue) == n

        wait_for(started)
    for thread in threads:
        thread.join(10)
    assert calls == [1, 2]  # the refused one shared a call with another, after it
    assert isinstance(by_rid.pop("r-bad"), redis.ResponseError)
    assert by_rid == {"r-ok1": True, "r-ok2": True}
    batch = redis_client.hgetall(keys.batch("b-2"))
    assert (batch[b"done"], batch[b"exit:0"]) == (b"2", b"2")
    assert all(redis_client.exists(keys.celery_result(rid)) for rid in ("r-ok1", "r-ok2"))
