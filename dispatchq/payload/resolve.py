"""Payload references -> bytes.

A dispatch request carries a *reference* to its payload, never the bytes, so queue messages
stay small and a payload shared by many requests is stored once. Supported references:

- `blob:sha256:<hex>`: an inline payload the producer stored in Redis (content-addressed).
- `file:///abs/path`: a regular file under one of the configured roots (no traversal or
  symlink escape: the resolved real path must stay inside a root). Anything else (a FIFO,
  a device, a socket, a directory) is refused before it is read, and it is opened with
  `O_NONBLOCK`, so no kind of file can block the worker process.
- `http://` / `https://`: an allow-listed host (`dispatchq.payload.http`: one strict parse
  for the check and the connection); capped at the size limit, retried on transient
  errors, redirects followed only on the same host, all within one total deadline.
- `data:[<mediatype>][;base64],<data>`: RFC 2397, inline.

Every failure is a permanent `PayloadError` naming the reason, whatever raised it (a
`ValueError` from a malformed reference included): a bad reference will not get better by
retrying the task. Only a Redis error (reading a blob) is left to the retry policy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import redis

from dispatchq.core.request import PAYLOAD_LIMIT
from dispatchq.errors import PayloadError
from dispatchq.payload.http import fetch, short, too_large
from dispatchq.store import keys

__all__ = ["PAYLOAD_LIMIT", "PayloadError", "PayloadPolicy", "PayloadResolver", "too_large"]

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_OPEN_FLAGS = (
    os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
)  # fmt: skip


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
    """Seconds for one whole http(s) fetch: connection, reads, retries and redirects."""

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
    """Turns references into bytes under a policy. One per worker process; thread-safe."""

    policy: PayloadPolicy
    blobs: redis.Redis

    def close(self) -> None:
        """Nothing to release: every http(s) fetch has a connection of its own."""

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
        try:
            data = self._resolve(ref, blob)
        except (PayloadError, redis.RedisError):
            raise
        except Exception as err:  # noqa: BLE001  (any other failure is the reference's)
            raise PayloadError(
                f"payload reference {short(ref)!r} cannot be resolved: "
                f"{type(err).__name__}: {short(str(err))}"
            ) from None
        if len(data) > PAYLOAD_LIMIT:
            raise too_large(len(data))
        return data

    def _resolve(self, ref: str, blob: bytes | None) -> bytes:
        scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
        if scheme == "blob":
            return self._blob(ref, blob)
        if scheme == "file":
            return self._file(ref)
        if scheme in ("http", "https"):
            return fetch(ref, self.policy.http_hosts, self.policy.http_timeout)
        if scheme == "data":
            return _data_url(ref)
        raise PayloadError(
            f"unsupported payload reference {short(ref)!r}: "
            "use blob:sha256:<hex>, file://, http(s):// or data:"
        )

    def _blob(self, ref: str, data: bytes | None) -> bytes:
        digest = _blob_digest(ref)
        if not digest:
            raise PayloadError(f"malformed blob reference {short(ref)!r}: want blob:sha256:<hex>")
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
            raise PayloadError(f"file reference {short(ref)!r} names a host; only local files")
        raw = unquote_to_bytes(parts.path)
        if b"\0" in raw:
            raise PayloadError(f"file reference {short(ref)!r} contains a NUL byte")
        path = Path(raw.decode("utf-8", "replace"))
        if not path.is_absolute():
            raise PayloadError(f"file reference {short(ref)!r} must be an absolute path")
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
        return _read_regular(real, path)

    def _inside_roots(self, path: Path) -> bool:
        return any(path.is_relative_to(root.resolve()) for root in self.policy.file_roots)


def _read_regular(real: Path, shown: Path) -> bytes:
    """The bytes of a regular file, or PayloadError. Its kind is checked before it is
    opened (opening a FIFO or a device can block, or have effects), and again on the open
    descriptor (it may have been swapped meanwhile), which never blocks: O_NONBLOCK."""
    try:
        _check_regular(real.stat(), shown)
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as err:
        raise PayloadError(f"payload file {shown} cannot be read: {_os_reason(err)}") from None
    try:
        _check_regular(os.fstat(fd), shown)
        chunks: list[bytes] = []
        size = 0
        while size <= PAYLOAD_LIMIT:
            chunk = os.read(fd, PAYLOAD_LIMIT + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise PayloadError(f"payload file {shown} cannot be read: {_os_reason(err)}") from None
    finally:
        os.close(fd)
    if size > PAYLOAD_LIMIT:
        raise PayloadError(
            f"Payload exceeds maximum size; {shown} has more than {PAYLOAD_LIMIT} bytes"
        )
    return b"".join(chunks)


def _check_regular(info: os.stat_result, shown: Path) -> None:
    if stat.S_ISREG(info.st_mode):
        if info.st_size > PAYLOAD_LIMIT:
            raise too_large(info.st_size)
        return
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
    raise PayloadError(f"payload file {shown} is {kind}, not a regular file; refused")


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


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _os_reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or type(err).__name__
