"""Helpers for nomadsim's tests: an HTTP client, job fixtures, OpenAPI validation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from openapi_schema_validator import OAS30Validator

from dispatchq.devstack.nomadsim_process import NomadSimProcess

# A copy of Nomad's OpenAPI description (MPL-2.0, licence beside it), kept in the repository.
SPEC_PATH = Path(__file__).resolve().parent / "fixtures" / "nomad-openapi.yaml"


class Api:
    """A thin client: every call returns the raw `requests.Response`."""

    def __init__(self, address: str, token: str = "") -> None:
        self.address = address
        self.session = requests.Session()
        if token:
            self.session.headers["X-Nomad-Token"] = token

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.address + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json() if response.content else None

    def register(self, job: dict[str, Any], **params: str) -> dict[str, Any]:
        result: dict[str, Any] = self.ok("PUT", "/v1/jobs", json={"Job": job}, params=params)
        return result

    def dispatch(self, job_id: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        return self.ok("POST", f"/v1/job/{quote(job_id, safe='')}/dispatch",
                       json=body if body is not None else {}, params=params)

    def job(self, job_id: str, **params: str) -> Any:
        return self.ok("GET", f"/v1/job/{quote(job_id, safe='')}", params=params)

    def eval(self, eval_id: str) -> Any:
        return self.ok("GET", f"/v1/evaluation/{eval_id}")

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        """Poll check() until it returns something truthy (bounded; fails otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.02)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def batch_job(job_id: str, **overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"Name": "t", "Driver": "mock_driver"}
    if "resources" in overrides:
        task["Resources"] = overrides.pop("resources")
    if "config" in overrides:
        task["Config"] = overrides.pop("config")
    group = {"Name": "g", "Count": overrides.pop("count", 1), "Tasks": [task]}
    job: dict[str, Any] = {"ID": job_id, "Type": "batch", "TaskGroups": [group]}
    job.update(overrides)
    return job


def parameterized(job_id: str, payload: str = "optional", required: list[str] | None = None,
                  optional: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    return batch_job(
        job_id,
        ParameterizedJob={"Payload": payload, "MetaRequired": required,
                          "MetaOptional": optional},
        **overrides,
    )


@pytest.fixture
def api(nomadsim: NomadSimProcess) -> Iterator[Api]:
    client = Api(nomadsim.address)
    yield client
    client.close()


@pytest.fixture
def param_job(api: Api) -> str:
    """A fresh parameterized batch job with meta `k` optional and `r` required."""
    job_id = unique("video")
    api.register(parameterized(job_id, required=["r"], optional=["k"]))
    return job_id


# -- OpenAPI -------------------------------------------------------------------------------


def _nullable(node: Any) -> Any:
    """Go renders nil maps, slices and pointers as null; the spec never says nullable."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if "$ref" in out:
        return {"anyOf": [{"$ref": out["$ref"]}], "nullable": True}
    if "type" in out:
        out["nullable"] = True
    return out


class OpenApi:
    def __init__(self, spec: dict[str, Any]) -> None:
        schemas = spec["components"]["schemas"]
        self.schemas = schemas
        self.components = {"schemas": {k: _nullable(v) for k, v in schemas.items()}}

    def validate(self, instance: Any, schema: str) -> None:
        """Types of every field (null allowed), and the top level must not be null."""
        assert instance is not None, f"{schema} is null"
        root = {"$ref": f"#/components/schemas/{schema}", "components": self.components}
        OAS30Validator(root).validate(instance)

    def missing(self, instance: dict[str, Any], schema: str) -> set[str]:
        """The spec's fields of schema that the instance does not have."""
        return set(self.schemas[schema].get("properties", {})) - set(instance)


@pytest.fixture(scope="session")
def openapi() -> OpenApi:
    if not SPEC_PATH.is_file():
        pytest.fail(
            f"Nomad's OpenAPI description is missing: expected {SPEC_PATH} (committed "
            "in the repository)"
        )
    with SPEC_PATH.open() as handle:
        return OpenApi(yaml.safe_load(handle))
