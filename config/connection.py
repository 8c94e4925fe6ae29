"""The one way every dispatchq process and command reaches Redis.

`DISPATCHQ_REDIS_URL` names either one server (`redis://`, `rediss://`, `unix://`, as
redis-py reads them) or the Sentinels that watch a primary, in kombu's spelling:
`sentinel://[user:password@]host:26379[/db];sentinel://host2:26379;...` with the primary's
name in `DISPATCHQ_REDIS_MASTER_NAME`. The user and password of the first Sentinel URL are
the primary's (an ACL user, or the password alone); Sentinel's own, where it has one, are
`DISPATCHQ_REDIS_SENTINEL_USERNAME`/`_PASSWORD`. `?ssl=true` on the first Sentinel URL
(with redis-py's `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, as on a
`rediss://` URL) speaks TLS to the Sentinels and the primary alike.

Everything that opens a connection goes through `RedisTarget`: the producer's client, the
CLI's, a worker's and tracker's pools, the notifier's, health and metrics, and Celery's
broker and result backend (`celery_options`), so that a failover, a TLS setting or an ACL
user means the same thing everywhere. A client of a Sentinel target asks the Sentinels
where the primary is on every new connection, and drops a connection that finds a replica
(READONLY) or fails: after a failover each process finds the new primary by itself.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["SCHEMES", "RedisTarget", "redis_ssl_options"]

SENTINEL = "sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL)
SENTINEL_PORT = 26379
CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection: a primary that is gone is given up on this fast, and the
next attempt asks the Sentinels again."""

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_SSL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def redis_ssl_options(url: str) -> dict[str, Any] | None:
    """TLS options from a `rediss://` URL (or a `sentinel://` one with `ssl=true`), with the
    names and values redis-py itself reads in the query (`ssl_cert_reqs=required|optional|
    none`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`). The server is verified unless
    the URL says otherwise: kombu alone would not verify it at all."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme != "rediss" and query.get("ssl", "").lower() not in ("true", "1", "yes"):
        return None
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {sorted(_CERT_REQS)}, not {reqs!r}")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    options.update({name: query[name] for name in _SSL_FILES if query.get(name)})
    return options


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of failing when
    every one is in use (redis-py has a blocking pool and a Sentinel one, not both)."""


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, and how to connect to it (see the module's docstring)."""

    url: str
    master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.is_sentinel and not self.master_name:
            raise ValueError(
                "a sentinel:// URL needs the primary's name: set DISPATCHQ_REDIS_MASTER_NAME "
                "(the name in the Sentinels' `sentinel monitor <name> ...`)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisTarget:
        """The target named by a process environment's `DISPATCHQ_REDIS_*` variables (for
        whoever starts dispatchq processes with an environment of their own)."""
        return cls(
            env.get("DISPATCHQ_REDIS_URL", "redis://127.0.0.1:6379/0"),
            master_name=env.get("DISPATCHQ_REDIS_MASTER_NAME", ""),
            sentinel_username=env.get("DISPATCHQ_REDIS_SENTINEL_USERNAME", ""),
            sentinel_password=env.get("DISPATCHQ_REDIS_SENTINEL_PASSWORD", ""),
        )

    @property
    def is_sentinel(self) -> bool:
        return urlsplit(self.first_url).scheme == SENTINEL

    @property
    def urls(self) -> list[str]:
        return [part.strip() for part in self.url.split(";") if part.strip()]

    @property
    def first_url(self) -> str:
        urls = self.urls
        return urls[0] if urls else ""

    @property
    def tls(self) -> dict[str, Any] | None:
        """TLS options of the primary (and Sentinels), or None for plain TCP."""
        return redis_ssl_options(self.first_url)

    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinels' addresses, in the order given."""
        found = []
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme != SENTINEL:
                raise ValueError("every URL of a Sentinel list must be sentinel://")
            found.append((parts.hostname or "127.0.0.1", parts.port or SENTINEL_PORT))
        return found

    def _primary_kwargs(self) -> dict[str, Any]:
        """The connection options of the primary behind the Sentinels: its user, password
        and database from the first URL, and TLS."""
        parts = urlsplit(self.first_url)
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT}
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password:
            options["password"] = unquote(parts.password)
        db = parts.path.strip("/")
        options["db"] = int(db) if db.isdigit() else 0
        if self.tls is not None:
            options.update(ssl=True, **self.tls)
        return options

    def _sentinel_kwargs(self) -> dict[str, Any]:
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT,
                                   "socket_timeout": CONNECT_TIMEOUT}  # fmt: skip
        if self.sentinel_username:
            options["username"] = self.sentinel_username
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        if self.tls is not None:
            options.update(ssl=True, **self.tls)
        return options

    def client(
        self, *, max_connections: int | None = None, wait_for_connection: float = 0, **options: Any
    ) -> redis.Redis:
        """A redis-py client. `wait_for_connection` > 0: a pool of `max_connections` that
        waits up to that many seconds for a free connection (a worker's greenlets share
        one) instead of failing. `options` go to every connection (socket_timeout, ...)."""
        if self.is_sentinel:
            sentinel = Sentinel(
                self.sentinels(), sentinel_kwargs=self._sentinel_kwargs(), **options
            )
            pool_options: dict[str, Any] = {}
            if max_connections:
                pool_options["max_connections"] = max_connections
            if wait_for_connection:
                pool_options.update(
                    connection_pool_class=BlockingSentinelPool, timeout=wait_for_connection
                )
            client: redis.Redis = sentinel.master_for(
                self.master_name, **self._primary_kwargs(), **pool_options
            )
            return client
        options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
        if wait_for_connection:
            pool = redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=max_connections or 50,
                timeout=wait_for_connection,
                **options,
            )
            return redis.Redis(connection_pool=pool)
        if max_connections:
            options["max_connections"] = max_connections
        return redis.Redis.from_url(self.url, **options)

    def async_client(self, max_connections: int = 32, **options: Any) -> redis.asyncio.Redis:
        """redis-py's asyncio client of the same target (`dispatchq.producer.aio`), with
        at most `max_connections`: on one server, a coroutine waits for a free connection
        (10,000 concurrent calls share them); behind Sentinel (which asks the Sentinels for
        the primary as `client` does), one past the limit fails with a ConnectionError."""
        if self.is_sentinel:
            sentinel = AsyncSentinel(
                self.sentinels(), sentinel_kwargs=self._sentinel_kwargs(), **options
            )
            client: redis.asyncio.Redis = sentinel.master_for(
                self.master_name, max_connections=max_connections, **self._primary_kwargs()
            )
            return client
        options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url, max_connections=max_connections, timeout=None, **options
        )
        return redis.asyncio.Redis.from_pool(pool)  # closed with the client

    def celery_options(self, max_connections: int) -> dict[str, Any]:
        """Celery's broker and result backend settings for this target (the backend's
        class is the caller's: `backend_url` is what follows its `module:Class+`)."""
        transport: dict[str, Any] = {"max_connections": max_connections}
        url = backend_url = self.url
        if self.is_sentinel:
            # kombu and Celery read the primary's name and Sentinel's own credentials from
            # the transport options, the primary's from the URL; TLS from *_use_ssl, so
            # the query (TLS options) is left out of the URLs they parse. The broker's URL
            # is the first Sentinel's alone, and the worker's channel takes them all from
            # `sentinels` (`dispatchq.broker.poison.PoisonSentinelChannel` says why).
            urls = [urlsplit(u)._replace(query="").geturl() for u in self.urls]
            url, backend_url = urls[0], ";".join(urls)
            transport.update(
                master_name=self.master_name,
                sentinel_kwargs=self._sentinel_kwargs(),
                sentinels=self.sentinels(),
            )
        return {
            "broker_url": url,
            "backend_url": backend_url,
            "broker_use_ssl": self.tls,
            "redis_backend_use_ssl": self.tls,
            "broker_transport_options": transport,
            "result_backend_transport_options": dict(transport),
        }
