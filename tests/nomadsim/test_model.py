"""In-process tests of the state objects' JSON: the event stream's fast allocation
encoding must give the same bytes as the allocation's rendering."""

from __future__ import annotations

from typing import Any

import orjson

from dispatchq.nomadsim.events import Event
from dispatchq.nomadsim.jsonshape import dumps
from dispatchq.nomadsim.model import Alloc, evolve

NOW = 1_700_000_000_123_456_789


def _alloc() -> Alloc:
    job: dict[str, Any] = {"ID": "video/dispatch-1-ab", "Type": "batch", "Version": 0}
    return Alloc(
        id="a1", namespace="default", eval_id="e1", name="video/dispatch-1-ab.encode[0]",
        node_id="n1", node_name="node-1", job_id="video/dispatch-1-ab", job=job,
        task_group="encode", tasks={"ffmpeg": (100, 10), "upload": (50, 20)},
        desired_status="run", client_status="pending", create_index=7, modify_index=7,
        create_time=NOW, modify_time=NOW,
        metrics={"NodesEvaluated": 3, "NodesAvailable": {"dc1": 3}, "Scores": None},
    )  # fmt: skip


def _versions() -> list[Alloc]:
    pending = _alloc()
    running = evolve(pending, client_status="running", client_description="Tasks are running",
                     started_at=NOW + 1_000_000, modify_time=NOW + 1_000, modify_index=8)
    failed = evolve(running, client_status="failed", client_description="Failed tasks",
                    failed=True, finished_at=NOW + 2_000_000_000, modify_index=9)
    stopped = evolve(running, desired_status="stop", desired_description="not needed")
    return [pending, running, failed, stopped]


def test_event_json_is_the_rendering() -> None:
    for alloc in _versions():
        assert alloc.event_json() == dumps(alloc.render(with_job=False))
        # asked again, from the encoding the copies share
        assert alloc.event_json() == dumps(alloc.render(with_job=False))


def test_static_json_is_dropped_when_an_encoded_field_changes() -> None:
    alloc = _alloc()
    alloc.event_json()
    assert evolve(alloc, client_status="running").static_json is alloc.static_json
    moved = evolve(alloc, node_id="n2", node_name="node-2")
    assert moved.static_json is None
    assert b'"NodeID":"n2","NodeName":"node-2"' in moved.event_json()


def test_allocation_event_payload() -> None:
    alloc = _versions()[1]
    event = Event("Allocation", "AllocationUpdated", alloc.id, alloc.namespace,
                  [alloc.job_id, ""], 8, alloc)
    assert orjson.loads(event.encoded()) == {
        "Topic": "Allocation", "Type": "AllocationUpdated", "Key": "a1",
        "Namespace": "default", "FilterKeys": ["video/dispatch-1-ab", ""], "Index": 8,
        "Payload": {"Allocation": orjson.loads(dumps(alloc.render(with_job=False)))},
    }  # fmt: skip
