"""Batches: input parsing, preflight, and the whole fan-out against real processes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dispatchq.config.settings import Settings
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.batch import preflight, request_id_for
from dispatchq.producer.batch_input import BatchInputError, BatchItem, read_csv, read_jsonl
from dispatchq.store.batches import CANCELLED
from tests.support.nomad_jobs import sim_dispatches
from tests.support.stack import Stack

WAIT = 120
JOB = {
    "ID": "encode",
    "ParameterizedJob": {
        "Payload": "optional",
        "MetaRequired": ["profile"],
        "MetaOptional": ["tier"],
    },
}


def test_jsonl_items_and_line_numbers() -> None:
    text = (
        '{"payload": "a", "meta": {"profile": "hd"}}\n\n'
        '{"payload_ref": "data:,x", "request_id": "r9"}\n'
    )
    items = list(read_jsonl(io.StringIO(text)))
    assert [i.line for i in items] == [1, 3]
    assert items[0].payload == b"a"
    assert items[0].meta == {"profile": "hd"}
    assert items[1].payload_ref == "data:,x"
    assert items[1].request_id == "r9"


def test_jsonl_errors_name_every_bad_line() -> None:
    text = '{"payload": "a"}\nnot json\n{"meta": {"k": 1}}\n{"colour": "red"}\n'
    with pytest.raises(BatchInputError) as err:
        list(read_jsonl(io.StringIO(text)))
    message = str(err.value)
    assert "3 bad item(s), nothing was enqueued" in message
    assert "line 2: invalid JSON" in message
    assert "line 3: meta must be an object of string values" in message
    assert "line 4: unknown field(s) ['colour']" in message


def test_csv_columns_become_meta() -> None:
    text = "payload,profile,tier\nhello,hd,\nbye,sd,gold\n"
    items = list(read_csv(io.StringIO(text)))
    assert [(i.payload, i.meta, i.line) for i in items] == [
        (b"hello", {"profile": "hd"}, 2),
        (b"bye", {"profile": "sd", "tier": "gold"}, 3),
    ]


def test_preflight_names_offending_lines() -> None:
    items = [
        BatchItem(meta={"profile": "hd"}, line=1),
        BatchItem(meta={"profile": "hd", "colour": "red"}, line=2),
        BatchItem(meta={}, line=3),
        BatchItem(payload=b"x" * 16385, meta={"profile": "hd"}, line=4),
    ]
    with pytest.raises(BatchInputError) as err:
        preflight(JOB, items)
    message = str(err.value)
    assert "line 2: meta keys not permitted by encode: ['colour']" in message
    assert "line 3: required meta keys missing: ['profile']" in message
    assert "line 4: payload exceeds maximum size; 16385 > 16384" in message
    assert "line 1" not in message


def test_preflight_payload_rules() -> None:
    required = {**JOB, "ParameterizedJob": {"Payload": "required"}}
    forbidden = {**JOB, "ParameterizedJob": {"Payload": "forbidden"}}
    with pytest.raises(BatchInputError, match="line 5: payload is required by encode"):
        preflight(required, [BatchItem(line=5)])
    with pytest.raises(BatchInputError, match="line 6: payload is forbidden by encode"):
        preflight(forbidden, [BatchItem(payload=b"x", line=6)])
    with pytest.raises(BatchInputError, match='Specified job "plain" is not a parameterized job'):
        preflight({"ID": "plain"}, [BatchItem()])


@pytest.fixture
def batch_producer(running: Stack, monkeypatch: pytest.MonkeyPatch) -> Producer:
    monkeypatch.setenv("NOMAD_ADDR", running.sim.address)
    return running.producer()


def test_batch_end_to_end_and_resume(running: Stack, batch_producer: Producer) -> None:
    items = [{"payload": f"clip-{n}".encode(), "meta": {"profile": "hd"}} for n in range(150)]
    with batch_producer as producer:
        batch_id = producer.dispatch_batch("encode", items, batch_id="b-resume")
        ids = [request_id_for(batch_id, n) for n in range(1, 151)]
        statuses = producer.wait(ids, timeout=WAIT)
        assert all(s.done for s in statuses.values())
        status = producer.batch_status(batch_id)
        assert status is not None
        assert status.finished
        assert status.total == 150
        assert status.exit_codes == {0: 150}
        assert status.monitoring == 0 and status.done == 150
        assert status.worst_exit_code() == 0
        lines = [json.loads(line) for line in producer.batch_results(batch_id)]
        assert [line["request_id"] for line in lines] == ids
        assert all(line["outcome"]["exit_code"] == 0 for line in lines)
        # Resubmitting the same batch enqueues nothing: every item was dispatched.
        producer.dispatch_batch("encode", items, batch_id=batch_id)
        again = producer.batch_status(batch_id)
        assert again is not None
        assert again.done == 150
        assert again.total == 150
    children = [d for d in sim_dispatches(running.sim.address) if d["parent"] == "encode"]
    tokens = [d["idempotency_token"] for d in children if not d["repeat"]]
    assert sorted(tokens) == sorted(f"dispatchq-{rid}" for rid in ids)


def test_preflight_rejects_the_whole_batch(running: Stack, batch_producer: Producer) -> None:
    items = [{"meta": {"profile": "hd"}}, {"meta": {"nope": "x"}}]
    with batch_producer as producer, pytest.raises(BatchInputError, match="item 2"):
        producer.dispatch_batch("encode", items, batch_id="b-rejected")
    with running.producer() as producer:
        assert producer.batch_status("b-rejected") is None


def test_cancel_before_dispatch(clean: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a queue of its own: the module's shared worker, still consuming the stack's
    queue, would otherwise take a request between the enqueue and the cancel."""
    monkeypatch.setenv("NOMAD_ADDR", clean.sim.address)
    queue = "dispatchq-test-cancel"
    items = [{"meta": {"profile": "hd"}} for _ in range(20)]
    with Producer(Settings(redis_url=clean.redis.url, queue=queue)) as producer:
        batch_id = producer.dispatch_batch("encode", items, batch_id="b-cancel")
        producer.cancel_batch(batch_id)
        env = {**clean.env, "DISPATCHQ_QUEUE": queue}
        with WorkerProcess(env=env, name="canceller", log_path=clean.log_dir / "canceller.log"):
            ids = [request_id_for(batch_id, n) for n in range(1, 21)]
            statuses = producer.wait(ids, timeout=WAIT)
        status = producer.batch_status(batch_id)
    assert status is not None
    assert status.state == CANCELLED
    assert status.exit_codes == {1: 20}
    for st in statuses.values():
        assert st.outcome is not None
        assert st.outcome.error_kind == "cancelled"
    assert not [
        d for d in sim_dispatches(clean.sim.address) if "b-cancel" in d["idempotency_token"]
    ]


def test_cli_batch_wait_prints_summary_and_exit_code(running: Stack, tmp_path: Path) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps({"meta": {"profile": "sd"}}) + "\n" for _ in range(30)))
    env = {**running.env, "DISPATCHQ_LOG_FORMAT": "json"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatchq.cli.main",
            "batch",
            "encode",
            str(source),
            "--wait",
            "--batch-id",
            "b-cli",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "batch b-cli (encode, finished)" in proc.stdout
    status = subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "batch", "status", "b-cli", "-json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert json.loads(status.stdout)["exit_codes"] == {"0": 30}
