"""`dispatchq web`: the dashboard (`dispatchq.web`, the `[web]` extra)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from dispatchq.config.logging import register_secrets
from dispatchq.config.settings import load_settings


@click.command("web", short_help="serve the dashboard: batches, requests, queue, fleet")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")  # fmt: skip
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65_535),
              help="Port to listen on.")  # fmt: skip
def command(host: str, port: int, **_: Any) -> int:
    """Serve the dashboard until SIGTERM or Ctrl-C: batches with their progress, one batch
    live (counts by stage and ending, first failures), one request (its transcript as
    `nomad job dispatch` prints it), the queue, the fleet, dead letters; search by batch or
    request ID. Read-only unless DISPATCHQ_WEB_TOKEN is set: then retry and cancel take
    that token in their form."""
    import uvicorn  # noqa: PLC0415  (the [web] extra: only when the command runs)

    from dispatchq.web.app import create_app  # noqa: PLC0415

    settings = load_settings()
    token = settings.web_token.get_secret_value()
    register_secrets(settings.secrets)
    app = create_app(settings, token=token, nomad_address=os.environ.get("NOMAD_ADDR", ""))
    print(f"dashboard: http://{host}:{port}/ ({'actions on' if token else 'read-only'})",
          file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
