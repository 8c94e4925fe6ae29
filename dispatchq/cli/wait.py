"""`dispatchq wait`: block until requests end; exit with the worst outcome's code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import click

from dispatchq.cli.options import DURATION, json_flag
from dispatchq.cli.status import NOT_TAKEN, print_status
from dispatchq.producer.api import UNKNOWN, Producer


@click.command("wait", short_help="wait for requests to finish; exit with the worst outcome's code")
@click.argument("request_ids", nargs=-1, required=True, metavar="REQUEST_ID...")
@click.option("-timeout", "--timeout", type=DURATION, default=None,
              help="Stop waiting after this long (seconds, or 90s, 5m).")
@json_flag
def command(**options: Any) -> int:
    """Block until every request is done (woken by the result backend), then print each
    outcome. An ID not known yet is waited for like a queued one (a foreign producer's
    message may still be in the queue): without -timeout, until it ends. Exit code: 1 if any
    ended 1 or did not finish in time, else 2 if any ended 2, else 0."""
    return run_wait(argparse.Namespace(**options))


def worst_exit_code(codes: Iterable[int]) -> int:
    """1 beats 2 beats 0: an error is worse than a placement failure."""
    seen = set(codes)
    return 1 if 1 in seen else 2 if 2 in seen else 0


def run_wait(args: argparse.Namespace) -> int:
    with Producer() as producer:
        statuses = producer.wait(args.request_ids, timeout=args.timeout)
    codes = []
    for index, status in enumerate(statuses.values()):
        if index and not args.json:
            print()
        print_status(status, args.json)
        if status.state == UNKNOWN:
            print(NOT_TAKEN.format(status.request_id), file=sys.stderr)
        codes.append(status.outcome.exit_code if status.outcome else 1)
    unfinished = [s.request_id for s in statuses.values() if not s.done]
    if unfinished:
        print(
            f"Timed out after {args.timeout}s waiting for {len(unfinished)} request(s)",
            file=sys.stderr,
        )
    return worst_exit_code(codes)
