"""`http(s)://` payload references: one strict parse decides both whether a URL is allowed
and where the connection goes, and one total deadline bounds the whole fetch.

Two parsers that disagree are an allow-list bypass: `http://other\\@allowed/x` is host
`allowed` to `urllib.parse` and host `other` to urllib3. So a URL is parsed once, here,
strictly (RFC 3986 characters only: no backslash, space or control character; a host of
letters, digits, dots and dashes, or a bracketed IPv6 address; a port 1-65535), the
allow-list is checked on that parse, and the connection is opened to exactly that host
and port (`urllib3.connection`, no pool that could re-parse it). A redirect's target is
parsed the same way and must have the same scheme, host and port.

No proxy is used (the connection goes where the allow-list said), and https:// is verified
against certifi's CA bundle.

The deadline (`PayloadPolicy.http_timeout`) is for the whole fetch: connecting, every
read, retries and redirects together. A server that trickles a byte a second is cut off
when it runs out (a watchdog shuts the socket down), not one read timeout at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import string
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import unquote

import certifi
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationParseError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.response import BaseHTTPResponse
from urllib3.util import make_headers, parse_url

from dispatchq.core.request import PAYLOAD_LIMIT
from dispatchq.errors import PayloadError

MAX_REDIRECTS = 3
RETRIES = 2
"""Retries of a connection failure or a 429/500/502/503/504, within the deadline."""
_BACKOFF = 0.2
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_URL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%")
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]+\]")
_AUTHORITY = re.compile(
    r"https?://(?:[A-Za-z0-9\-._~!$&'()*+,;=:%]*@)?"  # userinfo: no '[', ']', '@', '/'
    r"(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?(?:[/?#]|$)",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"//[^/?#]*@")


def too_large(size: int) -> PayloadError:
    return PayloadError(f"Payload exceeds maximum size; {size} > {PAYLOAD_LIMIT}")


def mask_userinfo(text: str) -> str:
    """`text` with any `user:password@` of a URL in it masked: never in an outcome."""
    return _USERINFO.sub("//***@", text)


def short(ref: str) -> str:
    ref = mask_userinfo(ref)
    return ref if len(ref) <= 80 else ref[:77] + "..."


@dataclass(frozen=True)
class HttpUrl:
    """An http(s) URL as parsed once: what is checked is what is connected to."""

    scheme: str
    host: str
    port: int
    target: str
    """The request target: path and query."""
    auth: str | None

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def allowed(self, hosts: Collection[str]) -> bool:
        return self.host in hosts or f"{self.host}:{self.port}" in hosts


def parse_http_url(text: str) -> HttpUrl:
    """The strict parse (see the module doc); PayloadError for anything else."""
    bad = next((c for c in text if c not in _URL_CHARS), None)
    if bad is not None:
        raise PayloadError(
            f"payload URL {short(text)!r} contains {bad!r}: only RFC 3986 characters "
            "(percent-encode the rest)"
        )
    authority = _AUTHORITY.match(text)
    try:
        url = parse_url(text)
    except LocationParseError:
        authority = None
    if authority is None:
        raise PayloadError(f"malformed payload URL {short(text)!r}")
    scheme = (url.scheme or "").lower()
    host = (url.host or "").lower()
    if scheme not in ("http", "https"):
        raise PayloadError(f"payload URL {short(text)!r} must be http:// or https://")
    if host != authority["host"].lower() or not _HOST.fullmatch(host):
        raise PayloadError(f"payload URL {short(text)!r} has no valid host name")
    port = url.port if url.port is not None else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65_535:
        raise PayloadError(f"payload URL {short(text)!r} has a port out of range")
    return HttpUrl(scheme, host, port, url.request_uri, url.auth)


def redirect_target(current: HttpUrl, location: str) -> HttpUrl:
    """Where a redirect goes, parsed as strictly; relative locations keep the origin."""
    if location.startswith("/") and not location.startswith("//"):
        port = f":{current.port}"
        return parse_http_url(f"{current.scheme}://{current.host}{port}{location}")
    return parse_http_url(location)


def fetch(text: str, hosts: Collection[str], timeout: float) -> bytes:
    """The body of an allow-listed http(s) URL, capped at PAYLOAD_LIMIT, within `timeout`
    seconds in all. Raises PayloadError."""
    url = parse_http_url(text)
    origin = url.origin
    if not url.allowed(hosts):
        raise PayloadError(f"payload host {origin!r} is not in the allow-list")
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _get_with_retries(url, deadline, timeout)
        if status in _REDIRECT_STATUS:
            target = redirect_target(url, location)
            if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
                raise PayloadError(
                    f"payload fetch from {origin} redirected to another host; refused"
                )
            url = target
            continue
        if status != 200:
            raise PayloadError(f"payload fetch from {origin} answered HTTP {status}")
        return body
    raise PayloadError(f"payload fetch from {origin}: more than {MAX_REDIRECTS} redirects")


def _get_with_retries(url: HttpUrl, deadline: float, timeout: float) -> tuple[int, str, bytes]:
    for attempt in range(RETRIES + 1):
        last = attempt == RETRIES
        try:
            result = _get_once(url, deadline, timeout)
        except _Transient as err:
            if last or time.monotonic() + _BACKOFF * 2**attempt >= deadline:
                raise PayloadError(f"payload fetch from {url.origin} failed: {err}") from None
        else:
            if result[0] not in _RETRY_STATUS or last:
                return result
            if time.monotonic() + _BACKOFF * 2**attempt >= deadline:
                return result
        time.sleep(_BACKOFF * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class _Transient(Exception):
    """A connection that failed or broke off: worth another attempt."""


class _Watchdog:
    """Shuts the connection's socket down at the deadline, which ends any read under way."""

    def __init__(self, conn: HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _get_once(url: HttpUrl, deadline: float, timeout: float) -> tuple[int, str, bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timed_out(url, timeout)
    conn: HTTPConnection
    if url.scheme == "https":  # verified against certifi's CAs, as requests did
        conn = HTTPSConnection(
            url.host.strip("[]"), url.port, timeout=remaining, ca_certs=certifi.where()
        )
    else:
        conn = HTTPConnection(url.host.strip("[]"), url.port, timeout=remaining)
    headers = {"Accept-Encoding": "identity", "User-Agent": "dispatchq"}
    if url.auth:
        headers.update(make_headers(basic_auth=unquote(url.auth)))
    watchdog = _Watchdog(conn, remaining)
    try:
        conn.request("GET", url.target, headers=headers, preload_content=False)
        response = conn.getresponse()
        if response.status in _REDIRECT_STATUS:
            return response.status, response.headers.get("Location", ""), b""
        if response.status != 200:
            return response.status, "", b""
        body = _read_capped(response)
        if watchdog.fired:
            raise _timed_out(url, timeout)
        return 200, "", body
    except (ssl.SSLError, Urllib3SSLError) as err:  # a certificate will not get better
        if watchdog.fired or time.monotonic() >= deadline:
            raise _timed_out(url, timeout) from None
        raise PayloadError(f"payload fetch from {url.origin}: TLS failed: {_reason(err)}") from None
    except (OSError, http.client.HTTPException, Urllib3Error) as err:
        if watchdog.fired or time.monotonic() >= deadline:
            raise _timed_out(url, timeout) from None
        raise _Transient(_reason(err)) from None
    finally:
        watchdog.cancel()
        conn.close()


def _read_capped(response: BaseHTTPResponse) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > PAYLOAD_LIMIT:
        raise too_large(int(declared))
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read(4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > PAYLOAD_LIMIT:
            raise PayloadError(
                f"Payload exceeds maximum size; more than {PAYLOAD_LIMIT} bytes streamed"
            )


def _timed_out(url: HttpUrl, timeout: float) -> PayloadError:
    return PayloadError(
        f"payload fetch from {url.origin} did not complete within {timeout:g} s "
        "(DISPATCHQ_PAYLOAD_HTTP_TIMEOUT, for the whole fetch)"
    )


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return mask_userinfo(text)[:200]
