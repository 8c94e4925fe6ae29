"""Blocking queries: index, wait, timeouts, invalid values, wake-ups."""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

from tests.nomadsim.conftest import Api, batch_job, parameterized, unique


def test_without_index_nothing_blocks(api: Api) -> None:
    job_id = unique("noblock")
    api.register(batch_job(job_id))
    response = api.get(f"/v1/job/{job_id}", params={"wait": "5m"})
    assert response.status_code == 200


def test_timeout_returns_current_data(api: Api) -> None:
    job_id = unique("timeout")
    api.register(parameterized(job_id))
    first = api.get(f"/v1/job/{job_id}")
    index = first.headers["X-Nomad-Index"]
    again = api.get(f"/v1/job/{job_id}", params={"index": index, "wait": "100ms"})
    assert again.status_code == 200
    assert again.headers["X-Nomad-Index"] == index
    assert again.json() == first.json()


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        box["result"] = fn()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_job_read_wakes_on_change(api: Api, nomadsim_address: str) -> None:
    job_id = unique("wake")
    api.register(parameterized(job_id))
    index = int(api.get(f"/v1/job/{job_id}").headers["X-Nomad-Index"])

    def blocked() -> requests.Response:
        with requests.Session() as session:
            return session.get(f"{nomadsim_address}/v1/job/{job_id}",
                               params={"index": str(index), "wait": "20s"}, timeout=30)

    thread, box = _in_thread(blocked)
    api.wait_for(lambda: api.ok("GET", "/_sim/stats")["blocking_queries"] >= 1,
                 "the query to block")
    assert thread.is_alive()
    api.ok("DELETE", f"/v1/job/{job_id}")
    thread.join(30)
    response = box["result"]
    assert int(response.headers["X-Nomad-Index"]) > index
    assert response.json()["Stop"] is True


def test_eval_read_blocks_until_complete(api: Api, nomadsim_address: str) -> None:
    job_id = unique("evalwake")
    api.register(parameterized(job_id))
    api.ok("PUT", "/_sim/scheduler", json={"schedule_delay_ms": 300})
    try:
        result = api.dispatch(job_id)
        response = api.get(f"/v1/evaluation/{result['EvalID']}",
                           params={"index": str(result["EvalCreateIndex"]), "wait": "20s"})
    finally:
        api.ok("PUT", "/_sim/scheduler", json={"schedule_delay_ms": 0})
    body = response.json()
    assert int(response.headers["X-Nomad-Index"]) == body["ModifyIndex"] > result["Index"]
    assert body["Status"] == "complete"


def test_list_and_allocations_block(api: Api) -> None:
    job_id = unique("listwake")
    api.register(parameterized(job_id, config={"run_for": "200ms"}))
    result = api.dispatch(job_id)
    child = quote(result["DispatchedJobID"], safe="")
    seen: set[str] = set()
    index = 1
    while "complete" not in seen:
        response = api.get(f"/v1/job/{child}/allocations",
                           params={"index": str(index), "wait": "10s"})
        assert response.status_code == 200
        new_index = int(response.headers["X-Nomad-Index"])
        assert new_index > index
        index = new_index
        seen.update(a["ClientStatus"] for a in response.json())
    lists = api.get("/v1/evaluations", params={"index": "1", "wait": "1s"})
    assert int(lists.headers["X-Nomad-Index"]) > 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"wait": "5"}, "Invalid wait time"),
        ({"wait": "abc"}, "Invalid wait time"),
        ({"wait": "5sec"}, "Invalid wait time"),
        ({"index": "-1"}, "Invalid index"),
        ({"index": "x"}, "Invalid index"),
        ({"index": "18446744073709551616"}, "Invalid index"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/evaluations", "/v1/allocations",
                                  "/v1/job/any", "/v1/evaluation/any"])
def test_invalid_values(api: Api, path: str, params: dict[str, str], message: str) -> None:
    response = api.get(path, params=params)
    assert (response.status_code, response.text) == (400, message)


@pytest.mark.parametrize("wait", ["300ms", "1.5s", "1m30s", "250us", "0"])
def test_go_durations_accepted(api: Api, wait: str) -> None:
    response = api.get("/v1/jobs", params={"wait": wait, "index": "1"})
    assert response.status_code == 200


@pytest.fixture
def nomadsim_address(api: Api) -> str:
    return api.address


def test_disconnected_client_releases_its_blocking_query(api: Api) -> None:
    port = urlsplit(api.address).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/jobs?index=18446744073709551615&wait=5m HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
        api.wait_for(lambda: api.ok("GET", "/_sim/stats")["blocking_queries"] >= 1,
                     "the query to block")
    api.wait_for(lambda: api.ok("GET", "/_sim/stats")["blocking_queries"] == 0,
                 "the query to be released")


def test_many_blocking_queries_wake_only_on_their_change(api: Api) -> None:
    """Hundreds of parked queries cost no polling and each wakes on its own job."""
    port = urlsplit(api.address).port
    assert port is not None
    prefix = unique("many")
    index = api.get(f"/v1/job/{prefix}-0").headers["X-Nomad-Index"]
    socks = []
    try:
        for n in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"GET /v1/job/{prefix}-{n}?index={index}&wait=60s "
                         "HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(sock)
        api.wait_for(lambda: api.ok("GET", "/_sim/stats")["blocking_queries"] >= 300,
                     "the queries to block")
        api.register(batch_job(f"{prefix}-7"))
        socks[7].settimeout(10)
        assert socks[7].recv(64).startswith(b"HTTP/1.1 200 OK")
        socks[8].settimeout(0.2)
        with pytest.raises(TimeoutError):
            socks[8].recv(64)
    finally:
        for sock in socks:
            sock.close()
    api.wait_for(lambda: api.ok("GET", "/_sim/stats")["blocking_queries"] == 0,
                 "the queries to be released")
