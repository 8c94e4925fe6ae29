"""`dispatchq status`: where one request is, and its outcome once done."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import click

from dispatchq.cli.options import json_flag
from dispatchq.core.render import format_kv
from dispatchq.producer.api import UNKNOWN, Producer, RequestStatus

QUEUED_OR_UNKNOWN = "queued or unknown"
"""An ID with no record: a foreign producer's message not taken yet, or no such request."""
NOT_TAKEN = (
    'No record of request "{}" yet: it is still in the queue (pushed by a producer that '
    "writes no record) or does not exist"
)


@click.command("status", short_help="show the state or outcome of one request")
@click.argument("request_id")
@json_flag
def command(**options: Any) -> int:
    """Print where a request is (queued, dispatching, monitoring, done) and, once done, its
    outcome. An ID with no record yet is `queued or unknown`: a message pushed by another
    producer that no worker has taken yet looks the same as no request at all. Exit code:
    the outcome's when done, 0 while pending, 1 for an ID that is queued or unknown."""
    return run_status(argparse.Namespace(**options))


def status_lines(status: RequestStatus) -> list[str]:
    state = QUEUED_OR_UNKNOWN if status.state == UNKNOWN else status.state
    pairs = [("Request ID", status.request_id), ("State", state)]
    record, outcome = status.record, status.outcome
    if record is not None and record.job_id:
        pairs.append(("Job ID", record.job_id))
    if outcome is not None:
        pairs.append(("Exit Code", str(outcome.exit_code)))
        pairs.append(("Status", outcome.status))
    child = (outcome and outcome.dispatched_job_id) or (record and record.dispatched_job_id)
    if child:
        pairs.append(("Dispatched Job ID", child))
    eval_id = (outcome and outcome.eval_id) or (record and record.eval_id)
    if eval_id:
        pairs.append(("Evaluation ID", eval_id))
    if outcome is not None and outcome.eval_status:
        pairs.append(("Evaluation Status", outcome.eval_status))
    if outcome is not None and outcome.blocked_eval_id:
        pairs.append(("Blocked Evaluation", outcome.blocked_eval_id))
    if outcome is not None and outcome.child is not None:
        pairs.append(("Child Job Status", outcome.child.get("status") or "gone"))
    if outcome is not None and outcome.error_message:
        pairs.append(("Error", outcome.error_message))
    return format_kv(pairs)


def print_status(status: RequestStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.to_json()))
    else:
        print("\n".join(status_lines(status)))


def run_status(args: argparse.Namespace) -> int:
    with Producer() as producer:
        status = producer.result(args.request_id)
    if status.state == UNKNOWN:
        print_status(status, args.json)
        print(NOT_TAKEN.format(args.request_id), file=sys.stderr)
        return 1
    print_status(status, args.json)
    return status.outcome.exit_code if status.outcome else 0
