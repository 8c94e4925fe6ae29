"""Payload references -> bytes.

A dispatch request carries a *reference* to its payload, never the bytes, so queue messages
stay small and a payload shared by many requests is stored once. Supported references:

- `blob:sha256:<hex>`: an inline payload the producer stored in Redis (content-addressed).
- `file:///abs/path`: a file under one of the configured roots (no traversal or symlink
  escape: the resolved real path must stay inside a root).
- `http://` / `https://`: an allow-listed host; streamed, capped at the size limit, retried
  on transient errors, redirects followed only on the same host.
- `data:[<mediatype>][;base64],<data>`: RFC 2397, inline.

Every failure is a permanent `PayloadError` naming the reason: a bad reference will not get
better by retrying the task.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import redis
import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from dispatch import keys
from dispatch.errors import PayloadError as PayloadError
from dispatch.request import PAYLOAD_LIMIT as PAYLOAD_LIMIT

_MAX_REDIRECTS = 3


def too_large(size: int) -> PayloadError:
    return PayloadError(f"Payload exceeds maximum size; {size} > {PAYLOAD_LIMIT}")


def blob_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_ref(data: bytes) -> str:
    """The reference of an inline payload once stored under `keys.blob(digest)`."""
    return f"blob:sha256:{blob_digest(data)}"


@dataclass(frozen=True)
class PayloadPolicy:
    """Where file:// and http(s):// references may read from."""

    file_roots: tuple[Path, ...] = ()
    http_hosts: frozenset[str] = frozenset()
    http_timeout: float = 10.0

    @classmethod
    def of(
        cls, file_roots: Iterable[Path | str], http_hosts: Iterable[str], http_timeout: float
    ) -> PayloadPolicy:
        return cls(
            tuple(Path(root) for root in file_roots),
            frozenset(host.lower() for host in http_hosts),
            http_timeout,
        )


@dataclass
class PayloadResolver:
    """Turns references into bytes under a policy. One per worker process (it pools HTTP)."""

    policy: PayloadPolicy
    blobs: redis.Redis
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        retry = Retry(
            total=2,
            connect=2,
            read=2,
            status=2,
            backoff_factor=0.2,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=("GET",),
            redirect=0,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    def close(self) -> None:
        self.http.close()

    def blob_key(self, ref: str | None) -> str | None:
        """The Redis key a well-formed blob reference is read from (None for any other
        reference): a caller can read it along with other keys, and pass it to `resolve`."""
        digest = _blob_digest(ref) if isinstance(ref, str) and ref[:5].lower() == "blob:" else ""
        return keys.blob(digest) if digest else None

    def resolve(self, ref: str | None, blob: bytes | None = None) -> bytes | None:
        """The payload bytes, or None for no payload. Raises PayloadError. `blob`: the
        value of `blob_key(ref)`, when the caller read it already."""
        if ref is None or ref == "":
            return None
        if not isinstance(ref, str):
            raise PayloadError(f"payload reference must be a string, not {type(ref).__name__}")
        scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
        if scheme == "blob":
            data = self._blob(ref, blob)
        elif scheme == "file":
            data = self._file(ref)
        elif scheme in ("http", "https"):
            data = self._http(ref)
        elif scheme == "data":
            data = _data_url(ref)
        else:
            raise PayloadError(
                f"unsupported payload reference {_short(ref)!r}: "
                "use blob:sha256:<hex>, file://, http(s):// or data:"
            )
        if len(data) > PAYLOAD_LIMIT:
            raise too_large(len(data))
        return data

    def _blob(self, ref: str, data: bytes | None) -> bytes:
        digest = _blob_digest(ref)
        if not digest:
            raise PayloadError(f"malformed blob reference {_short(ref)!r}: want blob:sha256:<hex>")
        if data is None:
            data = self.blobs.get(keys.blob(digest))  # type: ignore[assignment]
        assert data is None or isinstance(data, bytes)
        if data is None:
            raise PayloadError(
                f"payload blob sha256:{digest} not found: it expired or was never stored"
            )
        if blob_digest(data) != digest:
            raise PayloadError(f"payload blob sha256:{digest} does not match its digest")
        return data

    def _file(self, ref: str) -> bytes:
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise PayloadError(f"file reference {_short(ref)!r} names a host; only local files")
        path = Path(unquote_to_bytes(parts.path).decode("utf-8", "replace"))
        if not path.is_absolute():
            raise PayloadError(f"file reference {_short(ref)!r} must be an absolute path")
        if not self.policy.file_roots:
            raise PayloadError("file:// payload references are disabled: no file roots set")
        # Lexically first, so nothing outside the roots is even looked at; then again on
        # the real path, which catches a symlink that points out.
        if not self._inside_roots(Path(os.path.normpath(path))):
            raise PayloadError(f"payload file {path} is outside the allowed roots")
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as err:
            raise PayloadError(f"payload file {path} cannot be read: {_os_reason(err)}") from None
        if not self._inside_roots(real):
            raise PayloadError(f"payload file {path} is outside the allowed roots")
        try:
            with real.open("rb") as handle:
                data = handle.read(PAYLOAD_LIMIT + 1)
        except OSError as err:
            raise PayloadError(f"payload file {path} cannot be read: {_os_reason(err)}") from None
        if len(data) > PAYLOAD_LIMIT:
            raise too_large(real.stat().st_size)
        return data

    def _inside_roots(self, path: Path) -> bool:
        return any(path.is_relative_to(root.resolve()) for root in self.policy.file_roots)

    def _http(self, ref: str) -> bytes:
        url = ref
        origin = _host_port(url)
        if origin not in self.policy.http_hosts and _host(url) not in self.policy.http_hosts:
            raise PayloadError(f"payload host {origin!r} is not in the allow-list")
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = self.http.get(
                    url, stream=True, timeout=self.policy.http_timeout, allow_redirects=False
                )
            except requests.RequestException as err:
                raise PayloadError(f"payload fetch from {origin} failed: {err}") from None
            with response:
                if response.is_redirect:
                    target = urljoin(url, response.headers.get("Location", ""))
                    if _host_port(target) != origin:
                        raise PayloadError(
                            f"payload fetch from {origin} redirected to another host; refused"
                        )
                    url = target
                    continue
                if response.status_code != 200:
                    raise PayloadError(
                        f"payload fetch from {origin} answered HTTP {response.status_code}"
                    )
                return _read_capped(response)
        raise PayloadError(f"payload fetch from {origin}: more than {_MAX_REDIRECTS} redirects")


def _read_capped(response: requests.Response) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > PAYLOAD_LIMIT:
        raise too_large(int(declared))
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(4096):
            chunks.append(chunk)
            size += len(chunk)
            if size > PAYLOAD_LIMIT:
                raise PayloadError(
                    f"Payload exceeds maximum size; more than {PAYLOAD_LIMIT} bytes streamed"
                )
    except requests.RequestException as err:
        raise PayloadError(f"payload fetch interrupted: {err}") from None
    return b"".join(chunks)


def _blob_digest(ref: str) -> str:
    """The hex digest of a well-formed `blob:sha256:<hex>` reference, else ""."""
    _, algorithm, digest = [*ref.split(":", 2), "", ""][:3]
    return digest if algorithm == "sha256" and len(digest) == 64 and _is_hex(digest) else ""


def _data_url(ref: str) -> bytes:
    header, sep, body = ref[len("data:") :].partition(",")
    if not sep:
        raise PayloadError("malformed data: reference: no ',' before the data")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(unquote_to_bytes(body), validate=True)
        except (binascii.Error, ValueError) as err:
            raise PayloadError(f"malformed data: reference: bad base64 ({err})") from None
    return unquote_to_bytes(body)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _os_reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or type(err).__name__


def _short(ref: str) -> str:
    return ref if len(ref) <= 80 else ref[:77] + "..."
