"""Shared helpers for the benchmarks: medians over runs, a results table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_rate(run: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Median items/s of `repeats` runs of `run` (which returns the item count)."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates), rates


def interleaved_rates(
    runs: dict[str, Callable[[], int]], repeats: int
) -> list[tuple[str, float, list[float]]]:
    """`median_rate` of each, run in turns (run 1 of each, then run 2...), so that a load
    that comes and goes on the machine falls on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            count = run()
            rates[name].append(count / (time.perf_counter() - started))
    return [(name, statistics.median(each), each) for name, each in rates.items()]


def report(title: str, rows: list[tuple[str, float, list[float]]], unit: str = "/s") -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _, _ in rows)
    for name, median, runs in rows:
        each = ", ".join(f"{r:,.0f}" for r in runs)
        print(f"  {name:<{width}}  median {median:>10,.0f}{unit}   runs: {each}")


def ratio(label: str, ours: float, baseline: float, target: float, at_least: bool = True) -> bool:
    value = ours / baseline if baseline else float("inf")
    ok = value >= target if at_least else value <= target
    sign = ">=" if at_least else "<="
    print(f"  {label}: {value:.2f}x (target {sign} {target}x) {'OK' if ok else 'MISSED'}")
    return ok
