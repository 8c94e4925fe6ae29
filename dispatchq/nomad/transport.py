"""The connection pool under the Nomad client: unix sockets, TLS, and transport errors.

One blocking urllib3 pool per client, straight to one Nomad address. The client talks to
urllib3 (the transport requests is built on) without requests' Session on top: measured
under gevent against nomadsim, a dispatch cost 1.4 ms of client CPU through
`Session.send` and 0.65 ms through the pool (requests parses the URL nine times per call,
merges cookies and hooks, and wraps the response), and a worker makes one such call per
request. `unix://` addresses get a pool whose connections are AF_UNIX sockets; `https`
addresses get an `ssl.SSLContext` built from the nomad CLI's TLS settings, so that only the
configured CA is trusted and a CA directory works as in Go (every file in it is loaded;
OpenSSL's capath would need hashed file names).
"""

from __future__ import annotations

import socket
import ssl
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    InsecureRequestWarning,
    MaxRetryError,
    NewConnectionError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from dispatchq.errors import ConfigError, TransportError
from dispatchq.nomad.config import NomadConfig

UNIX_PREFIX = "unix://"
# Requests over a unix socket still need a host: it only fills the Host header.
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


def build_pool(config: NomadConfig, pool_size: int) -> tuple[HTTPConnectionPool, str]:
    """A pool for `config.address`, and the base URL its requests are named by in errors.

    The pool blocks: at most `pool_size` connections to Nomad, however many threads or
    greenlets share it; the others wait for a free connection. No proxy or CA bundle from
    the environment: only the NOMAD_* settings count."""
    address = config.address
    if address.startswith(UNIX_PREFIX):
        socket_path = address[len(UNIX_PREFIX) :]
        unix = _UnixConnectionPool(
            "localhost", maxsize=pool_size, block=True, socket_path=socket_path
        )
        return unix, UNIX_BASE_URL
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f'invalid address "{address}": want http://, https:// or unix://')
    try:
        port = parts.port
    except ValueError as err:
        raise ConfigError(f'invalid address "{address}": {err}') from err
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))
    if parts.scheme == "http":
        return HTTPConnectionPool(parts.hostname, port, maxsize=pool_size, block=True), base
    if config.tls_skip_verify:
        # The user opted out of verification, and the nomad CLI does not warn about it:
        # urllib3's per-request warning would only clutter stderr.
        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    pool = HTTPSConnectionPool(
        parts.hostname,
        port,
        maxsize=pool_size,
        block=True,
        ssl_context=tls_context(config),
        server_hostname=config.tls_server_name or None,
        # The name connected to is checked, or tls_server_name; skip-verify checks nothing.
        assert_hostname=False if config.tls_skip_verify else None,
    )
    return pool, base


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
        elif isinstance(nested, BaseException):
            current = nested
        else:
            current = current.__cause__ or current.__context__
    return found


def _failed_before_sending(exc: BaseException) -> bool:
    """Connecting (TLS handshake included) failed: the server cannot have seen the request."""
    return isinstance(exc, ConnectTimeoutError | SSLError)  # NewConnectionError included


def _reason(exc: BaseException, url: str, socket_path: str) -> str:
    """A Go-like description of why no HTTP answer came back."""
    root = _root_oserror(exc)
    if isinstance(exc, NewConnectionError) and root is not None and root.strerror:
        target = f"unix {socket_path}" if socket_path else f"tcp {urlsplit(url).netloc}"
        return f"dial {target}: connect: {root.strerror.lower()}"
    if isinstance(exc, Urllib3Timeout | TimeoutError):
        return "net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
    if root is not None and root.strerror:
        return root.strerror.lower()
    return str(exc)


def transport_error(
    method: str, url: str, exc: BaseException, socket_path: str = ""
) -> TransportError:
    """The TransportError for a request that got no HTTP answer (`exc`: what urllib3 raised
    with retries off, or an OSError).

    The message reads like Go's `*url.Error` (`Put "<url>": <reason>`), without any user
    info from the URL. TLS failures are not retried: they do not heal by themselves.
    """
    parts = urlsplit(url)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    message = f'{method.title()} "{shown}": {_reason(exc, shown, socket_path)}'
    return TransportError(
        message,
        sent=not _failed_before_sending(exc),
        retryable=not isinstance(exc, SSLError),
    )
