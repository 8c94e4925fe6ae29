"""The stored outcome format: `dispatchq/core/outcome.schema.json` against the code and
docs/formats.md.

The schema is the contract for readers in any language, so each test here ties it to what
the code writes (`Outcome.to_stored`, the event rows, every error kind) and to the documentation's
tables, which must be what `schema_tables` prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from celery import Celery

import dispatchq
from dispatchq.broker.app import GuardedRedisBackend
from dispatchq.core import transcript as ev
from dispatchq.core.outcome import OUTCOME_SCHEMA, Outcome, OutcomeRecorder
from dispatchq.core.transcript import (
    AllocationPlaced,
    BlockedEvalWaiting,
    Dispatched,
    EvalFinished,
    EvalReadFailed,
    MonitorStarted,
    TaskGroupFailed,
)
from dispatchq.errors import DispatchqError
from tests.support.schema_tables import schema_tables

FORMATS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
VALIDATOR = jsonschema.Draft202012Validator(OUTCOME_SCHEMA)
_JSON_TYPES = {"str": "string", "bool": "boolean", "int": "integer", "int | None": "integer"}


def _error_kinds() -> set[str]:
    return {item["const"] for item in OUTCOME_SCHEMA["$defs"]["error_kind"]["oneOf"]}


def _stored_meta(outcome: Outcome) -> dict[str, Any]:
    """The value at celery-task-meta-<id>, as the worker writes it."""
    app = Celery("schema", set_as_current=False)
    backend = GuardedRedisBackend(app=app, url="redis://127.0.0.1:1/0")
    stored = backend.success_result("r-1", outcome.to_stored())
    meta: dict[str, Any] = backend.decode(
        stored.value.encode() if isinstance(stored.value, str) else stored.value
    )
    return meta


def _outcome(*events: ev.Event) -> Outcome:
    recorder = OutcomeRecorder("video-encode")
    for event in events:
        recorder.emit(event)
    return recorder.outcome()


def test_the_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(OUTCOME_SCHEMA)


def test_event_rows_are_the_events_the_code_stores() -> None:
    rows = {row["title"]: row["prefixItems"] for row in OUTCOME_SCHEMA["$defs"]["event"]["oneOf"]}
    assert set(rows) == set(ev._TYPES), "dispatchq/core/outcome.schema.json: $defs/event is stale"
    for name, cls in ev._TYPES.items():
        fields = dataclasses.fields(cls)
        items = rows[name]
        assert items[0] == {"const": name}
        assert [item["title"] for item in items[1:]] == [f.name for f in fields], name
        for item, f in zip(items[1:], fields, strict=True):
            expected = _JSON_TYPES.get(str(f.type), "object")
            types = item["type"] if isinstance(item["type"], list) else [item["type"]]
            assert expected in types, f"{name}.{f.name}: {item['type']} for {f.type}"


def test_every_error_kind_of_the_code_is_documented() -> None:
    for module in pkgutil.walk_packages(dispatchq.__path__, "dispatchq."):
        if module.name.startswith("dispatchq.nomadsim") or module.name.endswith("__main__"):
            continue  # no error kinds there; `__main__` runs a command
        importlib.import_module(module.name)
    kinds, todo = set(), list(DispatchqError.__subclasses__())
    while todo:
        cls = todo.pop()
        kinds.add(cls.kind)
        todo.extend(cls.__subclasses__())
    assert kinds <= _error_kinds(), (
        "error kinds missing from dispatchq/core/outcome.schema.json: "
        f"{sorted(kinds - _error_kinds())}"
    )


SAMPLES = {
    "complete": _outcome(
        Dispatched("video-encode/dispatch-1-abc", "e-1", True),
        MonitorStarted("e-1"),
        AllocationPlaced("a-1", "n-1", "encode", "pending", False),
        EvalFinished("e-1", "complete", False),
    ),
    "dispatched": _outcome(Dispatched("video-encode/dispatch-1-abc", "", False)),
    "placement_failed": _outcome(
        Dispatched("video-encode/dispatch-1-abc", "e-1", True),
        MonitorStarted("e-1"),
        EvalFinished("e-1", "complete", True),
        TaskGroupFailed("encode", 1, {"NodesEvaluated": 2, "NodesExhausted": 2}),
        BlockedEvalWaiting("e-2"),
    ),
    "eval_read_failed": _outcome(
        Dispatched("video-encode/dispatch-1-abc", "e-1", True),
        MonitorStarted("e-1"),
        EvalReadFailed("e-1", "not_found", 404, "eval not found"),
    ),
    "interrupted": _outcome(Dispatched("video-encode/dispatch-1-abc", "e-1", True)),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_stored_outcomes_validate(name: str) -> None:
    meta = _stored_meta(SAMPLES[name])
    VALIDATOR.validate(meta)
    assert meta["result"]["exit_code"] == SAMPLES[name].exit_code


@pytest.mark.parametrize("kind", sorted(_error_kinds()))
def test_an_outcome_of_each_error_kind_validates(kind: str) -> None:
    meta = _stored_meta(Outcome.failed("video-encode", kind=kind, message="it went wrong"))
    VALIDATOR.validate(meta)
    assert (meta["result"]["error_kind"], meta["result"]["exit_code"]) == (kind, 1)


def test_the_schema_refuses_what_a_reader_could_not_rely_on() -> None:
    good = _stored_meta(SAMPLES["complete"])
    for broken in (
        {**good["result"], "exit_code": 2},  # complete is exit code 0
        {**good["result"], "surprise": 1},  # no undocumented field
        {**good["result"], "timings": {"started_at": 1.0}},
        {**good["result"], "events": [["no_such_event"]]},
    ):
        assert not VALIDATOR.is_valid({**good, "result": broken}), broken
    error = Outcome.failed("j", kind="no_such_kind", message="x")
    assert not VALIDATOR.is_valid(_stored_meta(error))


def test_the_readme_tables_are_the_schemas() -> None:
    text = FORMATS.read_text()
    for name, table in schema_tables(OUTCOME_SCHEMA).items():
        match = re.search(
            rf"<!-- {name}: generated from dispatchq/core/outcome.schema.json -->\n(.*?)"
            r"\n<!-- end -->",
            text,
            re.S,
        )
        assert match is not None, f"docs/formats.md: no {name} table markers"
        assert match.group(1).strip() == table.strip(), (
            f"docs/formats.md's {name} table differs from the schema; it should read:\n{table}"
        )
