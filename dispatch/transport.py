"""The HTTP session under the Nomad client: unix sockets, TLS, and transport errors.

One pooled `requests.Session` per client. `unix://` addresses get an adapter whose
connections are AF_UNIX sockets; `https` addresses get an adapter whose `ssl.SSLContext`
is built from the nomad CLI's TLS settings, so that only the configured CA is trusted
(requests would otherwise add its certifi bundle) and a CA directory works as in Go
(every file in it is loaded; OpenSSL's capath would need hashed file names).
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    InsecureRequestWarning,
    MaxRetryError,
    NewConnectionError,
)

from dispatch.errors import ConfigError, TransportError
from dispatch.nomad_config import NomadConfig

UNIX_PREFIX = "unix://"
# Requests over a unix socket still need a URL; its host only fills the Host header.
UNIX_BASE_URL = "http://localhost"


class _UnixConnection(HTTPConnection):
    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is None or isinstance(self.timeout, int | float):
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as err:
            sock.close()
            raise NewConnectionError(self, f"Failed to establish a new connection: {err}") from err
        return sock


class _UnixConnectionPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixSocketAdapter(HTTPAdapter):
    """Sends every request of the session it is mounted on to one unix socket."""

    def __init__(self, socket_path: str, pool_size: int) -> None:
        self._pool = _UnixConnectionPool(
            "localhost", maxsize=pool_size, block=True, socket_path=socket_path
        )
        super().__init__(pool_connections=1, pool_maxsize=pool_size, max_retries=0)

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: tuple[str, str] | str | None = None,
    ) -> HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        super().close()
        self._pool.close()


class TLSAdapter(HTTPAdapter):
    """HTTPS with a fixed SSL context and an optional server name (SNI and the name the
    certificate is checked against). Mount it on a session whose `verify` matches the
    context's mode: requests derives the pool's `cert_reqs` from it."""

    def __init__(self, context: ssl.SSLContext, server_name: str, pool_size: int) -> None:
        self._tls_kwargs: dict[str, Any] = {"ssl_context": context}
        if server_name:
            self._tls_kwargs["server_hostname"] = server_name
        super().__init__(pool_maxsize=pool_size, max_retries=0, pool_block=True)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **self._tls_kwargs, **pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing to add: the SSL context already holds the CA and the client cert."""


def tls_context(config: NomadConfig) -> ssl.SSLContext:
    """The client-side SSL context for the CLI's TLS options (CA cert wins over CA path)."""
    try:
        if config.ca_cert:
            context = ssl.create_default_context(cafile=config.ca_cert)
        elif config.ca_path:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            for entry in sorted(Path(config.ca_path).iterdir()):
                if entry.is_file():
                    context.load_verify_locations(cafile=str(entry))
        else:
            context = ssl.create_default_context()
        if config.client_cert or config.client_key:
            context.load_cert_chain(config.client_cert, config.client_key or None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"invalid TLS configuration: {err}") from err
    if config.tls_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def build_session(config: NomadConfig, pool_size: int) -> tuple[requests.Session, str]:
    """A pooled session for `config.address`, and the base URL to put paths after.

    The pool blocks: at most `pool_size` connections to Nomad, however many threads or
    greenlets share the session; the others wait for a free connection."""
    session = requests.Session()
    # No proxies, .netrc or REQUESTS_CA_BUNDLE from the environment: only NOMAD_* count.
    session.trust_env = False
    address = config.address
    if address.startswith(UNIX_PREFIX):
        adapter: HTTPAdapter = UnixSocketAdapter(address[len(UNIX_PREFIX) :], pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session, UNIX_BASE_URL
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        session.close()
        raise ConfigError(f'invalid address "{address}": want http://, https:// or unix://')
    if parts.scheme == "https":
        tls = TLSAdapter(tls_context(config), config.tls_server_name, pool_size)
        session.mount("https://", tls)
        session.verify = not config.tls_skip_verify
        if config.tls_skip_verify:
            # The user opted out of verification, and the nomad CLI does not warn about it:
            # urllib3's per-request warning would only clutter stderr.
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    else:
        session.mount(
            "http://", HTTPAdapter(pool_maxsize=pool_size, max_retries=0, pool_block=True)
        )
    return session, urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _root_oserror(exc: BaseException) -> OSError | None:
    """The innermost OSError that caused `exc`, if any."""
    found = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            found = current
        nested = current.args[0] if current.args else None
        if isinstance(nested, MaxRetryError) and nested.reason is not None:
            current = nested.reason
        else:
            current = current.__cause__ or current.__context__
    return found


def _failed_before_sending(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    nested = exc.args[0] if exc.args else None
    return isinstance(nested, MaxRetryError) and isinstance(
        nested.reason, NewConnectionError | ConnectTimeoutError
    )


def _reason(exc: requests.RequestException, url: str, socket_path: str) -> str:
    """A Go-like description of why no HTTP answer came back."""
    if isinstance(exc, requests.exceptions.Timeout):
        return "net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
    root = _root_oserror(exc)
    if root is not None and root.strerror and _failed_before_sending(exc):
        target = f"unix {socket_path}" if socket_path else f"tcp {urlsplit(url).netloc}"
        return f"dial {target}: connect: {root.strerror.lower()}"
    if root is not None and root.strerror:
        return root.strerror.lower()
    return str(exc)


def transport_error(
    method: str, url: str, exc: requests.RequestException, socket_path: str = ""
) -> TransportError:
    """The TransportError for a request that got no HTTP answer.

    The message reads like Go's `*url.Error` (`Put "<url>": <reason>`), without any user
    info from the URL. TLS failures are not retried: they do not heal by themselves.
    """
    parts = urlsplit(url)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    message = f'{method.title()} "{shown}": {_reason(exc, shown, socket_path)}'
    return TransportError(
        message,
        sent=not _failed_before_sending(exc),
        retryable=not isinstance(exc, requests.exceptions.SSLError),
    )
