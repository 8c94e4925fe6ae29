"""A batch followed `until` finished over real processes (redis-server, nomadsim running
mock_driver children with `--time-scale 0.001`, a worker, `dispatchq tracker` and
`dispatchq notifier` with a webhook receiver in this process): counts by ending, the first
failures with their task exit codes, `--max-attempts`, `batch retry`, and a followed
request's own webhook."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from dispatchq.devstack.notifier_process import NotifierProcess
from dispatchq.devstack.tracker_process import TrackerProcess
from dispatchq.producer.api import Producer
from dispatchq.producer.batch import request_id_for
from tests.notifier.test_notifier_e2e import SECRET, Receiver
from tests.support.nomad_jobs import FAIL_FIRST, child_running, mock_encode_job, register
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def running(stack: Stack) -> Iterator[Stack]:
    with stack.worker("bw1"), TrackerProcess(env=stack.env, log_path=stack.log_dir / "bt.log"):
        yield stack


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _wait(check: Callable[[], Any], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", *args], capture_output=True, text=True,
        env={**stack.env, "PATH": "/usr/bin:/bin"}, timeout=60, check=False,
    )  # fmt: skip


def _finished(producer: Producer, batch: str) -> bool:
    status = producer.batch_status(batch)
    return status is not None and status.finished


def test_a_followed_request_gets_its_own_webhook_when_its_child_ends(
    running: Stack, receiver: Receiver
) -> None:
    env = {**running.env, "DISPATCHQ_NOTIFY_HOSTS": f"127.0.0.1:{receiver.port}",
           "DISPATCHQ_NOTIFY_SECRET": SECRET}  # fmt: skip
    with NotifierProcess(env=env, log_path=running.log_dir / "bn.log"), \
            running.producer() as producer:  # fmt: skip
        rid = producer.enqueue("enc", meta={"run_for": "20s"}, until="finished",
                               notify_url=receiver.url())  # fmt: skip
        _wait(lambda: f"request:{rid}:1" in receiver.delivered(), "the webhook")
    [(_, _, body, signed)] = [p for p in receiver.posts if p[1] == f"request:{rid}:1"]
    assert (body["status"], body["exit_code"], signed) == ("finished", 0, True)
    assert body["summary"]["child"]["status"] == "dead"  # sent at the child's end


def test_a_batch_of_every_kind_of_ending_counts_lists_and_reruns_exactly(
    running: Stack, redis_client: redis.Redis
) -> None:
    """Eight items, each ending its own way, `--max-attempts 2`: exact counts by ending,
    `results --failed` lists exactly the failed ones, and only the exit-2 ones ran again."""
    sim = running.sim.address
    register(sim, mock_encode_job("enc-mix"))
    metas = [
        {"run_for": "30s"},  # 1: succeeds
        {"exit_code": "3", "run_for": "30s"},  # 2: fails after restarts and a reschedule
        {"start_error": "no such file: ffmpeg"},  # 3: a start error
        {"run_for": "30s", **FAIL_FIRST},  # 4: a failure, then a successful reschedule
        {"bogus": "x"},  # 5: refused by Nomad (meta not permitted): exit 1
        {"run_for": "2000s"},  # 6: OOM-killed, restarted, succeeds
        {"run_for": "2000s"},  # 7: stopped by an operator, the replacement succeeds
        {"run_for": "3600s"},  # 8: its job stopped by someone: exit 1
    ]
    with running.producer() as producer:
        batch = producer.dispatch_batch("enc-mix", [{"meta": m} for m in metas],
                                        until="finished", preflight=False, max_attempts=2)
        rid = {n: request_id_for(batch, n) for n in range(1, 9)}
        oom = child_running(redis_client, sim, rid[6])
        requests.post(f"{sim}/_sim/allocations/{oom['ID']}/fail", timeout=5,
                      json={"exit_code": 137, "signal": 9, "oom_killed": True}
                      ).raise_for_status()  # fmt: skip
        moved = child_running(redis_client, sim, rid[7])
        requests.post(f"{sim}/v1/allocation/{moved['ID']}/stop", timeout=5).raise_for_status()
        stopped = child_running(redis_client, sim, rid[8])["JobID"]
        requests.delete(f"{sim}/v1/job/{stopped}", timeout=5).raise_for_status()
        _wait(lambda: _finished(producer, batch), "the batch to finish")
        status = producer.batch_status(batch)
        assert status is not None
        assert (status.exit_codes, status.retries) == ({0: 4, 2: 2, 1: 2}, 2)
        failed = {f["line"]: f for f in map(json.loads, producer.batch_results(
            batch, failed_only=True))}  # fmt: skip
        assert sorted(failed) == [2, 3, 5, 8]
        assert {line: f["attempt"] for line, f in failed.items()} == {2: 2, 3: 2, 5: 1, 8: 1}
        shown = json.loads(_cli(running, "batch", "status", batch, "-json").stdout)
        assert (shown["succeeded"], shown["failed"], shown["errors"]) == (4, 2, 2)


def test_counts_by_ending_max_attempts_and_retry_of_what_failed(running: Stack) -> None:
    items = [{"meta": {"exit_code": "3" if n % 3 == 0 else "0", "run_for": "30s"}}
             for n in range(9)]  # fmt: skip
    with running.producer() as producer:
        batch = producer.dispatch_batch("enc", items, until="finished", preflight=False,
                                        max_attempts=2)  # fmt: skip
        _wait(lambda: _finished(producer, batch), "the batch to finish")
        status = producer.batch_status(batch)
        assert status is not None
        assert (status.exit_codes, status.retries, status.queued) == ({0: 6, 2: 3}, 3, 0)
        failed = [json.loads(line) for line in producer.batch_results(batch, failed_only=True)]
        assert sorted(f["line"] for f in failed) == [1, 4, 7]
        assert {(f["attempt"], f["request_id"].endswith("~2")) for f in failed} == {(2, True)}
        shown = _cli(running, "batch", "status", batch, "-json")
        assert shown.returncode == 2, shown.stderr
        data = json.loads(shown.stdout)
        assert (data["succeeded"], data["failed"], data["errors"], data["retries"]) == (6, 3, 0, 3)
        assert data["first_failures"] and all(
            "exit code 3" in f["error"] and f["exit_code"] == 2 for f in data["first_failures"]
        )
        human = _cli(running, "batch", "status", batch).stdout
        assert "First failures" in human and "task ffmpeg exit code 3" in human, human
        assert "succeeded" in human and "retries (max attempts 2)" in human, human

        # what made them fail is fixed: `batch retry` (twice: the second claims nothing)
        fixed = mock_encode_job("enc")
        fixed["TaskGroups"][0]["Tasks"][0]["Config"]["exit_code"] = "0"
        register(running.sim.address, fixed)
        first = _cli(running, "batch", "retry", batch, "-json")
        second = _cli(running, "batch", "retry", batch, "-json")
        assert json.loads(first.stdout)["retried"] == 3, first.stderr
        assert json.loads(second.stdout)["retried"] == 0
        _wait(lambda: _finished(producer, batch), "the retried items to end")
        status = producer.batch_status(batch)
        assert status is not None
        assert (status.exit_codes, status.retries) == ({0: 9}, 6)
        lines = [json.loads(line) for line in producer.batch_results(batch)]
        assert sorted(line["attempt"] for line in lines) == [1] * 6 + [3] * 3
        assert not list(producer.batch_results(batch, failed_only=True))
