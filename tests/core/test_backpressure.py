"""The backpressure gate against a real redis-server; Nomad's summary is a stub function."""

from __future__ import annotations

import time

import pytest
import redis

from dispatchq.core.backpressure import (
    FLOOR_SHARE,
    PREFETCH,
    SUMMARY_MAX_AGE,
    DispatchGate,
    GatePolicy,
    Throttled,
    resources_exhausted,
    unfinished_children,
)
from dispatchq.core.outcome import Outcome, PlacementFailure, Timings
from dispatchq.errors import NotFound, TransportError
from dispatchq.store import keys


class Children:
    """Nomad's answer for a job's unfinished children, settable; counts the reads."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.reads = 0
        self.error: Exception | None = None

    def __call__(self, job_id: str, namespace: str) -> int:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.count


class Sleeps:
    """Records the pauses the gate asks for, and really sleeps them (Redis's clock runs)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        time.sleep(seconds)


def gate(client: redis.Redis, children: Children | None = None, **policy: float) -> DispatchGate:
    settings = {"rate": 1000.0, "burst": 1000, **policy}
    return DispatchGate(
        client,
        GatePolicy(
            rate=float(settings["rate"]),
            burst=int(settings["burst"]),
            max_unfinished_children=int(settings.get("cap", 0)),
            max_wait=float(settings.get("max_wait", 5.0)),
        ),
        children or Children(),
        sleep=Sleeps(),
    )


def rate_of(client: redis.Redis) -> float:
    return float(client.hget(keys.RATE, "rate") or 0)


def test_a_burst_passes_at_once_then_the_rate_spaces_dispatches(
    redis_client: redis.Redis,
) -> None:
    g = gate(redis_client, rate=50, burst=5)
    for _ in range(5):
        assert not g.admit("encode", "default")
    for _ in range(5):
        g.admit("encode", "default")
    asked = g.sleep.asked  # type: ignore[attr-defined]
    # Five more at 50/s: each waits for its slot, ~20 ms apart, ~100 ms in all.
    assert len(asked) >= 4
    assert 0.05 <= sum(asked) <= 0.2
    assert redis_client.ttl(keys.RATE) > 0


def test_tokens_are_taken_in_batches(redis_client: redis.Redis) -> None:
    g = gate(redis_client, rate=2000, burst=1000)
    redis_client.config_resetstat()
    for _ in range(200):
        g.admit("encode", "default")
    calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
    # Up to 2000 * PREFETCH = 100 tokens per round trip; one per dispatch would be 200.
    assert calls <= 200 / (2000 * PREFETCH) * 10


def test_at_the_rate_limit_tokens_are_reserved_ahead_not_polled_for(
    redis_client: redis.Redis,
) -> None:
    """200 dispatches at 500/s with no burst: the rate binds all along, yet the gate makes
    about one call per PREFETCH's worth of them (each token reserved is spent at its
    turn), and the dispatches are still spaced at the rate: ~0.4 s in all."""
    g = gate(redis_client, rate=500, burst=1)
    redis_client.config_resetstat()
    started = time.monotonic()
    for _ in range(200):
        g.admit("encode", "default")
    took = time.monotonic() - started
    calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls <= 200 / (500 * PREFETCH) * 3  # polling would be 200 or more
    assert took >= 0.3  # the rate held: 199 intervals of 2 ms


def test_the_rate_is_shared_by_every_gate_on_the_same_redis(redis_client: redis.Redis) -> None:
    first, second = gate(redis_client, rate=20, burst=2), gate(redis_client, rate=20, burst=2)
    first.admit("encode", "default")
    first.admit("encode", "default")
    second.admit("encode", "default")  # the burst is spent: the second gate waits too
    assert second.sleep.asked  # type: ignore[attr-defined]


def test_overload_halves_the_rate_once_per_cooldown(redis_client: redis.Redis) -> None:
    g = gate(redis_client, rate=100)
    assert g.overloaded("429") == pytest.approx(50, rel=0.01)
    assert g.overloaded("429") == pytest.approx(50, rel=0.05)  # the same burst of 429s
    assert rate_of(redis_client) == pytest.approx(50, rel=0.01)
    redis_client.hset(keys.RATE, "cut_at", time.time() - 60)  # long ago: climbed back
    assert g.overloaded("resources exhausted") == pytest.approx(50, rel=0.01)


def test_overload_never_cuts_below_the_floor(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dispatchq.core.backpressure.RECOVERY_SECONDS", 1e9)  # no climbing back
    g = gate(redis_client, rate=100)
    rates = []
    for _ in range(10):
        rates.append(g.overloaded("429"))
        redis_client.hset(keys.RATE, "cut_at", time.time() - 2)  # past the cooldown
    assert rates[:3] == pytest.approx([50, 25, 12.5], rel=0.01)
    assert rates[-1] == pytest.approx(100 * FLOOR_SHARE)


def test_a_slowed_rate_makes_dispatches_wait_longer(redis_client: redis.Redis) -> None:
    g = gate(redis_client, rate=1000, burst=1)
    redis_client.hset(keys.RATE, mapping={"rate": 10.0, "cut_at": time.time()})
    g.admit("encode", "default")
    g.admit("encode", "default")
    assert g.sleep.asked  # type: ignore[attr-defined]
    assert sum(g.sleep.asked) > 0.08  # type: ignore[attr-defined]  # ~100 ms at 10/s, not 1 ms


def test_a_wait_beyond_max_wait_is_throttled(redis_client: redis.Redis) -> None:
    g = gate(redis_client, rate=1, burst=1, max_wait=0.2)
    g.admit("encode", "default")
    with pytest.raises(Throttled, match="requeued") as caught:
        g.admit("encode", "default")
    assert caught.value.retryable


def test_the_children_cap_admits_up_to_the_cap_then_waits_for_children_to_finish(
    redis_client: redis.Redis,
) -> None:
    children = Children(count=1)
    g = gate(redis_client, children, cap=3, max_wait=0.3)
    g.admit("encode", "default")
    g.admit("encode", "default")  # 1 running + 2 admitted = the cap
    with pytest.raises(Throttled, match="cap of 3"):
        g.admit("encode", "default")
    assert children.reads == 1  # one summary read; the rest came from Redis
    children.count = 0  # the children finished
    time.sleep(SUMMARY_MAX_AGE)
    g.admit("encode", "default")
    assert children.reads == 2
    assert redis_client.ttl(keys.children("default", "encode")) > 0


def test_the_cap_is_per_job_and_namespace(redis_client: redis.Redis) -> None:
    g = gate(redis_client, Children(count=2), cap=2, max_wait=0.1)
    with pytest.raises(Throttled):
        g.admit("encode", "default")
    other = gate(redis_client, Children(count=0), cap=2, max_wait=0.1)
    other.admit("thumbnail", "default")
    other.admit("encode", "staging")


def test_one_summary_read_serves_every_gate(redis_client: redis.Redis) -> None:
    first, second = Children(count=0), Children(count=0)
    gate(redis_client, first, cap=10).admit("encode", "default")
    gate(redis_client, second, cap=10).admit("encode", "default")
    assert (first.reads, second.reads) == (1, 0)


def test_a_retryable_summary_error_is_raised_and_frees_the_refresh(
    redis_client: redis.Redis,
) -> None:
    children = Children()
    children.error = TransportError("connection refused", sent=False)
    g = gate(redis_client, children, cap=2)
    with pytest.raises(TransportError):
        g.admit("encode", "default")
    assert not redis_client.exists(keys.children_refresh("default", "encode"))
    children.error = NotFound("job not found", status=404)  # the dispatch will say so
    assert not g.admit("encode", "default")


def test_unfinished_children_counts_pending_and_running() -> None:
    summary: dict[str, object] = {"Children": {"Pending": 2, "Running": 3, "Dead": 40}}
    assert unfinished_children(summary) == 5
    assert unfinished_children({"Children": None}) == 0


def test_only_exhausted_resources_count_as_overload() -> None:
    def outcome(metric: dict[str, object]) -> Outcome:
        failure = PlacementFailure(failures=1, metric=metric)
        return Outcome(
            status="placement_failed",
            job_id="encode",
            timings=Timings(started_at=0.0),
            placement_failures={"encode": failure},
        )

    assert resources_exhausted(outcome({"NodesExhausted": 2, "NodesEvaluated": 2}))
    assert resources_exhausted(outcome({"QuotaExhausted": ["q"]}))
    assert not resources_exhausted(outcome({"ConstraintFiltered": {"${attr.os}": 2}}))
