"""nomadsim's HTTP/1.1 layer: an asyncio protocol around httptools' request parser.

Why not aiohttp's server: measured with wrk -c32 on uvloop, a trivial handler under
aiohttp's low-level `web.Server` costs 83-93 us of server CPU per request, the same
handler on this protocol 41-47 us (mostly the socket system calls), and nomadsim's hot
path (dispatch) is short enough that the difference decides its throughput. The layer
does only what nomadsim needs:

- requests on a connection are answered in order, one handler at a time (later ones,
  pipelined, wait parsed in a queue; reading pauses while the queue is long);
- keep-alive as the parser decides it (HTTP/1.0, `Connection: close`), `Expect:
  100-continue`, HEAD without a body, a 400 and close on a malformed request;
- a handler that raises answers 500 as aiohttp did; a handler answering None cuts the
  connection without a response (fault injection);
- a closed connection cancels its running handler at once (a blocking query or an event
  stream does not stay parked until its timeout);
- `Request.stream()` for a chunked response written as it goes (the event stream).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

log = logging.getLogger(__name__)

REASONS = {status.value: status.phrase for status in HTTPStatus}
TEXT = "text/plain; charset=utf-8"
NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())
MAX_QUEUED = 16  # pipelined requests parsed ahead of the one being answered
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Response:
    """A complete answer; Content-Length, Date and Connection are added when written."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class Request:
    """What the handlers read of a request: everything is parsed before they run."""

    __slots__ = (
        "_conn", "_query", "body", "headers", "keep_alive", "method", "raw_path", "version",
    )

    def __init__(  # noqa: PLR0917  (built in one place, positionally, per request)
        self, conn: Connection, method: str, raw_path: str,
        headers: CIMultiDictProxy[str], body: bytes, version: str, keep_alive: bool,
    ) -> None:
        self._conn = conn
        self._query: MultiDictProxy[str] | None = None
        self.method = method
        self.raw_path = raw_path  # path and query as sent, still percent-encoded
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            raw_query = self.raw_path.partition("?")[2]
            self._query = (
                MultiDictProxy(MultiDict(parse_qsl(raw_query, keep_blank_values=True)))
                if raw_query else NO_QUERY
            )
        return self._query

    async def read(self) -> bytes:
        return self.body

    def stream(self, status: int, headers: dict[str, str]) -> Stream:
        """Send the status and headers now; the body follows through `Stream.write`."""
        return Stream(self._conn, self, status, headers)


class Stream:
    """A response body sent in chunks as it is produced (HTTP/1.0: until close)."""

    __slots__ = ("_conn", "chunked", "done", "status")

    def __init__(
        self, conn: Connection, request: Request, status: int, headers: dict[str, str]
    ) -> None:
        self._conn = conn
        self.status = status
        self.done = False
        self.chunked = request.version != "1.0"
        if self.chunked:
            headers = {**headers, "Transfer-Encoding": "chunked"}
        else:
            request.keep_alive = False
        assert conn.transport is not None
        conn.transport.write(http_head(request, status, headers, None))

    async def write(self, data: bytes) -> None:
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        await self._conn.drain()

    def abort(self) -> None:
        """Drop the connection mid-body: no last chunk, so the client sees a cut."""
        self.done = True
        transport = self._conn.transport
        if transport is not None:
            transport.abort()

    def write_eof(self) -> None:
        if self.done:
            return
        self.done = True
        transport = self._conn.transport
        if self.chunked and transport is not None and not transport.is_closing():
            transport.write(b"0\r\n\r\n")


Reply = Response | Stream
Handler = Callable[[Request], Awaitable[Reply | None]]


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    return formatdate(second, usegmt=True)


def http_head(
    request: Request, status: int, headers: dict[str, str], length: int | None
) -> bytes:
    """The status line and headers; no Content-Length for a streamed body (None)."""
    lines = [f"HTTP/{request.version} {status} {REASONS.get(status, '')}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    if not request.keep_alive:
        lines.append("Connection: close\r\n")
    elif request.version == "1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append(f"Date: {_date(int(time.time()))}\r\n\r\n")
    return "".join(lines).encode("latin-1")


class Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    def __init__(self, handler: Handler, connections: set[Connection]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request | None] = deque()  # None: a malformed request
        self.task: asyncio.Task[None] | None = None
        self.reading = True
        self.writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.url: list[bytes] = []
        self.header_list: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.expect_continue = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._pause()
            self._enqueue(None)

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    async def drain(self) -> None:
        if self.writable is not None:
            await self.writable

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = []
        self.header_list = []
        self.body = []
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name.decode("latin-1"), value.decode("latin-1")))
        if len(name) == 6 and name.lower() == b"expect":
            self.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        # Only when no earlier answer is still due: it must not overtake one.
        if self.expect_continue and self.task is None and self.transport is not None:
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        self._enqueue(Request(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self.url).decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(CIMultiDict(self.header_list)),
            b"".join(self.body),
            parser.get_http_version(),
            parser.should_keep_alive(),
        ))
        if len(self.pending) >= MAX_QUEUED:
            self._pause()

    # answering

    def _pause(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _enqueue(self, request: Request | None) -> None:
        self.pending.append(request)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.pending:
                request = self.pending.popleft()
                if request is None:
                    transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")
                    transport.close()
                    return
                if not self.reading and len(self.pending) < MAX_QUEUED // 2:
                    self.reading = True
                    transport.resume_reading()
                reply = await self._run(request)
                if reply is None:
                    transport.abort()
                    return
                if isinstance(reply, Stream):
                    reply.write_eof()
                else:
                    self.write(request, reply)
                if not request.keep_alive:
                    transport.close()
                    return
        finally:
            self.task = None

    async def _run(self, request: Request) -> Reply | None:
        try:
            return await self.handler(request)
        except Exception:
            log.exception("Error handling request %s %s", request.method, request.raw_path)
            return Response(
                500, b"500 Internal Server Error\n\nServer got itself in trouble",
                {"Content-Type": TEXT},
            )

    def write(self, request: Request, response: Response) -> None:
        assert self.transport is not None
        body = response.body
        head = http_head(request, response.status, response.headers, len(body))
        self.transport.write(head if request.method == "HEAD" else head + body)


class HttpServer:
    """Listens on host:port and hands every request to `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self.handler, self.connections), host, port, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers to end."""
        if self.server is not None:
            self.server.close()
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
