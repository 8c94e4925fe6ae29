"""`dispatchq demo`: a real fan-out of encode requests on an embedded local stack (the
Producer API on top of `devstack`, which starts the processes and never imports producer)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import Settings
from devstack.stack import DEMO_JOB, DEMO_QUEUE, LocalStack, local_stack
from producer.api import Producer, RequestStatus

PROFILES = ("480p", "720p", "1080p", "4k")


def encode_requests(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` encode requests: a small JSON payload each, a profile, sometimes a priority."""
    rng = random.Random(seed)  # noqa: S311  (demo data)
    items = []
    for n in range(count):
        meta = {"profile": rng.choice(PROFILES)}
        if n % 5 == 0:
            meta["priority"] = "high"
        payload = json.dumps({"source": f"s3://media/raw/clip-{n:05d}.mov", "n": n}).encode()
        items.append({"payload": payload, "meta": meta})
    return items


def run_demo(count: int = 1000, workers: int = 1, console: Console | None = None) -> int:
    """Start the local stack, fan out `count` requests, print the outcomes, stop the stack.

    Ctrl-C and SIGTERM (see `sigterm_as_interrupt`), while starting or fanning out, stop
    every process and return 130."""
    console = console or Console()
    stack_cm = local_stack(workers=workers)
    try:
        with console.status("Starting redis-server, nomadsim and a worker..."):
            stack = stack_cm.__enter__()
    except KeyboardInterrupt:  # local_stack has stopped what it had started
        console.print("[yellow]Interrupted while starting: stopped.[/]")
        return 130
    try:
        return _fan_out(stack, count, console)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted: stopping the stack.[/]")
        return 130
    finally:
        with console.status("Stopping..."):
            stack_cm.__exit__(None, None, None)


def _fan_out(stack: LocalStack, count: int, console: Console) -> int:
    env = stack.env
    console.print(
        f"Stack up: redis {env['DISPATCHQ_REDIS_URL']}, nomadsim {env['NOMAD_ADDR']}, "
        f"{len(stack.workers)} worker(s). Dispatching {count} x {DEMO_JOB}."
    )
    settings = Settings(redis_url=env["DISPATCHQ_REDIS_URL"], queue=DEMO_QUEUE)
    codes: Counter[int] = Counter()
    with Producer(settings) as producer:
        started = time.monotonic()
        ids = [producer.enqueue(DEMO_JOB, **item) for item in encode_requests(count)]
        enqueued = time.monotonic() - started
        columns = (
            TextColumn("[bold]encode"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "ok {task.fields[ok]}  placement-wait {task.fields[wait]}  err {task.fields[err]}"
            ),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("encode", total=count, ok=0, wait=0, err=0)

            def done(status: RequestStatus) -> None:
                assert status.outcome is not None
                codes[status.outcome.exit_code] += 1
                progress.update(bar, advance=1, ok=codes[0], wait=codes[2], err=codes[1])

            statuses = producer.wait(ids, timeout=600, on_done=done)
        elapsed = time.monotonic() - started
    console.print(summary_table(statuses, codes, enqueued, elapsed))
    examples = [s for s in statuses.values() if s.outcome is not None][:3]
    for status in examples:
        assert status.outcome is not None
        console.print(
            f"  {status.request_id}: exit {status.outcome.exit_code}, "
            f"{status.outcome.dispatched_job_id}, eval {status.outcome.eval_status}"
        )
    return 1 if codes[1] or sum(codes.values()) < count else 0


def summary_table(
    statuses: dict[str, RequestStatus], codes: Counter[int], enqueued: float, elapsed: float
) -> Table:
    table = Table(title="dispatchq demo: outcomes")
    table.add_column("exit code")
    table.add_column("meaning")
    table.add_column("requests", justify="right")
    meanings = {0: "scheduled", 2: "placement failed (blocked eval waits)", 1: "error"}
    for code in (0, 2, 1):
        table.add_row(str(code), meanings[code], str(codes[code]))
    unfinished = len(statuses) - sum(codes.values())
    if unfinished:
        table.add_row("-", "not finished", str(unfinished))
    table.caption = (
        f"{len(statuses)} requests: enqueued in {enqueued:.2f}s, all done in {elapsed:.2f}s "
        f"({len(statuses) / elapsed:.0f}/s end to end)"
    )
    return table
