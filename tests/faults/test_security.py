"""Security: secrets never leak (logs, outcomes, exception texts); pickle is refused;
payload references are confined; Redis AUTH and TLS (`rediss://`) work end to end."""

from __future__ import annotations

import json
import pickle
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import structlog

from dispatchq.config.settings import Settings
from dispatchq.core.request import DispatchRequest
from dispatchq.devstack.nomadsim_process import NomadSimProcess
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.devstack.tls import TlsRedisServer, make_pki
from dispatchq.devstack.worker_process import WorkerProcess
from dispatchq.errors import NomadError
from dispatchq.nomad.client import NomadClient, NomadConfig
from dispatchq.producer.api import Producer
from dispatchq.store import dlq, keys
from tests.support.faults import Accounting, FaultStack, raw_message, wait_until
from tests.support.nomad_jobs import add_fault, parameterized_job, register
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REDIS_PASSWORD = "redis-pw-7f3a9c1e5b"


@pytest.fixture(scope="module")
def acl_sim() -> Iterator[tuple[NomadSimProcess, str]]:
    """nomadsim with ACLs on, and its management token (the secret to look for)."""
    with NomadSimProcess(args=["--acl"]) as sim:
        token = requests.put(f"{sim.address}/v1/acl/bootstrap", timeout=10).json()["SecretID"]
        for job in (parameterized_job("encode", meta_required=["profile"]),):
            register(sim.address, job, token=token)
        yield sim, token


def _leaks(text: str, *secrets: str) -> list[str]:
    return [secret for secret in secrets if secret in text]


def test_secrets_never_leak_from_a_worker(
    acl_sim: tuple[NomadSimProcess, str], tmp_path: Path
) -> None:
    """A worker with a Nomad ACL token and a Redis password serves successes, refusals,
    retried 500s and poison: neither secret is in its output, an outcome or a dead letter."""
    sim, token = acl_sim
    with RedisServer(password=REDIS_PASSWORD) as server:
        env = {
            "DISPATCHQ_REDIS_URL": server.url,
            "DISPATCHQ_QUEUE": QUEUE,
            "DISPATCHQ_LOG_FORMAT": "json",
            "DISPATCHQ_LOG_LEVEL": "DEBUG",
            "DISPATCHQ_RETRY_FLOOR": "0.05",
            "DISPATCHQ_RETRY_CAP": "0.2",
            "NOMAD_ADDR": sim.address,
            "NOMAD_TOKEN": token,
        }
        add_fault(sim.address, {"kind": "error", "route": "dispatch", "count": 3,
                                "message": "No cluster leader"})  # fmt: skip
        with WorkerProcess(env=env, name="secretive", log_path=tmp_path / "w.log"):
            settings = Settings(redis_url=server.url, queue=QUEUE)
            with Producer(settings) as producer:
                ids = [producer.enqueue("encode", meta={"profile": "hd"}) for _ in range(5)]
                ids += [producer.enqueue("encode", meta={"wrong": "x"})]
                ids += [producer.enqueue("encode", payload_ref="file:///etc/passwd")]
                ids += [producer.enqueue("missing-job")]
                producer.redis.lpush(QUEUE, raw_message(b"not json"))
                statuses = producer.wait(ids, timeout=60)
                stored = [str(producer.redis.get(keys.celery_result(rid))) for rid in ids]
                dead = [e.raw for e in dlq.entries(producer.redis)]
    assert all(s.done for s in statuses.values())
    assert [s.outcome.exit_code for s in statuses.values() if s.outcome][:5] == [0] * 5
    output = (tmp_path / "w.log").read_text()
    assert "Connected to" in output  # Celery's own lines are there too
    assert _leaks(output, token, REDIS_PASSWORD) == []
    assert _leaks("".join(stored), token, REDIS_PASSWORD) == []
    assert _leaks("".join(dead), token, REDIS_PASSWORD) == []


def test_secrets_never_reach_a_log_call_or_an_exception(
    acl_sim: tuple[NomadSimProcess, str],
) -> None:
    """`structlog.testing.capture_logs` sees every event before redaction: a run with the
    token and password passes neither to a log call, nor into an error's text."""
    from dispatchq.worker.runtime import build_runtime

    saved = structlog.get_config()
    sim, token = acl_sim
    errors: list[str] = []
    try:
        with RedisServer(password=REDIS_PASSWORD) as server:
            settings = Settings(redis_url=server.url, queue=QUEUE)
            rt = build_runtime(settings, NomadConfig(address=sim.address, token=token))
            add_fault(sim.address, {"kind": "error", "route": "evaluation", "count": 1})
            with structlog.testing.capture_logs() as events:
                for n, (job, meta) in enumerate(
                    [("encode", {"profile": "hd"}), ("encode", {}), ("nope", {})]
                ):
                    request = DispatchRequest(request_id=f"s{n}", job_id=job, meta=meta)
                    try:
                        outcome = rt.service.run(request)
                    except NomadError as err:  # the evaluation read's 500, for a retry
                        errors += [str(err), repr(err)]
                        outcome = rt.service.run(request)
                    errors.append(json.dumps(outcome.to_json()))
            rt.close()
            for url in (server.url.replace(REDIS_PASSWORD, "wrong-pw"), server.url):
                bad = url.replace(f":{server.port}/", ":1/")
                for target in (url, bad) if url != server.url else (bad,):
                    try:
                        with redis.Redis.from_url(target) as client:
                            client.ping()
                    except redis.RedisError as err:
                        errors += [str(err), repr(err)]
        with NomadClient(NomadConfig(address="http://127.0.0.1:1", token=token)) as client:
            try:
                client.read_evaluation("x")
            except NomadError as err:
                errors += [str(err), repr(err)]
    finally:
        structlog.configure(**saved)
    assert len(events) >= 6
    assert len(errors) >= 6
    assert _leaks(repr(events), token, REDIS_PASSWORD) == []
    assert _leaks("\n".join(errors), token, REDIS_PASSWORD) == []


class _Evil:
    """Unpickling this would create a file: proof that it was never unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_pickle_is_never_loaded(fault_stack: FaultStack, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    body = pickle.dumps([[], {"request_id": "p1", "job_id": _Evil(marker)}, {}])
    client = fault_stack.client()
    with fault_stack.worker("w1"):
        client.lpush(QUEUE, raw_message(body, content_type="application/x-python-serialize"))
        wait_until(lambda: client.llen(keys.DLQ) == 1, 30, "the dead letter")
    [entry] = dlq.entries(client)
    client.close()
    assert entry.kind == "content"
    assert "Refusing to deserialize untrusted content of type pickle" in entry.reason
    assert not marker.exists()


class _PayloadOrigin(BaseHTTPRequestHandler):
    """/ok: a payload; /big: declared too big; /stream: too big, undeclared; /same: a
    redirect on the same host; /other: a redirect to another host name."""

    def do_GET(self) -> None:
        address: Any = self.server.server_address
        port = address[1]
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/ok": (200, {"Content-Length": "9"}, b'{"ok": 1}'),
            "/big": (200, {"Content-Length": "20000"}, b"x" * 20_000),
            "/stream": (200, {"Connection": "close"}, b"x" * 20_000),
            "/same": (302, {"Location": "/ok", "Content-Length": "0"}, b""),
            "/other": (
                302,
                {"Location": f"http://localhost:{port}/ok", "Content-Length": "0"},
                b"",
            ),
        }
        status, headers, body = routes.get(self.path, (404, {"Content-Length": "0"}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_payload_references_are_confined(fault_stack: FaultStack, tmp_path: Path) -> None:
    """file:// stays under its roots (no traversal, no symlink out); http(s):// reaches only
    allow-listed hosts, is capped at 16 KiB, and follows redirects on the same host only."""
    root = tmp_path / "payloads"
    (root / "sub").mkdir(parents=True)
    (root / "in.json").write_text('{"in": 1}')
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (root / "escape").symlink_to(secret)
    (root / "sub" / "up").symlink_to(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PayloadOrigin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    stack = fault_stack.with_env(
        DISPATCHQ_PAYLOAD_FILE_ROOTS=str(root),
        DISPATCHQ_PAYLOAD_HTTP_HOSTS=f"127.0.0.1:{server.server_address[1]}",
    )
    allowed = [f"file://{root}/in.json", f"{origin}/ok", f"{origin}/same"]
    refused = {
        f"file://{root}/../secret.txt": "outside the allowed roots",
        f"file://{root}/%2e%2e/secret.txt": "outside the allowed roots",
        f"file://{root}/escape": "outside the allowed roots",
        f"file://{root}/sub/up/secret.txt": "outside the allowed roots",
        "file:///etc/passwd": "outside the allowed roots",
        "file://otherhost/etc/passwd": "names a host",
        f"{origin}/big": "Payload exceeds maximum size; 20000 > 16384",
        f"{origin}/stream": "Payload exceeds maximum size; more than 16384 bytes streamed",
        f"{origin}/other": "redirected to another host; refused",
        f"http://localhost:{server.server_address[1]}/ok": "is not in the allow-list",
        "https://example.com/x": "is not in the allow-list",
    }
    try:
        with stack.worker("w1"), stack.producer() as producer:
            ok_ids = [producer.enqueue("plain", payload_ref=ref) for ref in allowed]
            bad_ids = {producer.enqueue("plain", payload_ref=ref): ref for ref in refused}
            accounting = Accounting.of(stack, producer, ok_ids + list(bad_ids), timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    accounting.assert_each_succeeded_once(ok_ids)
    for rid, ref in bad_ids.items():
        outcome = accounting.statuses[rid].outcome
        assert outcome is not None and outcome.exit_code == 1, ref
        assert outcome.error_kind == "payload", (ref, outcome.error_message)
        assert refused[ref] in (outcome.error_message or ""), (ref, outcome.error_message)
        assert "top secret" not in json.dumps(outcome.to_json())
    assert accounting.children_of(bad_ids) == {0: len(bad_ids)}


def test_redis_auth_and_tls(fault_stack: FaultStack, tmp_path: Path) -> None:
    """A TLS-only redis-server with a password and a test CA: the worker and the producer
    work over rediss://; plain text, an unknown CA and a wrong password are refused."""
    pki = make_pki(tmp_path / "pki")  # raises (fails the test) without openssl
    with TlsRedisServer(password=REDIS_PASSWORD, pki=pki) as server:  # fails without TLS
        stack = fault_stack.with_env(DISPATCHQ_REDIS_URL=server.url)
        with stack.worker("tls"), Producer(Settings(redis_url=server.url, queue=QUEUE)) as p:
            ids = [p.enqueue("encode", meta={"profile": "hd"}) for _ in range(5)]
            accounting = Accounting.of(stack, p, ids, timeout=60)
        refusals = []
        for url in (
            f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0",  # plain text
            server.url.split("?")[0],  # the system CAs do not know the test CA
            server.url.replace(REDIS_PASSWORD, "wrong-password"),
        ):
            with pytest.raises(redis.RedisError) as caught, redis.Redis.from_url(url) as client:
                client.ping()
            refusals.append(f"{caught.value!s} {caught.value!r}")
    accounting.assert_each_succeeded_once(ids)
    assert "CERTIFICATE_VERIFY_FAILED" in refusals[1]
    assert "invalid username-password pair" in refusals[2]
    assert _leaks(" ".join(refusals) + stack.worker_output(), REDIS_PASSWORD) == []
    stack.report(
        "redis AUTH + TLS (rediss://)",
        requests=len(ids),
        faults="3 refused connections",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
    )


def test_rediss_urls_verify_the_server_unless_told_otherwise() -> None:
    from dispatchq.broker.app import celery_config
    from dispatchq.config.connection import redis_ssl_options

    assert redis_ssl_options("redis://:pw@h:6379/0") is None
    assert redis_ssl_options("rediss://h:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    url = "rediss://:pw@h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=%2Fca.pem"
    assert redis_ssl_options(url) == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}
    with pytest.raises(ValueError, match="ssl_cert_reqs must be one of"):
        redis_ssl_options("rediss://h/0?ssl_cert_reqs=CERT_MAYBE")
    config = celery_config(Settings(redis_url="rediss://h:6380/0?ssl_ca_certs=/ca.pem"))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    assert config["broker_use_ssl"] == config["redis_backend_use_ssl"] == expected


def test_redis_tls_with_an_acl_user_confined_to_dispatchqs_keys(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    """TLS, and an ACL user that may touch only the keys `keys.acl_rules` names: the worker
    and the producer work as that user; any other key is refused to it."""
    pki = make_pki(tmp_path / "pki")
    with TlsRedisServer(password=REDIS_PASSWORD, pki=pki) as server:
        with redis.Redis.from_url(server.url) as admin:
            admin.acl_setuser("dq", enabled=True, passwords=["+dq-secret-41"], reset=True)
            admin.execute_command("ACL", "SETUSER", "dq", *keys.acl_rules(QUEUE))
        url = server.url.replace(f":{REDIS_PASSWORD}@", "dq:dq-secret-41@")
        stack = fault_stack.with_env(DISPATCHQ_REDIS_URL=url)
        with stack.worker("acl"), Producer(Settings(redis_url=url, queue=QUEUE)) as p:
            ids = [p.enqueue("encode", meta={"profile": "hd"}) for _ in range(5)]
            batch = p.dispatch_batch("encode", [{"meta": {"profile": "sd"}}] * 5, preflight=False)
            ids += [f"{batch}-{n:06d}" for n in range(1, 6)]
            accounting = Accounting.of(stack, p, ids, timeout=60)
            with pytest.raises(redis.exceptions.NoPermissionError):
                p.redis.set("someone-elses-key", "x")
    accounting.assert_each_succeeded_once(ids)
    output = stack.worker_output()
    assert "NoPermission" not in output and "NOPERM" not in output, output[-3000:]
    assert _leaks(output, "dq-secret-41") == []
    stack.report(
        "redis TLS + ACL user (dispatchq keys)",
        requests=len(ids),
        faults="other keys refused",
        lost=len(accounting.lost),
        doubled=len(accounting.doubled),
    )
