"""Nomad misbehaving (500 "No cluster leader", 429, cut connections, timeouts) and Nomad
refusing (validation errors): retried when it helps, never when it cannot."""

from __future__ import annotations

import pytest
import requests

from dispatchq.cli.main import main
from tests.support.faults import REDELIVERY, Accounting, FaultStack, token
from tests.support.nomad_jobs import add_fault, clear_faults

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _stats(address: str) -> dict[str, object]:
    response = requests.get(f"{address}/_sim/stats", timeout=10)
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


def _route_count(address: str, route: str) -> int:
    by_route = _stats(address)["requests_by_route"]
    assert isinstance(by_route, dict)
    return int(by_route.get(route, 0))


def _injected(address: str) -> int:
    injected = _stats(address)["faults_injected"]
    assert isinstance(injected, dict)
    return sum(int(n) for n in injected.values())


def test_thirty_percent_of_nomad_requests_fail(fault_stack: FaultStack) -> None:
    """About 30% of every Nomad call fails (10% 500 "No cluster leader", 10% 429, 10% cut
    connections) and three dispatches time out: every request succeeds, with one child."""
    # A time limit above the Nomad client's 10 s timeout, so the timeouts are retried.
    stack = fault_stack.with_env(DISPATCHQ_TASK_TIME_LIMIT="30")
    address = stack.sim.address
    before = _injected(address)
    calls_before = _stats(address)["requests"]
    for rule in (
        {"kind": "slow", "route": "dispatch", "delay_ms": 11_000, "count": 3},  # > 10 s timeout
        {"kind": "error", "probability": 0.10},
        {"kind": "rate_limit", "probability": 0.10 / 0.90},
        {"kind": "cut", "probability": 0.10 / 0.80},
    ):
        add_fault(address, rule)
    count = 300
    workers = [w.start() for w in stack.workers(2)]
    try:
        with stack.producer() as producer:
            ids = [producer.enqueue("encode", meta={"profile": "hd"}) for _ in range(count)]
            accounting = Accounting.of(stack, producer, ids, timeout=90 + REDELIVERY)
    finally:
        clear_faults(address)
        for worker in workers:
            worker.stop()
    injected = _injected(address) - before
    calls = int(str(_stats(address)["requests"])) - int(str(calls_before))
    stack.report(
        "nomadsim 30% 500/429/cut + timeouts",
        requests=count,
        faults=f"{injected} of {calls} Nomad calls failed",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"{sum(accounting.dispatches.repeats[token(r)] for r in ids)} idempotent repeats",
    )
    assert injected >= 0.2 * calls  # about 30% of every Nomad call failed
    accounting.assert_each_succeeded_once(ids)


VALIDATION = [
    ("encode", {"profile": "hd", "wrong": "x"}, None,
     "Dispatch request included unpermitted metadata keys: [wrong]"),
    ("encode", {}, None, "Dispatch did not provide required meta keys: [profile]"),
    ("needs-payload", {}, None, "Payload is not provided but required by parameterized job"),
    ("no-payload", {}, b"{}", "Payload provided but forbidden by parameterized job"),
]  # fmt: skip


def test_validation_errors_are_not_retried(
    fault_stack: FaultStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Requests Nomad refuses end at once with exit code 1 and Nomad's own words: one
    dispatch call each, no child, and `dispatchq wait` exits 1 printing the message."""
    stack = fault_stack
    address = stack.sim.address
    calls_before = _route_count(address, "dispatch")
    with stack.worker("w1"), stack.producer() as producer:
        ids = {
            producer.enqueue(job, meta=meta, payload=payload): text
            for job, meta, payload, text in VALIDATION
        }
        accounting = Accounting.of(stack, producer, list(ids), timeout=30)
    calls = _route_count(address, "dispatch") - calls_before
    for rid, text in ids.items():
        outcome = accounting.statuses[rid].outcome
        assert outcome is not None
        assert (outcome.exit_code, outcome.error_kind) == (1, "validation"), outcome
        assert outcome.error_message is not None
        assert text in outcome.error_message
    assert accounting.children_of(ids) == {0: len(ids)}
    assert calls == len(ids), "a validation error was retried"

    for name in ("DISPATCHQ_REDIS_URL", "DISPATCHQ_QUEUE"):
        monkeypatch.setenv(name, stack.env[name])
    assert main(["wait", *ids]) == 1
    printed = capsys.readouterr().out
    for text in ids.values():
        assert text in printed
    stack.report(
        "validation errors",
        requests=len(ids),
        faults="4 kinds of refusal",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
        notes=f"{calls} dispatch calls for {len(ids)} requests: no retry",
    )
