"""nomadsim's own HTTP/1.1 layer (httpserver.py), spoken to over a raw socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api

LEADER = b'"127.0.0.1:4647"'


@contextmanager
def connect(sim: NomadSimProcess) -> Iterator[socket.socket]:
    url = urlsplit(sim.address)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        yield sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything received until the server closes (True) or `timeout` passes (False)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    return data, True


def test_http10_closes_after_the_answer(nomadsim: NomadSimProcess) -> None:
    with connect(nomadsim) as sock:
        sock.sendall(b"GET /v1/status/leader HTTP/1.0\r\n\r\n")
        data, closed = read_all(sock)
    assert closed
    assert data.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in data
    assert data.endswith(b"\r\n\r\n" + LEADER)


def test_pipelined_requests_answered_in_order_until_close(nomadsim: NomadSimProcess) -> None:
    with connect(nomadsim) as sock:
        sock.sendall(
            b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v1/jobs?index=999999&wait=50ms HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /v1/regions HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v1/regions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        data, closed = read_all(sock)
    assert closed
    answers = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 4  # the request after `Connection: close` is not answered
    assert answers[0].endswith(LEADER)
    assert answers[1].endswith(b"]")  # the blocking query, answered before what follows
    assert answers[2].endswith(b"\r\n\r\n")  # HEAD: headers only
    assert b"Content-Length: 10\r\n" in answers[2]
    assert answers[3].endswith(b'["global"]')
    assert b"Connection: close\r\n" in answers[3]


def test_malformed_request_gets_400_and_close(nomadsim: NomadSimProcess) -> None:
    with connect(nomadsim) as sock:
        sock.sendall(b"GET /v1/regions HTTP/1.1\r\n\r\nNOT HTTP\r\n\r\n")
        data, closed = read_all(sock)
    assert closed
    assert data.endswith(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_expect_continue(nomadsim: NomadSimProcess) -> None:
    with connect(nomadsim) as sock:
        sock.sendall(b"PUT /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        data, closed = read_all(sock)
    assert closed
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"Job must be specified")


def test_cut_closes_without_an_answer(nomadsim: NomadSimProcess, api: Api) -> None:
    api.ok("POST", "/_sim/faults", json={"kind": "cut", "route": "regions", "count": 1})
    with connect(nomadsim) as sock:
        sock.sendall(b"GET /v1/regions HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = read_all(sock)
    assert (data, closed) == (b"", True)
    assert api.ok("GET", "/v1/regions") == ["global"]


def test_event_stream_is_chunked_on_http11(nomadsim: NomadSimProcess) -> None:
    with connect(nomadsim) as sock:
        sock.sendall(b"GET /v1/event/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = read_all(sock, timeout=1.0)
    assert not closed
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert body.startswith(b"3\r\n{}\n\r\n")
