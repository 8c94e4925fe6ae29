"""The dead-letter list is bounded in entries and bytes, whatever is dead-lettered (issue 15:
twenty-one 10 MB messages used to make it 264 MB)."""

from __future__ import annotations

import json
from typing import Any

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatchq.broker.deadletter import dead_letter
from dispatchq.store import dlq, keys

texts = st.text(max_size=64) | st.builds(lambda c, n: c * n, st.sampled_from(
    ["x", "\x00", "\u2603", "\"", "\\", "\U0001f600"]), st.integers(0, 200_000))  # fmt: skip


@given(reason=texts, message=st.none() | texts, details=st.dictionaries(st.text(max_size=4),
       texts, max_size=3), task_id=st.none() | texts)  # fmt: skip
@settings(max_examples=150, deadline=None, database=None)
def test_every_entry_fits_its_cap(
    reason: str, message: str | None, details: dict[str, Any], task_id: str | None
) -> None:
    entry = dlq.DeadLetter(reason=reason, kind="malformed", task_id=task_id, message=message,
                           details=details)  # fmt: skip
    text = dlq.encode(entry)
    assert len(text.encode()) <= dlq.MAX_ENTRY_BYTES
    parsed = dlq.DeadLetter.parse(text)
    assert parsed.kind == "malformed" and parsed.reason[:100] == reason[:100]
    if message is not None and len(message) <= 1000 and len(text) < dlq.MAX_ENTRY_BYTES // 6:
        assert parsed.message == message
    if parsed.message is not None and parsed.message != message:
        assert parsed.message.endswith("...[truncated]") and not parsed.replayable


def test_the_list_keeps_the_newest_entries_within_its_byte_bound(
    redis_client: redis.Redis,
) -> None:
    big = "y" * 10_000_000  # the 10 MB message of the issue, as message and as details
    for index in range(dlq.MAX_ENTRIES + 20):
        kwargs = {"payload_ref": big} if index % 100 == 0 else {"n": index}
        message = big if index % 100 == 1 else json.dumps({"n": index})
        dead_letter(redis_client, reason=f"bad {index}", message=message, kwargs=kwargs)
    assert redis_client.llen(keys.DLQ) == dlq.MAX_ENTRIES
    assert dlq.entries(redis_client)[0].reason == "bad 20"  # the oldest 20 trimmed
    assert redis_client.ttl(keys.DLQ) > 0
    used = int(redis_client.memory_usage(keys.DLQ, samples=0) or 0)
    assert used <= dlq.MAX_ENTRIES * dlq.MAX_ENTRY_BYTES
    assert used < 2_000_000  # small entries stay small: 11 big ones cost 32 KiB each


def test_only_delivery_cap_entries_replay() -> None:
    entry = dlq.DeadLetter(reason="r", kind="unknown_task", queue="q", message="{}")
    assert not entry.replayable
    assert dlq.DeadLetter(reason="r", kind="delivery_cap", queue="q", message="{}").replayable


def test_an_eta_is_honoured_only_as_far_as_our_retries_go() -> None:
    from datetime import UTC, datetime, timedelta

    from dispatchq.broker.poison import eta_problem

    now = datetime.now(UTC)
    assert eta_problem(None, 30) is None
    assert eta_problem((now + timedelta(seconds=20)).isoformat(), 30) is None  # a retry
    assert eta_problem((now + timedelta(seconds=20)).replace(tzinfo=None).isoformat(), 30) is None
    assert eta_problem("not a date", 30) is None  # Celery refuses it: invalid_task
    far = eta_problem((now + timedelta(days=3)).isoformat(), 30)
    assert far is not None and "asks to run 259200 s from now" in far
