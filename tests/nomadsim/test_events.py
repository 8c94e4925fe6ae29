"""The event stream: heartbeats, topics and keys, replay by index, errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api, parameterized, unique


class Stream:
    """A raw HTTP/1.0 reader of /v1/event/stream (no client-side buffering surprises)."""

    def __init__(self, port: int, query: str, token: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        headers = f"X-Nomad-Token: {token}\r\n" if token else ""
        self.sock.sendall(
            f"GET /v1/event/stream?{query} HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode()
        )
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def line(self) -> Any:
        raw = self._until(b"\n")
        return json.loads(raw) if raw else None

    def events_until(self, done: Any, limit: int = 200) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for _ in range(limit):
            obj = self.line()
            assert obj is not None, "stream closed"
            events.extend(obj.get("Events") or [])
            if done(events):
                return events
        pytest.fail("expected events did not arrive")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=["--heartbeat", "100ms", "--event-buffer", "50"]) as process:
        yield process


@pytest.fixture
def sapi(sim: NomadSimProcess) -> Iterator[Api]:
    client = Api(sim.address)
    yield client
    client.close()


def open_stream(sim: NomadSimProcess, query: str = "", token: str = "") -> Stream:
    return Stream(sim.port, query, token)


def test_heartbeats_and_headers(sim: NomadSimProcess) -> None:
    stream = open_stream(sim)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "application/json"
        assert stream.headers["cache-control"] == "no-cache"
        assert [stream.line() for _ in range(3)] == [{}, {}, {}]
    finally:
        stream.close()


def test_dispatch_events_with_keys_and_types(sim: NomadSimProcess, sapi: Api) -> None:
    job_id = unique("ev")
    sapi.register(parameterized(job_id))
    stream = open_stream(sim, "topic=Job&topic=Evaluation&topic=Allocation")
    try:
        assert stream.line() == {}
        result = sapi.dispatch(job_id)
        child = result["DispatchedJobID"]

        def complete(events: list[dict[str, Any]]) -> bool:
            return any(e["Topic"] == "Allocation"
                       and e["Payload"]["Allocation"]["ClientStatus"] == "complete"
                       for e in events)

        events = [e for e in stream.events_until(complete)
                  if child in (e["Key"], *(e["FilterKeys"] or []))]
    finally:
        stream.close()
    first_two = events[:2]
    assert {(e["Topic"], e["Type"]) for e in first_two} == {
        ("Job", "JobRegistered"), ("Evaluation", "JobRegistered")}
    assert {e["Index"] for e in first_two} == {result["Index"]}
    job_event = next(e for e in events if e["Topic"] == "Job")
    assert (job_event["Key"], job_event["FilterKeys"]) == (child, None)
    eval_event = next(e for e in events if e["Topic"] == "Evaluation")
    assert eval_event["Key"] == result["EvalID"]
    assert eval_event["FilterKeys"] == [child, ""]
    assert eval_event["Namespace"] == "default"
    assert eval_event["Payload"]["Evaluation"]["Status"] == "pending"
    types = {(e["Topic"], e["Type"]) for e in events}
    assert ("Evaluation", "EvaluationUpdated") in types
    assert ("Allocation", "PlanResult") in types
    assert ("Allocation", "AllocationUpdated") in types
    alloc_event = next(e for e in events if e["Topic"] == "Allocation")
    assert alloc_event["FilterKeys"] == [child, ""]
    assert alloc_event["Payload"]["Allocation"]["Job"] is None


def test_topic_key_filter_and_replay_from_index(sim: NomadSimProcess, sapi: Api) -> None:
    job_id = unique("replay")
    sapi.register(parameterized(job_id))
    wanted = sapi.dispatch(job_id)
    sapi.dispatch(job_id)
    stream = open_stream(
        sim, f"index={wanted['Index']}&topic=Evaluation:{wanted['DispatchedJobID']}")
    try:
        assert stream.line() == {}
        events = stream.events_until(
            lambda evs: any(e["Payload"]["Evaluation"]["Status"] == "complete" for e in evs))
    finally:
        stream.close()
    assert {e["Topic"] for e in events} == {"Evaluation"}
    assert {e["Key"] for e in events} == {wanted["EvalID"]}
    assert events[0]["Index"] == wanted["Index"]


def test_job_deregistered_event(sim: NomadSimProcess, sapi: Api) -> None:
    job_id = unique("dereg")
    registered = sapi.register(parameterized(job_id))
    # index 0 would replay the registration from the buffer
    stream = open_stream(sim, f"topic=Job:{job_id}&index={registered['Index'] + 1}")
    try:
        assert stream.line() == {}
        sapi.ok("DELETE", f"/v1/job/{job_id}", params={"purge": "true"})
        events = stream.events_until(bool)
    finally:
        stream.close()
    assert (events[0]["Type"], events[0]["Key"]) == ("JobDeregistered", job_id)


def test_a_node_drain_is_a_node_event_for_every_namespace(
    sim: NomadSimProcess, sapi: Api
) -> None:
    node = sapi.ok("GET", "/v1/nodes")[0]["ID"]
    stream = open_stream(sim, "namespace=elsewhere&topic=Node")
    try:
        assert stream.line() == {}
        sapi.ok("PUT", f"/v1/node/{node}/drain", json={"DrainSpec": None, "MarkEligible": True})
        events = stream.events_until(bool)
    finally:
        stream.close()
    [event] = events
    assert (event["Topic"], event["Type"], event["Key"], event["Namespace"]) == (
        "Node", "NodeDrain", node, ""
    )  # fmt: skip
    assert event["Payload"]["Node"]["SchedulingEligibility"] == "eligible"


def test_namespace_parameter(sim: NomadSimProcess, sapi: Api) -> None:
    sapi.ok("PUT", "/v1/namespace/evns")
    job_id = unique("nsev")
    stream = open_stream(sim, "namespace=evns&topic=Job")
    try:
        assert stream.line() == {}
        sapi.register(parameterized(unique("elsewhere")))
        sapi.register(parameterized(job_id), namespace="evns")
        events = stream.events_until(bool)
    finally:
        stream.close()
    assert [(e["Key"], e["Namespace"]) for e in events] == [(job_id, "evns")]


def test_buffer_is_bounded(sim: NomadSimProcess, sapi: Api) -> None:
    job_id = unique("bounded")
    sapi.register(parameterized(job_id))
    for _ in range(30):
        sapi.dispatch(job_id)
    stream = open_stream(sim, "index=1")
    try:
        assert stream.line() == {}
        first = stream.line()
    finally:
        stream.close()
    assert first["Index"] > 10


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ("index=abc", 400,
         'Unable to parse index: strconv.ParseUint: parsing "abc": invalid syntax'),
        ("topic=a:b:c", 400,
         "Invalid topic query: error parsing topics: Invalid key value pair for topic, "
         "topic: a:b:c"),
    ],
)
def test_errors(sapi: Api, query: str, status: int, body: str) -> None:
    response = sapi.get(f"/v1/event/stream?{query}")
    assert (response.status_code, response.text) == (status, body)


def test_cut_drops_every_open_stream_mid_body(sim: NomadSimProcess, sapi: Api) -> None:
    """`POST /_sim/event-stream/cut`: open streams lose their connection without the body's
    end (a chunked stream's last chunk never comes); a new stream works at once."""
    chunked = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
    plain = open_stream(sim, "topic=Job:none")
    try:
        chunked.sendall(b"GET /v1/event/stream?topic=Job:none HTTP/1.1\r\nHost: x\r\n\r\n")
        first = chunked.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in first
        assert plain.line() == {}
        assert sapi.ok("POST", "/_sim/event-stream/cut")["cut"] >= 2  # an earlier one may linger
        assert plain.line() is None  # the connection is gone
        rest = b""
        try:
            while chunk := chunked.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass
        assert b"0\r\n\r\n" not in first + rest  # no last chunk: cut, not ended
    finally:
        chunked.close()
        plain.close()
    again = open_stream(sim, "topic=Job")
    try:
        job_id = unique("after-cut")
        sapi.register(parameterized(job_id))
        events = again.events_until(lambda evs: any(e["Key"] == job_id for e in evs))
        assert events[-1]["Type"] == "JobRegistered"
    finally:
        again.close()


def test_non_get_is_405(sapi: Api) -> None:
    assert sapi.post("/v1/event/stream").status_code == 405
