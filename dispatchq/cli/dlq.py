"""`dispatchq dlq list|replay|purge`: the dead-letter list (see `dispatchq.store.dlq`)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
import redis

from dispatchq.cli.options import json_flag
from dispatchq.config.settings import load_settings
from dispatchq.core.render import format_kv
from dispatchq.store import dlq


@click.group("dlq", short_help="list, replay or purge dead-lettered messages")
def command() -> None:
    """Messages a worker could not run (undecodable, malformed, unknown task, invalid
    request, past the delivery cap, refused by Redis) are kept with the reason."""


@command.command("list", short_help="show the dead letters, oldest first")
@json_flag
def list_command(**options: Any) -> int:
    """Show the dead letters, oldest first."""
    return run_list(argparse.Namespace(**options))


@command.command("replay", short_help="put dead-lettered messages back on their queue")
@click.argument("task_ids", nargs=-1, metavar="[REQUEST_ID]...")
@click.option("-all", "--all", "all", is_flag=True, help="Every replayable entry.")
def replay_command(**options: Any) -> int:
    """Re-enqueue the original message of each named request (or of every replayable entry
    with -all) and remove it from the list. Only entries of kind delivery_cap or store are
    replayed: the others would fail again. Exit code 1 if any named request could not be
    replayed."""
    return run_replay(argparse.Namespace(**options))


@command.command("purge", short_help="delete every dead letter")
def purge_command() -> int:
    """Delete every dead letter."""
    return run_purge(argparse.Namespace())


def _client() -> redis.Redis:
    return load_settings().redis.client()


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def run_list(args: argparse.Namespace) -> int:
    with _client() as client:
        entries = dlq.entries(client)
    if args.json:
        rows = [{**e.to_json(), "replayable": e.replayable} for e in entries]
        print(json.dumps(rows, indent=2))
        return 0
    if not entries:
        print("No dead letters")
        return 0
    for index, entry in enumerate(entries):
        if index:
            print()
        pairs = [
            ("Time", _when(entry.at)),
            ("Kind", entry.kind),
            ("Reason", entry.reason),
            ("Request ID", entry.task_id or "-"),
            ("Task", entry.task or "-"),
            ("Queue", entry.queue or "-"),
            ("Replayable", "yes" if entry.replayable else "no"),
        ]
        print("\n".join(format_kv(pairs)))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    if not args.task_ids and not args.all:
        print("Name the request IDs to replay, or give -all", file=sys.stderr)
        return 1
    settings = load_settings()
    code = 0
    with _client() as client:
        entries = dlq.entries(client)
        if args.all:
            chosen = [e for e in entries if e.replayable]
        else:
            by_id = {e.task_id: e for e in entries if e.task_id}
            chosen = []
            for task_id in args.task_ids:
                if task_id in by_id:
                    chosen.append(by_id[task_id])
                else:
                    print(f'No dead letter for request "{task_id}"', file=sys.stderr)
                    code = 1
        for entry in chosen:
            try:
                dlq.replay(client, entry, settings.result_ttl)
            except dlq.NotReplayable as err:
                print(f"Not replayed {entry.task_id or '(no request ID)'}: {err}", file=sys.stderr)
                code = 1
            else:
                print(f"Replayed {entry.task_id or '(no request ID)'} to queue {entry.queue}")
    return code


def run_purge(_args: argparse.Namespace) -> int:
    with _client() as client:
        count = dlq.purge(client)
    print(f"Purged {count} dead letter(s)")
    return 0
