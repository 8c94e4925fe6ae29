"""The run-time histogram's buckets and what is timed (`dispatchq.store.runtimes`)."""

from __future__ import annotations

from dispatchq.store import runtimes


def test_every_duration_falls_in_one_bucket_with_a_readable_label() -> None:
    assert runtimes.bucket(0.0) == 0
    assert runtimes.bucket(0.99) == runtimes.bucket(0.5) == 3
    assert runtimes.bucket(1.0) == 4  # a bound belongs to the bucket above it
    assert runtimes.bucket(10**6) == len(runtimes.BOUNDS)
    labels = [runtimes.label(i) for i in range(len(runtimes.BOUNDS) + 1)]
    assert labels[0] == "< 0.1 s" and labels[4] == "1-2 s" and labels[-1] == "> 2 h"
    assert "2-5 min" in labels and len(set(labels)) == len(labels)


def test_a_followed_child_is_timed_by_its_tasks_else_the_workers_part() -> None:
    child = {"allocations": [
        {"tasks": {"a": {"started_at": 100.0, "finished_at": 160.0}}},
        {"tasks": {"a": {"started_at": 170.0, "finished_at": 400.0}, "b": {"state": "dead"}}},
    ]}  # fmt: skip
    one = {"dispatched_job_id": "enc/dispatch-1"}
    assert runtimes.run_seconds({**one, "child": child, "timings": [1, 0.1, 0.2]}) == 300.0
    assert runtimes.run_seconds({**one, "child": {"allocations": []}}) is None  # never ran
    assert runtimes.run_seconds({**one, "timings": [1.0, 0.25, 0.5]}) == 0.75
    assert runtimes.run_seconds({"timings": [1.0, 0.25, None]}) is None  # refused by Nomad
    assert runtimes.field_of({**one, "timings": [1.0, 0.25, 0.5]}) == "rt:3"
    assert runtimes.field_of(None) == ""


def test_the_histogram_reads_only_its_own_fields() -> None:
    counts = runtimes.histogram({"rt:0": "4", "rt:15": "1", "rt:99": "7", "done": "5"})
    assert counts[0] == 4 and counts[15] == 1 and sum(counts) == 5
