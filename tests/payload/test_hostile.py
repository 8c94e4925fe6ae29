"""Hostile payload references, as classes (issue 15): no kind of file and no server behaviour
can block a resolve past its deadline; every failure is a PayloadError; the URL the
allow-list checks is the URL that is connected to."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from dispatchq.payload.http import parse_http_url
from dispatchq.payload.resolve import PayloadError, PayloadPolicy, PayloadResolver
from tests.support.hostile import Trickle


def _resolver(
    client: redis.Redis, roots: list[Path], hosts: list[str], timeout: float = 5.0
) -> PayloadResolver:
    return PayloadResolver(PayloadPolicy.of(roots, hosts, http_timeout=timeout), client)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


def test_no_kind_of_file_blocks_or_is_misreported(redis_client: redis.Redis, root: Path) -> None:
    """A FIFO with no writer (open() would block the whole process), a socket, a directory
    and character devices: each refused at once, by kind, before any read."""
    os.mkfifo(root / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    (root / "dir").mkdir()
    resolver = _resolver(redis_client, [root, Path("/dev")], [])
    cases = {
        f"file://{root}/fifo": "is a FIFO, not a regular file",
        f"file://{root}/sock": "is a socket, not a regular file",
        f"file://{root}/dir": "is a directory, not a regular file",
        "file:///dev/zero": "is a character device, not a regular file",
        "file:///dev/null": "is a character device, not a regular file",
    }
    if Path("/dev/tty").exists():
        cases["file:///dev/tty"] = "is a character device"
    started = time.monotonic()
    try:
        for ref, reason in cases.items():
            with pytest.raises(PayloadError, match=reason):
                resolver.resolve(ref)
    finally:
        listener.close()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("http://127.0.0.1:99999/x", "malformed payload URL"),
        ("http://[::1/x", "malformed payload URL"),
        ("http://[/x", "malformed payload URL"),
        ("file:///media/a%00b", "contains a NUL byte"),
        ("file://[/x", "cannot be resolved: ValueError"),
        ("http://h:0/x", "port out of range"),
        ("http:///x", "malformed payload URL"),
        ("http://%30/x", "malformed payload URL"),
        ("http://[@127.0.0.1:8/x", "malformed payload URL"),
        ("http://user:hunter22@127.0.0.1:1/x", "not in the allow-list"),
    ],
)
def test_malformed_references_are_payload_errors(
    redis_client: redis.Redis, root: Path, ref: str, reason: str
) -> None:
    """What used to raise ValueError (bad port, NUL, unclosed '[') names the reason."""
    with pytest.raises(PayloadError, match=reason) as caught:
        _resolver(redis_client, [root], ["127.0.0.1:8"]).resolve(ref)
    assert "hunter22" not in str(caught.value)


reference_text = st.text(
    st.characters(max_codepoint=0x2FF) | st.sampled_from("%[]@\\:/?#.0"), max_size=40
)
references = st.one_of(
    reference_text,
    st.builds(lambda p, t: p + t, st.sampled_from(
        ["file://", "file:///", "http://", "https://", "data:", "data:;base64,", "blob:sha256:",
         "http://127.0.0.1:", "http://[", "file://localhost/"]), reference_text),
)  # fmt: skip


@given(ref=references)
@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_any_reference_resolves_or_is_a_payload_error_quickly(
    redis_client: redis.Redis, ref: str
) -> None:
    """Every reference: bytes, None, or PayloadError, within a second (nothing listens on
    the allow-listed port, and the file root is a directory of its own)."""
    resolver = _resolver(redis_client, [Path("/nonexistent-root")], ["127.0.0.1:9"], 1.0)
    started = time.monotonic()
    try:
        data = resolver.resolve(ref)
    except PayloadError as err:
        assert str(err)
    else:
        assert data is None or len(data) <= 16_384
    assert time.monotonic() - started < 3


@given(text=st.text(st.sampled_from("htps:/\\@[]%:.0123456789abcx?#-"), max_size=40).map(
    lambda tail: "http://" + tail))  # fmt: skip
@settings(max_examples=1500, deadline=None, database=None)
def test_what_is_allowed_is_where_the_connection_goes(text: str) -> None:
    """The one parse agrees with urllib3's (which opens connections) and with urllib's on
    host and port, or refuses the URL: no two readings of one URL get through."""
    try:
        url = parse_http_url(text)
    except PayloadError:
        return
    ours = (url.host, url.port)
    theirs = parse_url(text)
    assert ours == ((theirs.host or "").lower(), theirs.port or 80)
    split = urlsplit(text)
    assert ours == ((split.hostname or "").lower().join("[]" if ":" in url.host else ["", ""]),
                    split.port or 80)  # fmt: skip
    assert url.host.strip("[]") != ""


def test_backslash_userinfo_bypass_is_refused(redis_client: redis.Redis) -> None:
    resolver = _resolver(redis_client, [], ["127.0.0.1:8"])
    with pytest.raises(PayloadError, match=r"contains '\\\\'"):
        resolver.resolve("http://127.0.0.2:8\\@127.0.0.1:8/x")


@pytest.fixture(params=[False, True], ids=["body", "headers"])
def trickle(request: Any) -> Iterator[Trickle]:
    server = Trickle(headers_too=request.param)
    server.start()
    yield server
    server.stop.set()
    server.sock.close()


def test_a_trickling_server_is_cut_off_at_the_total_deadline(
    redis_client: redis.Redis, trickle: Trickle
) -> None:
    """Each read returns within the read timeout, yet the fetch ends at the deadline."""
    resolver = _resolver(redis_client, [], [f"127.0.0.1:{trickle.port}"], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(PayloadError, match=r"did not complete within 0.5 s"):
        resolver.resolve(f"http://127.0.0.1:{trickle.port}/slow")
    assert time.monotonic() - started < 2.0  # the server would trickle for ever


def test_https_is_verified(redis_client: redis.Redis, tmp_path: Path) -> None:
    """A server whose certificate no known CA signed is refused, with the reason."""
    import ssl

    from dispatchq.devstack.tls import make_pki

    pki = make_pki(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    origin = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(PayloadError, match="CERTIFICATE_VERIFY_FAILED"):
            _resolver(redis_client, [], [origin]).resolve(f"https://{origin}/x")
    finally:
        listener.close()
        thread.join(5)
