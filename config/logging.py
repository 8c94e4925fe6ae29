"""structlog set-up: JSON lines for workers and pipes, console rendering on a TTY.

Every line passes `redact_secrets`, which masks registered secret values (the Nomad token,
the Redis password) wherever they appear, and the values of keys that name a secret.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import orjson
import structlog

from dispatchq.config.secrets import MASK as MASK
from dispatchq.config.secrets import register_secrets as register_secrets
from dispatchq.config.secrets import scrub as scrub

_SECRET_KEYS = ("token", "password", "secret", "authorization", "auth")
_SECRET_QUERY = ("pass", "secret", "token", "auth")
"""A URL query parameter whose name contains one of these holds a secret."""


def _secret_param(name: str) -> bool:
    return any(word in unquote(name).lower() for word in _SECRET_QUERY)


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries: the password of its user info (or the user info itself
    when it has no ':', the old `redis://password@host` form) and the values of query
    parameters such as `password=`, `token=` or `auth=`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, sep, password = userinfo.partition(":")
        secret = password if sep else user
        found += [secret, unquote(secret)]
    for piece in parts.query.split("&"):
        name, eq, value = piece.partition("=")
        if eq and value and _secret_param(name):
            found += [value, unquote(value)]
    return list(dict.fromkeys(secret for secret in found if secret))


def mask_url(url: str) -> str:
    """The URL with every secret `url_secrets` finds replaced by `***`; a URL too broken
    to parse is masked whole."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if sep else f"{MASK}@{hostport}"
    query = "&".join(
        f"{name}={MASK}" if eq and value and _secret_param(name) else piece
        for piece in parts.query.split("&")
        for name, eq, value in [piece.partition("=")]
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    slashes = "//" if url[len(parts.scheme) + 1 :].startswith("//") else ""
    head = f"{parts.scheme}:" if parts.scheme else ""
    tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{head}{slashes}{netloc}{parts.path}{tail}"




def register_env_secrets(environ: Mapping[str, str]) -> None:
    """Register the secrets found in the environment: NOMAD_TOKEN, NOMAD_HTTP_AUTH's
    password and those inside DISPATCHQ_REDIS_URL and NOMAD_ADDR (`url_secrets`)."""
    auth = environ.get("NOMAD_HTTP_AUTH", "")
    register_secrets(
        [
            environ.get("NOMAD_TOKEN"),
            environ.get("DISPATCHQ_NOTIFY_SECRET"),
            auth.partition(":")[2],
            *url_secrets(environ.get("DISPATCHQ_REDIS_URL", "")),
            *url_secrets(environ.get("NOMAD_ADDR", "")),
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
    """orjson for the JSON lines: about 15 us less than the json module per line. What
    orjson refuses (an integer past 64 bits, from a hostile message's arguments) the json
    module writes: a log line never raises."""
    try:
        return orjson.dumps(event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(event_dict, default=repr, skipkeys=True)


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
    stream: Any = None,
) -> None:
    """Configure structlog (and stdlib logging, for Celery's own lines) once per process."""
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        # no colours through a stream that escapes control characters (`dispatchq.cli.terminal`)
        structlog.dev.ConsoleRenderer(
            colors=out.isatty() and not getattr(out, "escapes_controls", False)
        )
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
