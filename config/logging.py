"""structlog set-up: JSON lines for workers and pipes, console rendering on a TTY.

Every line passes `redact_secrets`, which masks registered secret values (the Nomad token,
the Redis password) wherever they appear, and the values of keys that name a secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import structlog

from dispatch.secrets import MASK as MASK
from dispatch.secrets import register_secrets as register_secrets
from dispatch.secrets import scrub as scrub

_SECRET_KEYS = ("token", "password", "secret", "authorization", "auth")


def register_env_secrets(environ: Mapping[str, str]) -> None:
    """Register the secrets found in the environment: NOMAD_TOKEN, NOMAD_HTTP_AUTH's
    password and the password inside DISPATCHQ_REDIS_URL."""
    auth = environ.get("NOMAD_HTTP_AUTH", "")
    register_secrets(
        [
            environ.get("NOMAD_TOKEN"),
            auth.partition(":")[2],
            urlsplit(environ.get("DISPATCHQ_REDIS_URL", "")).password,
        ]
    )


def _scrub_value(key: str, value: Any) -> Any:
    if any(word in key.lower() for word in _SECRET_KEYS) and value:
        return MASK
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub_value(key, value)
    return event_dict


def _json_line(event_dict: Any, **_: Any) -> str:
    """orjson for the JSON lines: about 15 us less than the json module per line."""
    return orjson.dumps(event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
    stream: Any = None,
) -> None:
    """Configure structlog (and stdlib logging, for Celery's own lines) once per process."""
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer(serializer=_json_line)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
