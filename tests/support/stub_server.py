"""A scripted HTTP server for client tests, on TCP, TLS or a unix socket.

Each request is recorded; `respond` (replaceable per test) maps it to a reply. HTTP/1.1
with keep-alive, so that connection reuse can be observed through `peers`.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    raw_path: str  # as sent, percent-encoding included
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: str

    @property
    def path(self) -> str:
        return urlsplit(self.raw_path).path

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes or str
    headers: dict[str, str] = field(default_factory=dict)
    hang: threading.Event | None = None  # wait for this before answering

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def ok(body: Any, index: int = 0) -> Reply:
    return Reply(200, body, {"X-Nomad-Index": str(index)} if index else {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def _handle(self) -> None:
        stub: StubServer = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        parts = urlsplit(self.path)
        seen = Seen(
            method=self.command,
            raw_path=self.path,
            query={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
            peer=str(self.client_address),
        )
        with stub.lock:
            stub.seen.append(seen)
        reply = stub.respond(seen)
        if reply.hang is not None:
            reply.hang.wait(10)
        body = reply.encoded()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    stub: StubServer


class _TCPServer(ThreadingHTTPServer):
    block_on_close = False
    stub: StubServer


class StubServer:
    """Serve in a thread; use as a context manager. `address` is what NomadConfig takes."""

    def __init__(
        self,
        *,
        unix_path: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.respond: Callable[[Seen], Reply] = lambda seen: Reply(404, "no route")
        self.server: _UnixServer | _TCPServer
        if unix_path:
            self.server = _UnixServer(unix_path, _Handler)
            self.address = f"unix://{unix_path}"
        else:
            tcp = _TCPServer(("127.0.0.1", 0), _Handler)
            if tls is not None:
                tcp.socket = tls.wrap_socket(tcp.socket, server_side=True)
            port = tcp.server_address[1]
            self.server = tcp
            self.address = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.server.stub = self
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def script(self, *replies: Reply) -> None:
        """Answer with these replies in turn (the last one repeats)."""
        queue = list(replies)

        def respond(seen: Seen) -> Reply:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.respond = respond

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
