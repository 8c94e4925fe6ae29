"""The shared event feed against a live nomadsim: reads served from the stream, HTTP where
the feed cannot vouch, and the fall-backs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from dispatchq.core.evalfeed import EvaluationFeed, FeedReader
from dispatchq.core.monitor import follow
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from tests.support.nomad_jobs import add_fault, clear_faults, parameterized_job, register
from tests.support.requests import request


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=["--nodes", "2", "--heartbeat", "1s"]) as s:
        register(s.address, parameterized_job("feed-job"))
        yield s


@pytest.fixture
def client(sim: NomadSimProcess) -> Iterator[NomadClient]:
    clear_faults(sim.address)
    with NomadClient(NomadConfig(address=sim.address)) as c:
        yield c
    clear_faults(sim.address)


def _reads(sim: NomadSimProcess) -> dict[str, int]:
    stats = requests.get(f"{sim.address}/_sim/stats", timeout=5).json()["requests_by_route"]
    return {name: stats.get(name, 0) for name in ("evaluation", "evaluation-allocations")}


def _connected(feed: EvaluationFeed) -> None:
    deadline = time.monotonic() + 10
    while feed.covered_from is None:
        assert time.monotonic() < deadline, "the feed did not connect"
        time.sleep(0.01)


def test_monitor_reads_come_from_the_stream(sim: NomadSimProcess, client: NomadClient) -> None:
    feed = EvaluationFeed(client).start()
    try:
        _connected(feed)
        response = client.dispatch(request("feed-job"))
        before = _reads(sim)
        reader = FeedReader(feed, client)
        reader.expect(response.eval_id, response.eval_create_index)
        outcome = follow(reader, response.eval_id)
        assert outcome.eval_status == "complete"
        assert outcome.exit_code == 0
        assert len(outcome.allocations) == 1
        assert _reads(sim) == before  # not one HTTP read of the evaluation or its allocs
    finally:
        feed.stop()


def test_evaluation_older_than_the_feed_is_read_over_http(
    sim: NomadSimProcess, client: NomadClient
) -> None:
    response = client.dispatch(request("feed-job"))
    feed = EvaluationFeed(client).start()
    try:
        _connected(feed)
        before = _reads(sim)
        reader = FeedReader(feed, client)
        reader.expect(response.eval_id, response.eval_create_index)
        outcome = follow(reader, response.eval_id)
        assert outcome.exit_code == 0
        assert _reads(sim)["evaluation"] > before["evaluation"]
    finally:
        feed.stop()


def test_refused_stream_falls_back_to_http() -> None:
    """A token that may dispatch but not read jobs: Nomad refuses the stream (403), the feed
    says so and stops, and reads go over HTTP (where they fail the same way, as in the CLI)."""
    with NomadSimProcess(args=["--acl"]) as sim:
        admin = requests.post(f"{sim.address}/v1/acl/bootstrap", timeout=5).json()["SecretID"]
        headers = {"X-Nomad-Token": admin}
        rules = 'namespace "default" { capabilities = ["dispatch-job"] }'
        requests.post(
            f"{sim.address}/v1/acl/policy/dispatch-only",
            json={"Name": "dispatch-only", "Rules": rules},
            headers=headers,
            timeout=5,
        ).raise_for_status()
        token = requests.post(
            f"{sim.address}/v1/acl/token",
            json={"Type": "client", "Policies": ["dispatch-only"]},
            headers=headers,
            timeout=5,
        ).json()["SecretID"]
        with NomadClient(NomadConfig(address=sim.address, token=token)) as client:
            feed = EvaluationFeed(client).start()
            try:
                deadline = time.monotonic() + 10
                while not feed.refused:
                    assert time.monotonic() < deadline, "the feed kept retrying a 403"
                    time.sleep(0.01)
                assert feed.catch_up(1, timeout=0.1) is False
            finally:
                feed.stop()


def test_reconnects_after_the_stream_is_cut(sim: NomadSimProcess, client: NomadClient) -> None:
    add_fault(sim.address, {"kind": "cut", "route": "event-stream", "count": 2})
    feed = EvaluationFeed(client).start()
    try:
        _connected(feed)
        assert feed.generation >= 1
        response = client.dispatch(request("feed-job"))
        reader = FeedReader(feed, client)
        reader.expect(response.eval_id, response.eval_create_index)
        assert follow(reader, response.eval_id).exit_code == 0
    finally:
        feed.stop()


def test_a_stream_left_mid_way_does_not_spoil_its_pooled_connection(
    sim: NomadSimProcess,
) -> None:
    """The pool hands out the connection returned last: a request after an abandoned stream
    gets the stream's connection, whose unread bytes must have gone with it."""
    with NomadClient(NomadConfig(address=sim.address), pool_size=2) as one:
        stream = one.event_stream(topics=["Evaluation"], index=1)
        one.dispatch(request("feed-job"))
        index, events = next(stream)
        assert index > 0 and events
        one.dispatch(request("feed-job"))  # more events on their way to the stream's connection
        time.sleep(0.2)
        stream.close()
        job, _ = one.read_job("feed-job")
    assert job["ID"] == "feed-job"


def test_client_updates_are_read_for_followed_evaluations_only(
    sim: NomadSimProcess, client: NomadClient
) -> None:
    """The stream's batches of allocation client updates are parsed for the evaluations a
    monitor here follows, and skipped for the others (another worker's dispatches): a
    child nobody here follows stays as placed in the feed while Nomad says it ran; the
    followed child's allocation is seen running or done."""
    feed = EvaluationFeed(client).start()
    try:
        _connected(feed)
        other = client.dispatch(request("feed-job"))
        _until(lambda: _client_status(client.evaluation_allocations(other.eval_id)[0]))
        assert _client_status(feed.allocations(other.eval_id)) == "pending"
        mine = client.dispatch(request("feed-job"))
        FeedReader(feed, client).expect(mine.eval_id, mine.eval_create_index)
        _until(lambda: _client_status(feed.allocations(mine.eval_id)))
    finally:
        feed.stop()


def _client_status(allocs: list[dict[str, Any]]) -> str:
    return str(allocs[0]["ClientStatus"]) if allocs else ""


def _until(ran: Callable[[], str]) -> None:
    """Wait until `ran()` says running or complete."""
    deadline = time.monotonic() + 15
    while ran() not in ("running", "complete"):
        assert time.monotonic() < deadline, ran()
        time.sleep(0.05)
