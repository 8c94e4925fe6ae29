"""`dispatchq worker`, `status`, `wait` and `config`: running and reading the queue."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from dispatchq.config.logging import MASK
from dispatchq.config.settings import load_settings, mask_url
from dispatchq.core.render import format_kv
from dispatchq.nomad.config import NomadConfig
from dispatchq.producer.api import UNKNOWN, Producer, RequestStatus

POOLS = ("threads", "prefork", "gevent", "solo")
QUEUED_OR_UNKNOWN = "queued or unknown"
"""An ID with no record: a foreign producer's message not taken yet, or no such request."""
NOT_TAKEN = (
    'No record of request "{}" yet: it is still in the queue (pushed by a producer that '
    "writes no record) or does not exist"
)


def register(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="run a dispatch worker (Celery) in the foreground",
        description="Run a Celery worker consuming dispatch requests. Extra arguments after "
        "`--` go to `celery worker` unchanged.",
    )
    worker.add_argument(
        "--pool",
        choices=POOLS,
        default="gevent",
        help="execution pool (default gevent: a request waiting on Nomad costs a greenlet, "
        "not a thread or a process)",
    )
    worker.add_argument(
        "--concurrency", "-c", type=int, default=1000, help="requests in flight per process"
    )
    worker.add_argument("--loglevel", default="INFO", help="Celery's own log level")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="more `celery worker` args")
    worker.set_defaults(handler=run_worker)

    status = commands.add_parser(
        "status",
        help="show the state or outcome of one request",
        description="Print where a request is (queued, dispatching, monitoring, done) and, "
        "once done, its outcome. An ID with no record yet is `queued or unknown`: a message "
        "pushed by another producer that no worker has taken yet looks the same as no "
        "request at all. Exit code: the outcome's when done, 0 while pending, 1 for an ID "
        "that is queued or unknown.",
    )
    status.add_argument("request_id")
    _json_flag(status)
    status.set_defaults(handler=run_status)

    wait = commands.add_parser(
        "wait",
        help="wait for requests to finish; exit with the worst outcome's code",
        description="Block until every request is done (woken by the result backend), then "
        "print each outcome. An ID not known yet is waited for like a queued one (a foreign "
        "producer's message may still be in the queue): without -timeout, until it ends. "
        "Exit code: 1 if any ended 1 or did not finish in time, else 2 if any ended 2, "
        "else 0.",
    )
    wait.add_argument("request_ids", nargs="+", metavar="request_id")
    wait.add_argument("-timeout", "--timeout", type=float, default=None, help="seconds")
    _json_flag(wait)
    wait.set_defaults(handler=run_wait)

    config = commands.add_parser(
        "config",
        help="print the effective settings (secrets masked)",
        description="Print the settings from DISPATCHQ_*, the config file and NOMAD_*.",
    )
    _json_flag(config)
    config.set_defaults(handler=run_config)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-json", "--json", action="store_true", help="JSON output for scripts")


def run_worker(args: argparse.Namespace) -> int:
    extra = [a for a in args.celery_args if a != "--"]
    argv = [
        sys.executable, "-m", "celery", "-A", "dispatchq.worker", "worker",
        "--pool", args.pool, "--concurrency", str(args.concurrency),
        "--loglevel", args.loglevel, *extra,
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606  (replaces this process with the worker)


def worst_exit_code(codes: Iterable[int]) -> int:
    """1 beats 2 beats 0: an error is worse than a placement failure."""
    seen = set(codes)
    return 1 if 1 in seen else 2 if 2 in seen else 0


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


def _print_status(status: RequestStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.to_json()))
    else:
        print("\n".join(status_lines(status)))


def run_status(args: argparse.Namespace) -> int:
    with Producer() as producer:
        status = producer.result(args.request_id)
    if status.state == UNKNOWN:
        _print_status(status, args.json)
        print(NOT_TAKEN.format(args.request_id), file=sys.stderr)
        return 1
    _print_status(status, args.json)
    return status.outcome.exit_code if status.outcome else 0


def run_wait(args: argparse.Namespace) -> int:
    with Producer() as producer:
        statuses = producer.wait(args.request_ids, timeout=args.timeout)
    codes = []
    for index, status in enumerate(statuses.values()):
        if index and not args.json:
            print()
        _print_status(status, args.json)
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


def _masked_nomad(nomad: NomadConfig) -> dict[str, Any]:
    data = dataclasses.asdict(nomad)
    data["address"] = mask_url(data["address"])
    if data["token"]:
        data["token"] = MASK
    if data["http_auth"]:
        user, sep, _ = data["http_auth"].partition(":")
        data["http_auth"] = f"{user}:{MASK}" if sep else user
    return data


def run_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    nomad = NomadConfig.from_env()
    data = {"dispatchq": settings.masked(), "nomad": _masked_nomad(nomad)}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for section, values in data.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value, default=str)}")
        print()
    return 0
