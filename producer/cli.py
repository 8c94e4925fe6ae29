"""The `dispatchq` command line: a root parser with one module per command family.

Each command module exposes `register(subparsers)`, which adds its sub-commands and sets
`handler` (a callable taking the parsed namespace and returning the exit code).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import redis
from pydantic import ValidationError

from config.logging import register_env_secrets, scrub
from producer import (
    cli_batch,
    cli_demo,
    cli_dev,
    cli_dlq,
    cli_flower,
    cli_health,
    cli_job,
    cli_queue,
    cli_sim,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatchq",
        description="Dispatch HashiCorp Nomad parameterized jobs through a durable queue.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for module in (cli_job, cli_batch, cli_queue, cli_dlq, cli_demo, cli_dev, cli_sim, cli_health,
                   cli_flower):  # fmt: skip
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    register_env_secrets(os.environ)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 1
    try:
        code: int = handler(args)
    except redis.RedisError as err:
        print(f"Error talking to Redis (DISPATCHQ_REDIS_URL): {scrub(str(err))}", file=sys.stderr)
        return 1
    except (ValidationError, FileNotFoundError) as err:
        print(f"Error in the settings: {scrub(str(err))}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
