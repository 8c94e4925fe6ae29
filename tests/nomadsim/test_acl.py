"""ACLs against a server started with --acl."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api, parameterized, unique

POLICIES = {
    "reader": 'namespace "default" { policy = "read" }',
    "dispatcher": 'namespace "default" { capabilities = ["dispatch-job"] }',
    "submitter": 'namespace "default" { capabilities = ["submit-job", "read-job"] }',
    "writer": '# any namespace\nnamespace "*" {\n  policy = "write"\n}\n',
    "lister": 'namespace "default" { capabilities = ["list-jobs"] }',
    "json-reader": '{"namespace": {"default": {"policy": "read"}}}',
    "denied": 'namespace "*" { policy = "write" }\nnamespace "secret" { policy = "deny" }',
}


class Cluster:
    def __init__(self, process: NomadSimProcess, management: str) -> None:
        self.process = process
        self.management = management
        self.admin = Api(process.address, management)
        self.clients: list[Api] = [self.admin]
        self.tokens: dict[str, str] = {}

    def token(self, *policies: str) -> str:
        key = ",".join(policies)
        if key not in self.tokens:
            body = self.admin.ok("POST", "/v1/acl/token",
                                 json={"Name": key, "Type": "client", "Policies": list(policies)})
            self.tokens[key] = body["SecretID"]
        return self.tokens[key]

    def client(self, token: str = "") -> Api:
        client = Api(self.process.address, token)
        self.clients.append(client)
        return client


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with NomadSimProcess(args=["--acl"]) as process:
        anonymous = Api(process.address)
        boot = anonymous.post("/v1/acl/bootstrap")
        assert boot.status_code == 200, boot.text
        token = boot.json()
        assert token["Type"] == "management" and token["Name"] == "Bootstrap Token"
        again = anonymous.post("/v1/acl/bootstrap")
        assert again.status_code == 400
        assert again.text == f"ACL bootstrap already done (reset index: {token['CreateIndex']})"
        anonymous.close()
        cluster = Cluster(process, token["SecretID"])
        for name, rules in POLICIES.items():
            cluster.admin.ok("POST", f"/v1/acl/policy/{name}",
                             json={"Name": name, "Description": "", "Rules": rules})
        cluster.admin.ok("PUT", "/v1/namespace/other")
        cluster.admin.ok("PUT", "/v1/namespace/secret")
        yield cluster
        for client in cluster.clients:
            client.close()


@pytest.fixture(scope="module")
def job_id(cluster: Cluster) -> str:
    job = unique("acl")
    cluster.admin.register(parameterized(job))
    cluster.admin.register(parameterized(job), namespace="other")
    cluster.admin.register(parameterized(job), namespace="secret")
    return job


def denied(response: Any) -> bool:
    return (response.status_code, response.text) == (403, "Permission denied")


@pytest.mark.parametrize(
    ("policies", "may_dispatch", "may_read", "may_list"),
    [
        ((), False, False, False),
        (("reader",), False, True, True),
        (("json-reader",), False, True, True),
        (("dispatcher",), True, False, False),
        (("submitter",), False, True, False),
        (("writer",), True, True, True),
        (("lister",), False, False, True),
        (("dispatcher", "reader"), True, True, True),
    ],
)
def test_capability_matrix(cluster: Cluster, job_id: str, policies: tuple[str, ...],
                           *, may_dispatch: bool, may_read: bool, may_list: bool) -> None:
    api = cluster.client(cluster.token(*policies) if policies else "")
    dispatched = api.post(f"/v1/job/{job_id}/dispatch", json={})
    assert (dispatched.status_code == 200) is may_dispatch, dispatched.text
    if not may_dispatch:
        assert denied(dispatched)
    read = api.get(f"/v1/job/{job_id}")
    assert (read.status_code == 200) is may_read
    listed = api.get("/v1/jobs")
    assert (listed.status_code == 200) is may_list
    if may_dispatch and not may_read:
        # the CLI's monitor would fail here (no read-job capability)
        assert denied(api.get(f"/v1/evaluation/{dispatched.json()['EvalID']}"))
    if may_dispatch and may_read:
        assert api.get(f"/v1/evaluation/{dispatched.json()['EvalID']}").status_code == 200


def test_unknown_token_is_denied_everywhere(cluster: Cluster, job_id: str) -> None:
    api = cluster.client("00000000-0000-0000-0000-000000000000")
    assert denied(api.post(f"/v1/job/{job_id}/dispatch", json={}))
    assert denied(api.get(f"/v1/job/{job_id}"))
    assert denied(api.get("/v1/jobs"))
    assert denied(api.get("/v1/evaluations"))


def test_dispatch_capability_checked_on_request_namespace_before_lookup(
        cluster: Cluster, job_id: str) -> None:
    api = cluster.client(cluster.token("dispatcher"))
    assert denied(api.post("/v1/job/no-such-job/dispatch", json={},
                           params={"namespace": "other"}))
    missing = api.post("/v1/job/no-such-job/dispatch", json={})
    assert (missing.status_code, missing.text) == (500, "parameterized job not found")
    assert denied(api.post(f"/v1/job/{job_id}/dispatch", json={}, params={"namespace": "other"}))


def test_wildcard_and_deny(cluster: Cluster, job_id: str) -> None:
    writer = cluster.client(cluster.token("writer"))
    assert writer.post(f"/v1/job/{job_id}/dispatch", json={},
                       params={"namespace": "other"}).status_code == 200
    api = cluster.client(cluster.token("denied"))
    assert api.post(f"/v1/job/{job_id}/dispatch", json={},
                    params={"namespace": "other"}).status_code == 200
    assert denied(api.post(f"/v1/job/{job_id}/dispatch", json={},
                           params={"namespace": "secret"}))


def test_x_nomad_token_wins_over_bearer(cluster: Cluster, job_id: str) -> None:
    good = cluster.token("reader")
    api = cluster.client()
    path = f"/v1/job/{job_id}"
    assert api.get(path, headers={"Authorization": f"Bearer {good}"}).status_code == 200
    assert denied(api.get(path, headers={"Authorization": f"Bearer {good}",
                                         "X-Nomad-Token": "bogus"}))
    assert api.get(path, headers={"Authorization": "Bearer bogus",
                                  "X-Nomad-Token": good}).status_code == 200


def test_body_auth_token_for_dispatch(cluster: Cluster, job_id: str) -> None:
    api = cluster.client()
    body = {"AuthToken": cluster.token("dispatcher")}
    assert api.post(f"/v1/job/{job_id}/dispatch", json=body).status_code == 200
    header = api.post(f"/v1/job/{job_id}/dispatch", json=body,
                      headers={"X-Nomad-Token": "bogus"})
    assert denied(header)


def test_management_only_endpoints(cluster: Cluster) -> None:
    api = cluster.client(cluster.token("writer"))
    assert denied(api.post("/v1/acl/token", json={"Type": "management"}))
    assert denied(api.post("/v1/acl/policy/x", json={"Rules": ""}))
    assert denied(api.put("/v1/namespace/new"))
    invalid = cluster.admin.post("/v1/acl/policy/bad", json={"Rules": 'namespace "x" {'})
    assert invalid.status_code == 400
    assert invalid.text.startswith("policy 0 invalid: Failed to parse ACL Policy")
    bad_type = cluster.admin.post("/v1/acl/token", json={"Type": "root"})
    assert bad_type.status_code == 400


def test_token_self(cluster: Cluster) -> None:
    secret = cluster.token("reader")
    me = cluster.client(secret).ok("GET", "/v1/acl/token/self")
    assert me["SecretID"] == secret and me["Policies"] == ["reader"]


def _stream(cluster: Cluster, query: str, token: str) -> bytes:
    with socket.create_connection(("127.0.0.1", cluster.process.port), timeout=10) as sock:
        sock.sendall(f"GET /v1/event/stream?{query} HTTP/1.0\r\nX-Nomad-Token: {token}\r\n\r\n"
                     .encode())
        data = b""
        # until the body's first line (the heartbeat), or EOF for a denied stream
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 3:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_event_stream_acl(cluster: Cluster) -> None:
    reader = cluster.token("reader")
    lister = cluster.token("lister")
    allowed = _stream(cluster, "topic=Job", reader)
    assert allowed.startswith(b"HTTP/1.0 200")
    assert allowed.split(b"\r\n\r\n", 1)[1].startswith(b"{}\n")
    for query, token in (("topic=Job", lister), ("", reader), ("topic=Job", "bogus")):
        response = _stream(cluster, query, token)
        assert response.startswith(b"HTTP/1.0 200"), response
        assert response.split(b"\r\n\r\n", 1)[1] == b"", response
    management = _stream(cluster, "", cluster.management)
    assert management.split(b"\r\n\r\n", 1)[1].startswith(b"{}\n")


def test_acl_disabled_accepts_any_token(api: Api) -> None:
    job_id = unique("open")
    api.register(parameterized(job_id))
    response = api.post(f"/v1/job/{job_id}/dispatch", json={},
                        headers={"X-Nomad-Token": "anything"})
    assert response.status_code == 200
    assert api.post("/v1/acl/bootstrap").text == "ACL support disabled"


def test_scheduler_configuration_rejects_registration(cluster: Cluster, job_id: str) -> None:
    writer = cluster.client(cluster.token("writer"))
    assert denied(writer.post("/v1/operator/scheduler/configuration",
                              json={"RejectJobRegistration": True}))
    cluster.admin.ok("POST", "/v1/operator/scheduler/configuration",
                     json={"RejectJobRegistration": True})
    try:
        config = cluster.admin.ok("GET", "/v1/operator/scheduler/configuration")
        assert config["SchedulerConfig"]["RejectJobRegistration"] is True
        message = ("Job registration, dispatch, and scale are disabled by the scheduler "
                   "configuration")
        for response in (writer.post(f"/v1/job/{job_id}/dispatch", json={}),
                         writer.put("/v1/jobs", json={"Job": parameterized(unique("r"))})):
            assert (response.status_code, response.text) == (403, message)
        # rows 1-2 come first; management tokens are not affected
        assert denied(cluster.client("bogus").post(f"/v1/job/{job_id}/dispatch", json={}))
        assert cluster.admin.post(f"/v1/job/{job_id}/dispatch", json={}).status_code == 200
    finally:
        cluster.admin.ok("PUT", "/v1/operator/scheduler/configuration",
                         json={"RejectJobRegistration": False})
    assert writer.post(f"/v1/job/{job_id}/dispatch", json={}).status_code == 200
