"""The request record's one owner: its docstring against what its scripts write, the state
machine against the states they write, and the scripts as package data; then the scripts
on a real redis-server."""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path

import redis

from dispatchq.store import keys, records
from dispatchq.store.records import (
    DELIVERIES,
    FIELDS,
    TRANSITIONS,
    RecordStore,
    RequestState,
    StoredResult,
)
from dispatchq.store.scripts import SCRIPTS

LUA = files("dispatchq.store") / "lua"
# A script writes the record through the variable `record` (a convention the test needs):
# redis.call('HSET', record, 'state', 'done', 'exit_code', ARGV[2])
_WRITE = re.compile(r"redis\.p?call\(\s*'(HSET|HSETNX|HINCRBY|HDEL)',\s*record,\s*([^)]*)\)")
_STATE = re.compile(r"'HSET(?:NX)?',\s*record,\s*'state',\s*'(\w+)'")
_DOC_FIELD = re.compile(r"^- ((?:`\w+`(?:, )?)+) \(([^)]*)\)", re.MULTILINE)


def written_fields(text: str) -> set[str]:
    """The record fields a script writes (HSET's every other argument, and so on)."""
    fields: set[str] = set()
    for command, arguments in _WRITE.findall(text):
        args = [a.strip() for a in arguments.split(",")]
        named = args[0::2] if command == "HSET" else args if command == "HDEL" else args[:1]
        for name in named:
            assert re.fullmatch(r"'\w+'", name), f"a record field named by {name}, not a literal"
            fields.add(name.strip("'"))
    return fields


def documented() -> dict[str, set[str]]:
    """Per field of the docstring's list, the scripts it says write (or clear) it."""
    doc = records.__doc__ or ""
    out: dict[str, set[str]] = {}
    for names, writers in _DOC_FIELD.findall(doc):
        for name in re.findall(r"`(\w+)`", names):
            out[name] = set(re.findall(r"(\w+)\.lua", writers))
    return out


def scripts() -> dict[str, str]:
    return {
        entry.name.removesuffix(".lua"): entry.read_text(encoding="utf-8")
        for entry in LUA.iterdir()
        if entry.name.endswith(".lua")
    }


def test_the_docstring_names_every_field_and_every_script_that_writes_it() -> None:
    doc = documented()
    actual: dict[str, set[str]] = {}
    for name, text in scripts().items():
        for field in written_fields(text):
            actual.setdefault(field, set()).add(name)
    assert set(doc) == set(FIELDS)
    assert {field: doc[field] for field in actual} == actual
    unwritten = set(doc) - set(actual)
    assert not unwritten, f"documented, written by no script: {unwritten}"


def test_the_python_side_names_the_same_fields() -> None:
    assert DELIVERIES in FIELDS
    read = set(records.RequestRecord.__dataclass_fields__) - {"request_id"}
    assert read <= set(FIELDS)  # every field the record is read into is one of them
    assert "started_at" in read


def test_the_scripts_write_only_states_of_the_state_machine() -> None:
    written = {state for text in scripts().values() for state in _STATE.findall(text)}
    assert written == {s.value for s in RequestState}
    assert set(TRANSITIONS) == {None, *RequestState}


def test_storing_an_outcome_is_written_once() -> None:
    texts = scripts()
    definitions = [name for name, text in texts.items() if "local function store_result" in text]
    assert definitions == ["_store"]
    assert "store_result(" in SCRIPTS["done"] and "store_result(" in SCRIPTS["store_result"]
    assert all("PUBLISH" not in text for name, text in texts.items() if name != "_store")


def test_the_scripts_ship_as_package_data() -> None:
    config = tomllib.loads(Path("pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["dispatchq.store"]
    for name in scripts():
        assert any(fnmatch(f"lua/{name}.lua", pattern) for pattern in patterns), name
    assert set(SCRIPTS) == {name for name in scripts() if not name.startswith("_")}


def test_every_script_is_a_lua_file_with_its_keys_and_argv_written_at_the_top() -> None:
    for name, text in scripts().items():
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        if not name.startswith("_"):  # a library's functions say what they take
            assert "KEYS" in header and "ARGV" in header, name
    root = Path(__file__).resolve().parents[2] / "dispatchq"
    for folder, _, names in os.walk(root, followlinks=True):
        for file in (Path(folder, n) for n in names if n.endswith(".py")):
            assert "redis.call(" not in file.read_text(encoding="utf-8"), f"Lua in {file}"


# -- the scripts on Redis ---------------------------------------------------------------


def test_a_request_record_through_its_states(redis_client: redis.Redis) -> None:
    store = RecordStore(redis_client, 60)
    redis_client.set("blob-key", b"payload")
    redis_client.hset(keys.request("r-1"), "state", "queued")  # enqueued in batch b-1
    before = time.time()
    begun = store.begin("r-1", "video", "b-1", read="blob-key")
    assert begun[:5] == ("", "", False, b"payload", "")
    assert begun.taken_at is not None and begun.taken_at >= before
    store.mark_dispatched("r-1", "video/dispatch-1", "e-1")
    store.mark_dispatched("r-1", "video/dispatch-1", "e-1")  # written twice: nothing moves
    result = StoredResult(keys.celery_result("r-1"), '{"status": "SUCCESS"}', 60)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(result.key)
    store.mark_done("r-1", 0, "b-1", result=result)
    store.mark_done("r-1", 1, "b-1", error="late", result=StoredResult(result.key, "x", 60))
    record = store.load("r-1")
    assert record is not None
    assert (record.state, record.job_id, record.batch_id) == (RequestState.DONE, "video", "b-1")
    assert (record.dispatched_job_id, record.eval_id, record.exit_code) == (
        "video/dispatch-1", "e-1", 0
    )  # fmt: skip
    assert record.started_at is not None
    assert redis_client.get(result.key) == b'{"status": "SUCCESS"}'
    counters = redis_client.hgetall(keys.batch("b-1"))
    # taken (dispatching, then monitoring: one counter), then done
    assert counters == {b"done": b"1", b"exit:0": b"1", b"st:dispatching": b"0"}
    published = []
    while message := pubsub.get_message(timeout=0.2):
        if message["type"] == "message":
            published.append(message["data"])
    assert published == [b'{"status": "SUCCESS"}']  # once: the late finish stored nothing
    pubsub.close()


def test_a_redelivered_request_that_was_dispatched_is_not_taken_again(
    redis_client: redis.Redis,
) -> None:
    store = RecordStore(redis_client, 60)
    first = store.begin("r-1", "video", None)
    store.mark_dispatched("r-1", "video/dispatch-1", "e-1")
    again = store.begin("r-1", "video", None)
    assert again[:5] == ("video/dispatch-1", "e-1", False, None, "")
    assert again.taken_at == first.taken_at  # wait_timeout counts from the first take
    record = store.load("r-1")
    assert record is not None and record.state is RequestState.MONITORING


def test_a_followed_childs_outcome_so_far_is_kept_compressed(redis_client: redis.Redis) -> None:
    """`keys.partial` holds it zlib-compressed (its IDs repeat: about half the bytes), and a
    plain JSON one written before that still reads."""
    store = RecordStore(redis_client, 60)
    redis_client.hset(keys.request("p1"), "state", "monitoring")
    partial = {"status": "complete", "eval_id": "e1", "events": [
        ["MonitorStarted", "ab8e0a4f-5b4c-4f1a-9a3b-4c2d7d0e6f10"],
        ["AllocationPlaced", "ab8e0a4f-5b4c-4f1a-9a3b-4c2d7d0e6f10", "c0ffee00-aaaa"],
        ["EvalFinished", "ab8e0a4f-5b4c-4f1a-9a3b-4c2d7d0e6f10", "complete"]]}  # fmt: skip
    assert store.hand_off("p1", "default", partial, None)
    raw = redis_client.get(keys.partial("p1"))
    assert isinstance(raw, bytes) and not raw.startswith(b"{")
    plain = json.dumps({k: v for k, v in partial.items() if k != "eval_id"},
                       separators=(",", ":"))  # fmt: skip
    assert len(raw) < len(plain) and store.load_partial("p1") == plain
    redis_client.set(keys.partial("p1"), plain)
    assert store.load_partial("p1") == plain


def test_a_batchs_cancel_flag_is_read_once_by_the_requests_that_ask_together(
    redis_client: redis.Redis,
) -> None:
    def hgets() -> int:
        stats = redis_client.info("commandstats").get("cmdstat_hget", {"calls": 0})
        return int(stats["calls"])

    store = RecordStore(redis_client, 60)
    redis_client.hset(keys.batch("b-1"), "state", "open")
    before = hgets()
    assert not any(store.batch_cancelled("b-1") for _ in range(20))
    assert hgets() - before == 1
    redis_client.hset(keys.batch("b-1"), "state", "cancelled")
    time.sleep(records.CANCEL_FLAG_AGE * 2)
    assert store.batch_cancelled("b-1")  # read again once the flag is that old
