"""dispatchq's own settings: `DISPATCHQ_*` env vars, then an optional TOML file, then defaults.

Nomad's connection settings are not here: they come from `NOMAD_*` exactly as the nomad CLI
reads them (see `dispatchq.nomad.config`). `DISPATCHQ_CONFIG` names the TOML file; its keys are the
field names below (`redis_url = "redis://..."`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import redis
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dispatchq.config.connection import SCHEMES as REDIS_SCHEMES
from dispatchq.config.connection import RedisTarget
from dispatchq.config.logging import MASK, mask_url, url_secrets
from dispatchq.core.request import TENANT_PATTERN, TENANT_TEXT
from dispatchq.store import keys
from dispatchq.store.completion import EventStream

__all__ = ["Settings", "load_settings", "mask_url", "worker_redis"]

CONFIG_FILE_ENV = "DISPATCHQ_CONFIG"


class Settings(BaseSettings):
    """Everything a producer or worker needs besides Nomad's connection."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHQ_", extra="forbid", frozen=True)

    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Broker and result backend: redis://, rediss:// or unix:// (user and "
        "password inside), or Sentinels: sentinel://host:26379;sentinel://host2:26379 "
        "(the primary's user and password in the first).",
    )
    redis_master_name: str = Field(
        "", description="With sentinel:// URLs: the Sentinels' name of the primary."
    )
    redis_sentinel_username: str = Field(
        "", description="With sentinel:// URLs: Sentinel's own ACL user, if it has one."
    )
    redis_sentinel_password: SecretStr = Field(
        SecretStr(""), description="With sentinel:// URLs: Sentinel's own password, if any."
    )
    redis_min_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must confirm an enqueued request (WAIT) before enqueue "
        "returns; 0: the primary's answer is enough.",
    )
    redis_replica_timeout: float = Field(
        2.0,
        gt=0,
        description="Seconds enqueue waits for redis_min_replicas to confirm before it "
        "fails (the caller may retry with the same request ID).",
    )
    queue: str = Field("dispatchq", description="Celery queue the dispatch requests go to.")
    result_ttl: int = Field(
        86_400, ge=60, description="Seconds an outcome and its request record are kept."
    )
    blob_ttl: int = Field(86_400, ge=60, description="Seconds an inline payload blob is kept.")
    retry_max: int = Field(8, ge=0, description="Retries of a retryable Nomad error.")
    retry_floor: float = Field(0.5, gt=0, description="Smallest retry delay, seconds.")
    retry_cap: float = Field(30.0, gt=0, description="Largest retry delay, seconds.")
    task_time_limit: int = Field(
        3_600, ge=5, description="Hard limit on one dispatch task (dispatch + monitoring), s."
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        description="Deliveries of one request (besides its retries) before it is "
        "dead-lettered as a message that keeps killing its workers.",
    )
    payload_file_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Directories file:// payload references may read."
    )
    payload_http_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts (host or host:port) http(s):// refs may fetch."
    )
    tenant_weights: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Weights of tenants in the round robin between batches' tenants, as "
        "tenant=weight,... (a whole number from 1 to 1000; a tenant not named has 1): a "
        "tenant of weight 3 takes three messages for every one of a tenant of weight 1.",
    )
    payload_http_timeout: float = Field(
        10.0,
        gt=0,
        description="Total deadline of one http(s) payload fetch (connection, every read, "
        "retries and redirects together), s.",
    )
    event_feed: bool = Field(
        True,
        description="Follow evaluations through one event-stream subscription per worker "
        "process (falls back to blocking queries where Nomad has no stream or refuses it).",
    )
    dispatch_rate: float = Field(
        500.0,
        gt=0,
        description="Most dispatches per second, all workers together; halved on a 429 or "
        "when an evaluation finds the cluster's resources exhausted, then back within 30 s.",
    )
    dispatch_burst: int = Field(
        50, ge=1, description="Dispatches let through at once before dispatch_rate applies."
    )
    dispatch_max_wait: float = Field(
        30.0,
        gt=0,
        description="Seconds a request waits for its turn under dispatch_rate and "
        "max_unfinished_children before it is requeued (a requeue is not a retry).",
    )
    max_unfinished_children: int = Field(
        0,
        ge=0,
        description="Most pending or running children per parameterized job (its "
        "JobSummary) before dispatches of it wait; 0: no cap.",
    )
    events_stream: str = Field(
        keys.EVENTS,
        description="Redis stream of completion events (one per request that ends and per "
        "batch that finishes); empty: off (and no webhooks).",
    )
    events_maxlen: int = Field(
        keys.EVENTS_MAXLEN, ge=1_000, description="Entries the event stream keeps (MAXLEN ~)."
    )
    notify_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts (host or host:port) a notify_url may name; others are dead-lettered.",
    )
    notify_secret: SecretStr = Field(
        SecretStr(""), description="Key of the webhooks' HMAC-SHA256 signature."
    )
    notify_retry_for: float = Field(
        3_600.0,
        gt=0,
        description="Seconds a webhook is retried (backoff 1 s doubling to 60 s) before it "
        "is dead-lettered, counted from its event.",
    )
    notify_timeout: float = Field(
        10.0, gt=0, description="Total deadline of one webhook POST (connect, send, read), s."
    )
    web_token: SecretStr = Field(
        SecretStr(""),
        description="The dashboard's action token (retry, cancel); empty: the dashboard is "
        "read-only.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="Log rendering: JSON lines, console, or console only on a TTY."
    )
    log_level: str = Field("INFO", description="Lowest level logged.")
    metrics_port: int = Field(
        0,
        ge=0,
        le=65_535,
        description="Port of a worker's Prometheus metrics endpoint (/metrics); 0: off.",
    )
    metrics_addr: str = Field(
        "0.0.0.0",  # noqa: S104  (scraped from other machines; the metrics hold no secret)
        description="Address the metrics endpoint listens on.",
    )

    @property
    def event_stream(self) -> EventStream:
        """Where completion events go (`dispatchq.store.completion`)."""
        return EventStream(self.events_stream, self.events_maxlen)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        """URLs redis-py can use, checked here so that a bad one is a settings error (the
        message never repeats a URL: it may hold a password)."""
        urls = [u.strip() for u in value.get_secret_value().split(";") if u.strip()]
        schemes = set()
        for url in urls or [""]:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError:
                raise ValueError(
                    "not a valid Redis URL: the port must be a number 1-65535 "
                    "(redis://[user:password@]host:port/db)"
                ) from None
            if parts.scheme not in REDIS_SCHEMES:
                raise ValueError(f"the scheme must be one of {', '.join(REDIS_SCHEMES)}")
            if port == 0:
                raise ValueError("not a valid Redis URL: the port must be a number 1-65535")
            schemes.add(parts.scheme)
        if len(urls) > 1 and schemes != {"sentinel"}:
            raise ValueError("only sentinel:// URLs come as a ';'-separated list")
        return value

    @model_validator(mode="after")
    def _check_sentinel(self) -> Settings:
        self.redis  # noqa: B018  (a Sentinel list without the primary's name is refused)
        return self

    @property
    def redis(self) -> RedisTarget:
        """Where Redis is (`dispatchq.config.connection`): every client is built from it."""
        return RedisTarget(
            self.redis_url.get_secret_value(),
            master_name=self.redis_master_name,
            sentinel_username=self.redis_sentinel_username,
            sentinel_password=self.redis_sentinel_password.get_secret_value(),
        )

    @field_validator("tenant_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        weights: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            tenant, sep, weight = part.partition("=")
            if not sep or not weight.strip().isdigit():
                raise ValueError(f"expected tenant=weight, got {part!r}")
            weights[tenant.strip()] = int(weight)
        return weights

    @field_validator("tenant_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, int]) -> dict[str, int]:
        for tenant, weight in value.items():
            if not re.fullmatch(TENANT_PATTERN, tenant):
                raise ValueError(f"{TENANT_TEXT}: {tenant!r}")
            if not 1 <= weight <= 1000:
                raise ValueError(f"the weight of {tenant!r} must be from 1 to 1000")
        return value

    @field_validator("payload_file_roots", "payload_http_hosts", "notify_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def redis_password(self) -> str | None:
        return urlsplit(self.redis.first_url).password

    @property
    def secrets(self) -> list[str]:
        """Every secret of these settings (for `dispatchq.config.logging.register_secrets`)."""
        found = [s for url in self.redis.urls for s in url_secrets(url)]
        found += [self.notify_secret.get_secret_value(), self.web_token.get_secret_value(),
                  self.redis_sentinel_password.get_secret_value()]  # fmt: skip
        return [secret for secret in found if secret]

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with every secret masked."""
        data = self.model_dump(mode="json")
        data["redis_url"] = ";".join(mask_url(url) for url in self.redis.urls)
        for name in ("notify_secret", "redis_sentinel_password", "web_token"):
            data[name] = MASK if getattr(self, name).get_secret_value() else ""
        return data


def worker_redis(settings: Settings, max_connections: int = 256) -> redis.Redis:
    """A Redis client for a worker process: its pool waits (up to 30 s) when every
    connection is in use, instead of failing, since hundreds of greenlets share it."""
    return settings.redis.client(max_connections=max_connections, wait_for_connection=30)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and config file), with explicit overrides on top."""
    return Settings(**overrides)
