"""`dispatchq demo`: the one-command tour on an embedded local stack (`dispatchq.devstack`
starts the processes), a real fan-out through the Producer API, and its summary."""


from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatchq.cli.terminal import raw, safe
from dispatchq.config.settings import Settings
from dispatchq.producer.api import Producer, RequestStatus
from dispatchq.producer.batch import request_id_for

if TYPE_CHECKING:
    from dispatchq.devstack.stack import LocalStack

PROFILES = ("480p", "720p", "1080p", "4k")
RUN_MS = {"480p": 200, "720p": 300, "1080p": 500, "4k": 900}
FAILURES = {3: "corrupt source", 137: "killed (out of memory)"}
"""Exit codes a few encodes end with on purpose (one in 60): the summary shows them."""


def encode_requests(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` encode requests, each followed to its end (`until` finished): a small JSON
    payload, a profile (which sets how long the mock encode runs), sometimes a priority,
    and for one in 60 an exit code that fails it."""
    rng = random.Random(seed)  # noqa: S311  (demo data)
    items = []
    for n in range(count):
        profile = rng.choice(PROFILES)
        meta = {"profile": profile, "run_for": f"{RUN_MS[profile] + rng.randrange(200)}ms"}
        if n % 5 == 0:
            meta["priority"] = "high"
        if n % 60 == 59:
            meta["exit_code"] = "3" if n % 120 == 59 else "137"
        payload = json.dumps({"source": f"s3://media/raw/clip-{n:05d}.mov", "n": n}).encode()
        items.append({"payload": payload, "meta": meta, "until": "finished"})
    return items


def run_demo(
    count: int = 1000, workers: int = 1, console: Console | None = None, *, keep: bool = False
) -> int:
    """Start the local stack, fan out `count` requests, print the outcomes, stop the stack.

    Ctrl-C and SIGTERM (see `sigterm_as_interrupt`), while starting or fanning out, stop
    every process and return 130. With `keep`, the stack stays up after the fan-out until
    one of them, which then stops it and returns the fan-out's exit code."""
    console = console or Console(file=raw(sys.stdout))
    from dispatchq.devstack.stack import local_stack  # noqa: PLC0415  (processes: only here)

    stack_cm = local_stack(workers=workers)
    try:
        with console.status("Starting redis-server, nomadsim and a worker..."):
            stack = stack_cm.__enter__()
    except KeyboardInterrupt:  # local_stack has stopped what it had started
        console.print("[yellow]Interrupted while starting: stopped.[/]")
        return 130
    code: int | None = None
    try:
        code = _fan_out(stack, count, console)
        if keep:
            where = f" and the dashboard at {stack.web.url}" if stack.web is not None else ""
            console.print(f"Kept: the stack{where} stays up until Ctrl-C or SIGTERM.")
            threading.Event().wait()  # until KeyboardInterrupt (SIGTERM raises it too)
    except KeyboardInterrupt:
        if code is None:  # during the fan-out (else: what --keep waits for)
            console.print("[yellow]Interrupted: stopping the stack.[/]")
            return 130
    finally:
        with console.status("Stopping..."):
            stack_cm.__exit__(None, None, None)
    return code


def _fan_out(stack: LocalStack, count: int, console: Console) -> int:
    from dispatchq.devstack.stack import DEMO_JOB, DEMO_QUEUE  # noqa: PLC0415

    env = stack.env
    console.print(
        f"Stack up: redis {env['DISPATCHQ_REDIS_URL']}, nomadsim {env['NOMAD_ADDR']}, "
        f"{len(stack.workers)} worker(s), a tracker. Dispatching {count} x {DEMO_JOB}, "
        "each followed to its end."
    )
    settings = Settings(redis_url=env["DISPATCHQ_REDIS_URL"], queue=DEMO_QUEUE)
    codes: Counter[int] = Counter()
    with Producer(settings) as producer:
        started = time.monotonic()
        # One batch, each item followed to its end: the dashboard shows it as one thing.
        items = [{"payload": i["payload"], "meta": i["meta"]} for i in encode_requests(count)]
        batch = producer.dispatch_batch(DEMO_JOB, items, until="finished", preflight=False)
        ids = [request_id_for(batch, n) for n in range(1, count + 1)]
        enqueued = time.monotonic() - started
        if stack.web is not None:
            console.print(f"Dashboard: {stack.web.url}batches/{batch} (the fan-out, live)")
        columns = (
            TextColumn("[bold]encode"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "succeeded {task.fields[ok]}  failed {task.fields[wait]}  error {task.fields[err]}"
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
    failed = [s for s in statuses.values() if s.outcome is not None and s.outcome.exit_code]
    if failed:
        console.print("First failures (`dispatchq status ID` shows one in full):")
    for status in failed[:3]:
        assert status.outcome is not None
        text = safe(f"  {status.request_id}: {status.outcome.error_message}")
        console.print(text, soft_wrap=True, markup=False, highlight=False)
    return 1 if codes[1] or sum(codes.values()) < count else 0


def _task_ends(statuses: dict[str, RequestStatus]) -> tuple[Counter[int], list[float]]:
    """The task exit codes of the failed encodes, and how long every encode ran."""
    exits: Counter[int] = Counter()
    seconds = []
    for status in statuses.values():
        child = status.outcome.child if status.outcome is not None else None
        for alloc in (child or {}).get("allocations", []):
            for task in alloc.get("tasks", {}).values():
                if task.get("failed") and "exit_code" in task:
                    exits[task["exit_code"]] += 1
                if "started_at" in task and "finished_at" in task:
                    seconds.append(task["finished_at"] - task["started_at"])
    return exits, sorted(seconds)


def summary_table(
    statuses: dict[str, RequestStatus], codes: Counter[int], enqueued: float, elapsed: float
) -> Table:
    table = Table(title="dispatchq demo: outcomes")
    table.add_column("exit code")
    table.add_column("meaning")
    table.add_column("requests", justify="right")
    exits, seconds = _task_ends(statuses)
    failures = ", ".join(
        f"exit {code} ({FAILURES.get(code, 'failed')}): {n}" for code, n in sorted(exits.items())
    )
    meanings = {
        0: "succeeded: the encode ran and exited 0",
        2: f"failed: {failures or 'a task failed'}",
        1: "error (lost, stopped, unreachable...)",
    }
    for code in (0, 2, 1):
        table.add_row(str(code), meanings[code], str(codes[code]))
    unfinished = len(statuses) - sum(codes.values())
    if unfinished:
        table.add_row("-", "not finished", str(unfinished))
    ran = ""
    if seconds:
        median, p95 = seconds[len(seconds) // 2], seconds[int(len(seconds) * 0.95)]
        ran = f"; each encode ran {median:.2f}s (median), {p95:.2f}s (p95)"
    table.caption = (
        f"{len(statuses)} encodes followed to their end: enqueued in {enqueued:.2f}s, all "
        f"finished in {elapsed:.2f}s{ran}"
    )
    return table


@click.command(
    "demo", short_help="run a real fan-out on an embedded redis-server, nomadsim and worker"
)
@click.option("--count", type=int, default=1000, show_default=True, help="Requests to fan out.")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@click.option(
    "--keep", is_flag=True, help="Keep the stack and dashboard up after the fan-out, until Ctrl-C."
)
def command(**options: Any) -> int:
    """Start a private redis-server, nomadsim with a `video-encode` parameterized job, a
    worker, a tracker and the dashboard on loopback ports, dispatch encode requests with a
    live progress bar, print the outcomes, and stop everything (Ctrl-C included; with
    --keep, only on Ctrl-C or SIGTERM)."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    return run_demo(args.count, args.workers, keep=args.keep)
