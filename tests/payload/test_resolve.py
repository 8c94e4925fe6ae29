from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from dispatchq.payload.resolve import (
    PayloadError,
    PayloadPolicy,
    PayloadResolver,
    blob_digest,
    blob_ref,
)
from dispatchq.store import keys
from dispatchq.store.records import RecordStore


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes = {
            "/ok": (200, b"encode me", {}),
            "/big": (200, b"x" * 20000, {}),
            "/missing": (404, b"nope", {}),
            "/same-host-redirect": (302, b"", {"Location": "/ok"}),
            "/other-host-redirect": (302, b"", {"Location": "http://127.0.0.2:9/ok"}),
        }
        status, body, headers = routes.get(self.path, (404, b"", {}))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def resolver(
    redis_client: redis.Redis, tmp_path: Path, http_origin: str
) -> Iterator[PayloadResolver]:
    root = tmp_path / "media"
    root.mkdir()
    policy = PayloadPolicy.of([root], [http_origin], http_timeout=5)
    resolver = PayloadResolver(policy, redis_client)
    yield resolver
    resolver.close()


def test_no_reference_is_no_payload(resolver: PayloadResolver) -> None:
    assert resolver.resolve(None) is None
    assert resolver.resolve("") is None


def test_blob(resolver: PayloadResolver, redis_client: redis.Redis) -> None:
    redis_client.set(keys.blob(blob_digest(b"abc")), b"abc")
    assert resolver.resolve(blob_ref(b"abc")) == b"abc"


def test_blob_read_with_the_request_record(
    resolver: PayloadResolver, redis_client: redis.Redis
) -> None:
    """The worker reads the blob in the same round trip as it takes the request
    (`RecordStore.begin`); what it read is checked as a read of its own would be."""
    ref = blob_ref(b"abc")
    key = resolver.blob_key(ref)
    assert key == keys.blob(blob_digest(b"abc"))
    assert resolver.blob_key("blob:md5:abc") is None
    assert resolver.blob_key("data:,abc") is None
    redis_client.set(key, b"abc")
    begun = RecordStore(redis_client, ttl=60).begin("r-blob", "video", None, read=key)
    assert (begun.dispatched_job_id, begun.cancelled, begun.value) == ("", False, b"abc")
    assert resolver.resolve(ref, begun.value) == b"abc"
    with pytest.raises(PayloadError, match="does not match its digest"):
        resolver.resolve(ref, b"abd")


def test_missing_blob_names_the_reason(resolver: PayloadResolver) -> None:
    with pytest.raises(PayloadError, match="not found: it expired or was never stored"):
        resolver.resolve(blob_ref(b"never stored"))


def test_tampered_blob_is_refused(resolver: PayloadResolver, redis_client: redis.Redis) -> None:
    redis_client.set(keys.blob(blob_digest(b"abc")), b"abd")
    with pytest.raises(PayloadError, match="does not match its digest"):
        resolver.resolve(blob_ref(b"abc"))


def test_malformed_blob_ref(resolver: PayloadResolver) -> None:
    with pytest.raises(PayloadError, match="malformed blob reference"):
        resolver.resolve("blob:md5:abc")


def test_file_under_root(resolver: PayloadResolver, tmp_path: Path) -> None:
    (tmp_path / "media" / "in.json").write_bytes(b'{"a":1}')
    assert resolver.resolve(f"file://{tmp_path}/media/in.json") == b'{"a":1}'


def test_file_traversal_is_refused(resolver: PayloadResolver, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s")
    with pytest.raises(PayloadError, match="outside the allowed roots"):
        resolver.resolve(f"file://{tmp_path}/media/../secret.txt")


def test_file_symlink_escape_is_refused(resolver: PayloadResolver, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "media" / "link").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PayloadError, match="outside the allowed roots"):
        resolver.resolve(f"file://{tmp_path}/media/link")


def test_missing_file(resolver: PayloadResolver, tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="cannot be read: No such file or directory"):
        resolver.resolve(f"file://{tmp_path}/media/absent")


def test_oversize_file(resolver: PayloadResolver, tmp_path: Path) -> None:
    (tmp_path / "media" / "big").write_bytes(b"x" * 16385)
    with pytest.raises(PayloadError, match=r"Payload exceeds maximum size; 16385 > 16384"):
        resolver.resolve(f"file://{tmp_path}/media/big")


def test_files_disabled_without_roots(redis_client: redis.Redis) -> None:
    resolver = PayloadResolver(PayloadPolicy(), redis_client)
    with pytest.raises(PayloadError, match="disabled: no file roots set"):
        resolver.resolve("file:///etc/hostname")
    resolver.close()


def test_http_allowed(resolver: PayloadResolver, http_origin: str) -> None:
    assert resolver.resolve(f"http://{http_origin}/ok") == b"encode me"


def test_http_same_host_redirect_followed(resolver: PayloadResolver, http_origin: str) -> None:
    assert resolver.resolve(f"http://{http_origin}/same-host-redirect") == b"encode me"


def test_http_redirect_to_other_host_refused(resolver: PayloadResolver, http_origin: str) -> None:
    with pytest.raises(PayloadError, match="redirected to another host; refused"):
        resolver.resolve(f"http://{http_origin}/other-host-redirect")


def test_http_host_not_allowed(resolver: PayloadResolver) -> None:
    with pytest.raises(PayloadError, match="payload host '127.0.0.1:1' is not in the allow-list"):
        resolver.resolve("http://127.0.0.1:1/ok")


def test_http_oversize(resolver: PayloadResolver, http_origin: str) -> None:
    with pytest.raises(PayloadError, match="Payload exceeds maximum size; 20000 > 16384"):
        resolver.resolve(f"http://{http_origin}/big")


def test_http_error_status(resolver: PayloadResolver, http_origin: str) -> None:
    with pytest.raises(PayloadError, match="answered HTTP 404"):
        resolver.resolve(f"http://{http_origin}/missing")


def test_data_urls(resolver: PayloadResolver) -> None:
    encoded = base64.b64encode(b"\x00\x01binary").decode()
    assert resolver.resolve(f"data:application/octet-stream;base64,{encoded}") == b"\x00\x01binary"
    assert resolver.resolve("data:,hello%20world") == b"hello world"


def test_bad_data_url(resolver: PayloadResolver) -> None:
    with pytest.raises(PayloadError, match="bad base64"):
        resolver.resolve("data:;base64,@@@")
    with pytest.raises(PayloadError, match="no ','"):
        resolver.resolve("data:nocomma")


def test_unknown_scheme(resolver: PayloadResolver) -> None:
    with pytest.raises(PayloadError, match="unsupported payload reference 's3://b/k'"):
        resolver.resolve("s3://b/k")
