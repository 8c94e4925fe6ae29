"""Nothing stored reaches the terminal raw: control characters are escaped in what the CLI
prints (`dispatchq.cli.terminal`), whichever field holds them."""

from __future__ import annotations

import json

import pytest
import redis

from dispatchq.cli.main import main
from dispatchq.cli.terminal import EscapingStream, safe
from dispatchq.core.outcome import Outcome
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.store import keys
from dispatchq.store.batches import BatchStore
from dispatchq.store.records import RecordStore, StoredResult

# Retitles the terminal, clears the screen, rings the bell, moves to the line start; and a
# C1 CSI (0x9b), which some terminals read as ESC [.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r\x9b31m done"


def test_safe_escapes_every_control_but_newline_and_tab() -> None:
    assert safe(HOSTILE) == "\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x9b31m done"
    assert safe("line\n\ttab, é, 日本, \x7f") == "line\n\ttab, é, 日本, \\x7f"


def test_the_stream_escapes_what_any_print_writes(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    stream = EscapingStream(sys.stdout)
    print(HOSTILE, file=stream)
    assert capsys.readouterr().out == safe(HOSTILE) + "\n"


def _store_failure(client: redis.Redis, rid: str, batch: str | None) -> None:
    outcome = Outcome.failed("video", kind="validation", message=f"meta key {HOSTILE} refused")
    stored = outcome.to_stored()
    meta = {"status": "SUCCESS", "result": stored, "task_id": rid, "date_done": "x"}
    result = StoredResult(keys.celery_result(rid), json.dumps(meta), 60)
    RecordStore(client, 60).mark_done(
        rid, 1, batch, stored["error_message"], result, outcome=stored
    )


@pytest.mark.parametrize("command", [["status", "t-1"], ["batch", "status", "tb"]])
def test_status_and_batch_status_print_no_control_character(
    command: list[str],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipe = redis_client.pipeline()
    BatchStore(redis_client, 60).create(pipe, "tb", "video", namespace=None, total=1)
    pipe.execute()
    redis_client.hset(keys.request("t-1"), "state", "queued")
    _store_failure(redis_client, "t-1", "tb")
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", redis_server.url)
    monkeypatch.delenv("DISPATCHQ_CONFIG", raising=False)
    capsys.readouterr()
    code = main(command)
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "pwned" in out  # the field is shown...
    assert not any(c in out + err for c in "\x1b\x07\r\x9b")  # ...with its controls escaped
    assert "\\x1b]0;pwned" in out
