"""`dispatchq batch`: fan out a file of requests, follow its progress, read its results.

dispatchq batch [submit] <job> FILE|- [--csv] [--batch-id ID] [--until finished]
                [--max-attempts N] [--wait] [-json]
dispatchq batch status ID [--wait] [-json]
dispatchq batch results ID [--failed]
dispatchq batch retry ID [--wait] [-json]
dispatchq batch cancel ID [--stop-dispatched]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatchq.cli.options import json_flag
from dispatchq.cli.terminal import raw, safe
from dispatchq.errors import DispatchqError
from dispatchq.producer.api import Producer
from dispatchq.producer.batch_input import BatchItem, read_csv, read_jsonl
from dispatchq.producer.enqueue import InvalidRequest
from dispatchq.store.batches import BatchStatus

FIRST_FAILURES = 5
"""Failures the summary lists, of the first 50 the batch keeps (`batch results --failed`
lists every item that did not succeed)."""
POLL = 0.2  # progress refresh; status reads are O(1), one HGETALL


class _BatchGroup(click.Group):
    """`dispatchq batch <job> FILE` is `dispatchq batch submit <job> FILE`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["submit", *args]
        return super().parse_args(ctx, args)


@click.group("batch", cls=_BatchGroup,
             short_help="fan out a JSONL/CSV file of requests; status, results, retry, cancel")
def command() -> None:
    """Fan out a file of requests, follow its progress, read its results: `dispatchq batch
    [submit] <job> FILE`, then `status`, `results`, `retry` or `cancel` with the batch ID."""


_wait = click.option("--wait", is_flag=True, help="Show a live progress bar until done.")


@command.command("submit", short_help="fan out a JSON Lines or CSV file of requests")
@click.argument("job")
@click.argument("file")
@click.option("--csv", is_flag=True, help="FILE is CSV (default: JSON Lines, or by .csv suffix).")
@click.option("--batch-id", help="Batch ID (re-use one to resume a batch).")
@click.option("--namespace", help="Nomad namespace of the job.")
@click.option("--tenant", help="Who the batch is for: batches take turns, grouped by tenant "
              "(weights: DISPATCHQ_TENANT_WEIGHTS).")
@click.option("--no-preflight", is_flag=True, help="Skip the check against the job's rules.")
@click.option("--until", type=click.Choice(("scheduled", "finished")), default="scheduled",
              show_default=True, help="A request is done when its evaluation is (scheduled) or "
              "when its child job is (finished: followed by `dispatchq tracker`).")
@click.option("--max-attempts", type=int, metavar="N", help="With --until finished: dispatch an "
              "item again when its own run fails (exit 2), up to N attempts in all.")
@_wait
@click.option("--notify-url", help="POST the batch's completion event here when it finishes.")
@json_flag
def submit_command(job: str, file: str, **options: Any) -> int:
    """Enqueue every item of FILE (JSON Lines, or CSV with --csv; `-` for stdin) as a
    dispatch of JOB; items the job would refuse are named, line by line, and nothing is
    enqueued."""
    return _run(lambda producer: _submit(producer, argparse.Namespace(**options), job, file))


@command.command("status", short_help="the batch's counts by stage and ending")
@click.argument("batch_id")
@_wait
@json_flag
def status_command(batch_id: str, **options: Any) -> int:
    """Counts by stage and ending, and the first failures; exit code the worst ending's once
    the batch finished."""
    return _run(lambda producer: _status(producer, argparse.Namespace(**options), batch_id))


@command.command("results", short_help="every item's outcome as a JSON line")
@click.argument("batch_id")
@click.option("--failed", is_flag=True, help="Only the items whose exit code is not 0, with "
              "line, payload_ref and meta.")
def results_command(batch_id: str, failed: bool) -> int:
    """Every item's latest attempt as a JSON line, in item order."""
    return _run(lambda producer: _results(producer, batch_id, failed=failed))


@command.command("retry", short_help="dispatch again the items that did not succeed")
@click.argument("batch_id")
@_wait
@json_flag
def retry_command(batch_id: str, **options: Any) -> int:
    """Dispatch again every item whose latest attempt ended without success, as its next
    attempt (`<request ID>~<n>`); running it twice dispatches nothing twice."""
    return _run(lambda producer: _retry(producer, argparse.Namespace(**options), batch_id))


@command.command("cancel", short_help="cancel the batch's requests not yet dispatched")
@click.argument("batch_id")
@click.option("--stop-dispatched", is_flag=True, help="Also stop the dispatched children.")
def cancel_command(batch_id: str, **options: Any) -> int:
    """Requests of the batch not yet dispatched will not be."""
    return _run(lambda producer: _cancel(producer, argparse.Namespace(**options), batch_id))


def _run(action: Callable[[Producer], int]) -> int:
    with Producer() as producer:
        try:
            return action(producer)
        except DispatchqError as err:  # InvalidRequest included
            print(f"Error: {err}", file=sys.stderr)
            return 1


def _read_items(path: str, as_csv: bool) -> list[BatchItem]:
    csv_input = as_csv or path.endswith(".csv")
    if path == "-":
        return _parse(sys.stdin, csv_input)
    try:
        with Path(path).open(encoding="utf-8", newline="") as stream:
            return _parse(stream, csv_input)
    except OSError as err:
        raise InvalidRequest(f"Error reading input data: {err}") from None


def _parse(stream: TextIO, csv_input: bool) -> list[BatchItem]:
    return list(read_csv(stream) if csv_input else read_jsonl(stream))


def _submit(producer: Producer, args: argparse.Namespace, job: str, path: str) -> int:
    items = _read_items(path, args.csv)
    batch_id = producer.dispatch_batch(
        job,
        items,
        batch_id=args.batch_id,
        namespace=args.namespace,
        preflight=not args.no_preflight,
        notify_url=args.notify_url,
        tenant=args.tenant,
        until=args.until,
        max_attempts=args.max_attempts,
    )
    if args.json and not args.wait:
        print(json.dumps({"batch_id": batch_id, "items": len(items)}))
    elif not args.wait:
        print(f"Batch ID = {batch_id}\nItems    = {len(items)}")
    if not args.wait:
        return 0
    return _follow(producer, batch_id, args.json)


def _status(producer: Producer, args: argparse.Namespace, batch_id: str) -> int:
    if args.wait:
        return _follow(producer, batch_id, args.json)
    status = producer.batch_status(batch_id)
    if status is None:
        print(f'No batch with ID "{batch_id}" found', file=sys.stderr)
        return 1
    _summary(producer, status, args.json)
    return status.worst_exit_code() if status.finished else 0


def _summary(producer: Producer, status: BatchStatus, as_json: bool) -> None:
    errors = producer.batches.errors(status.batch_id, FIRST_FAILURES)
    if as_json:
        print(json.dumps({**status.to_json(), "first_failures": errors}))
    else:
        console = Console(file=raw(sys.stdout))
        console.print(summary_table(status))
        if errors:
            console.print(f"First failures (`dispatchq batch results {status.batch_id} --failed`"
                          " lists every one):")  # fmt: skip
        for error in errors:
            line = f"  {error['request_id']}: exit {error.get('exit_code', 1)}: {error['error']}"
            console.print(safe(line), soft_wrap=True, markup=False, highlight=False)


def _follow(producer: Producer, batch_id: str, as_json: bool) -> int:
    """A live progress bar (stderr) until every request is done, then the summary."""
    status = producer.batch_status(batch_id)
    if status is None:
        print(f'No batch with ID "{batch_id}" found', file=sys.stderr)
        return 1
    console = Console(file=raw(sys.stderr))
    columns = (
        TextColumn(f"[bold]{status.job_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=as_json) as progress:
        bar = progress.add_task("batch", total=status.total, detail="")
        while True:
            status = producer.batch_status(batch_id)
            if status is None:
                print(f'Batch "{batch_id}" expired while waiting', file=sys.stderr)
                return 1
            detail = progress_line(status)
            progress.update(bar, completed=status.done, total=status.total, detail=detail)
            if status.finished:
                break
            time.sleep(POLL)
    _summary(producer, status, as_json)
    return status.worst_exit_code()


def progress_line(status: BatchStatus) -> str:
    """The live bar's counts (each item's latest attempt)."""
    codes = status.exit_codes
    if status.until == "finished":
        return (
            f"queued {status.queued}  dispatching {status.dispatching}  waiting "
            f"{status.waiting}  running {status.running}  ok {codes.get(0, 0)}  "
            f"failed {codes.get(2, 0)}  error {codes.get(1, 0)}"
        )
    return (
        f"queued {status.queued}  monitoring {status.monitoring}  "
        f"ok {codes.get(0, 0)}  placement {codes.get(2, 0)}  error {codes.get(1, 0)}"
    )


def summary_table(status: BatchStatus) -> Table:
    table = Table(title=f"batch {status.batch_id} ({status.job_id}, {status.progress})")
    table.add_column("exit code")
    table.add_column("meaning")
    table.add_column("requests", justify="right")
    if status.until == "finished":
        meanings = {0: "succeeded", 2: "failed", 1: "other error"}
    else:
        meanings = {0: "scheduled", 2: "placement failure", 1: "error"}
    for code in (0, 2, 1):
        table.add_row(str(code), meanings[code], str(status.exit_codes.get(code, 0)))
    if not status.finished and status.until == "finished":
        for name, count in (
            ("queued", status.queued), ("dispatching", status.dispatching),
            ("waiting for capacity or start", status.waiting), ("running", status.running),
        ):  # fmt: skip
            table.add_row("-", name, str(count))
    elif not status.finished:
        table.add_row("-", "queued / monitoring", f"{status.queued} / {status.monitoring}")
    if status.retries or status.max_attempts > 1:
        table.add_row("-", f"retries (max attempts {status.max_attempts})", str(status.retries))
    return table


def _retry(producer: Producer, args: argparse.Namespace, batch_id: str) -> int:
    try:
        report = producer.retry_batch(batch_id)
    except KeyError:
        print(f'No batch with ID "{batch_id}" found', file=sys.stderr)
        return 1
    if args.json and not args.wait:
        print(json.dumps({"batch_id": batch_id, **report.to_json()}))
    else:  # with --wait -json, stdout is the final status alone
        print(
            f"Batch {batch_id}: {report.retried} item(s) dispatched again; left alone: "
            f"{report.in_flight} in flight, {report.succeeded} succeeded, "
            f"{report.missing} not retryable"
            + (f", {report.taken} whose next attempt's ID is taken" if report.taken else ""),
            file=sys.stderr if args.json else sys.stdout,
        )
    if not args.wait:
        return 1 if report.missing or report.taken else 0
    return _follow(producer, batch_id, args.json)


def _results(producer: Producer, batch_id: str, *, failed: bool = False) -> int:
    if producer.batch_status(batch_id) is None:
        print(f'No batch with ID "{batch_id}" found', file=sys.stderr)
        return 1
    for line in producer.batch_results(batch_id, failed_only=failed):
        print(line)
    return 0


def _cancel(producer: Producer, args: argparse.Namespace, batch_id: str) -> int:
    try:
        stopped, errors = producer.cancel_batch(batch_id, stop_dispatched=args.stop_dispatched)
    except KeyError:
        print(f'No batch with ID "{batch_id}" found', file=sys.stderr)
        return 1
    print(f"Batch {batch_id} cancelled: requests not yet dispatched will not be.")
    if args.stop_dispatched:
        print(f"Stopped {stopped} dispatched job(s).")
    for error in errors:
        print(f"Error stopping {error}", file=sys.stderr)
    return 1 if errors else 0
