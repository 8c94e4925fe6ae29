"""Connection settings (section 12), the retry policy and the error classification."""

from __future__ import annotations

import pytest

from dispatchq.core.retry import RetryPolicy
from dispatchq.errors import PermissionDenied, ServerError, ValidationError, classify_http
from dispatchq.nomad.config import DEFAULT_ADDRESS, NomadConfig, parse_go_bool

ENV = {
    "NOMAD_ADDR": "https://nomad.example:4646",
    "NOMAD_REGION": "eu",
    "NOMAD_NAMESPACE": "media",
    "NOMAD_TOKEN": "tok-secret-1234",
    "NOMAD_CACERT": "/ca.pem",
    "NOMAD_CAPATH": "/cas",
    "NOMAD_CLIENT_CERT": "/cli.pem",
    "NOMAD_CLIENT_KEY": "/cli.key",
    "NOMAD_TLS_SERVER_NAME": "server.global.nomad",
    "NOMAD_SKIP_VERIFY": "true",
    "NOMAD_HTTP_AUTH": "alice:pa:ss",
}


def test_from_env_reads_every_variable() -> None:
    config = NomadConfig.from_env(ENV)
    assert config == NomadConfig(
        address="https://nomad.example:4646",
        region="eu",
        namespace="media",
        token="tok-secret-1234",
        ca_cert="/ca.pem",
        ca_path="/cas",
        client_cert="/cli.pem",
        client_key="/cli.key",
        tls_server_name="server.global.nomad",
        tls_skip_verify=True,
        http_auth="alice:pa:ss",
    )
    assert config.basic_auth == ("alice", "pa:ss")


def test_defaults_and_empty_variables() -> None:
    config = NomadConfig.from_env({"NOMAD_ADDR": "", "NOMAD_TOKEN": ""})
    assert config == NomadConfig()
    assert config.address == DEFAULT_ADDRESS
    assert config.basic_auth is None


def test_flags_override_the_environment() -> None:
    config = NomadConfig.from_env(ENV).with_overrides(
        address="unix:///run/nomad.sock", token=None, tls_skip_verify=None, region="us"
    )
    assert config.address == "unix:///run/nomad.sock"
    assert config.region == "us"
    assert config.token == "tok-secret-1234"
    assert config.tls_skip_verify is True


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("t", True),
        ("T", True),
        ("TRUE", True),
        ("True", True),
        ("true", True),
        ("0", False),
        ("f", False),
        ("F", False),
        ("FALSE", False),
        ("False", False),
        ("false", False),
        ("yes", None),
        ("", None),
        (" true", None),
    ],
)
def test_go_parse_bool(text: str, value: bool | None) -> None:
    assert parse_go_bool(text) is value


def test_invalid_skip_verify_is_ignored() -> None:
    assert NomadConfig.from_env({"NOMAD_SKIP_VERIFY": "yes"}).tls_skip_verify is False
    assert NomadConfig.from_env({"NOMAD_SKIP_VERIFY": "0"}).tls_skip_verify is False


def test_repr_hides_the_token_and_password() -> None:
    text = repr(NomadConfig.from_env(ENV))
    assert "tok-secret-1234" not in text
    assert "pa:ss" not in text
    assert "alice" in text
    assert str(NomadConfig.from_env(ENV)) == text


def test_retry_delays_stay_between_floor_and_cap() -> None:
    policy = RetryPolicy(attempts=8, floor=0.1, cap=1.0, multiplier=2.0, jitter=0.5)
    assert policy.retries == 7
    assert policy.delay(1, draw=0.0) == 0.1
    assert policy.delay(1, draw=0.99) == 0.1  # never below the floor
    assert policy.delay(3, draw=0.0) == pytest.approx(0.4)
    assert policy.delay(3, draw=0.5) == pytest.approx(0.3)
    assert policy.delay(50, draw=0.0) == 1.0
    assert policy.delay(50, draw=0.999) == pytest.approx(0.5005)
    for retry in range(1, 200):
        assert 0.1 <= policy.delay(retry) <= 1.0


@pytest.mark.parametrize(
    "settings",
    [{"attempts": 0}, {"floor": 0}, {"floor": 2, "cap": 1}, {"multiplier": 0.5}, {"jitter": 2}],
)
def test_retry_policy_rejects_nonsense(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy().delay(0)


def test_classification_details() -> None:
    leader = classify_http(500, "No cluster leader")
    assert isinstance(leader, ServerError)
    assert (leader.retryable, leader.maybe_applied) == (True, False)
    raft = classify_http(500, "raft apply failed")
    assert raft.maybe_applied
    stopped = classify_http(500, 'Specified job "video" is stopped')
    assert isinstance(stopped, ValidationError)
    assert not stopped.retryable
    disabled = "Job registration, dispatch, and scale are disabled by the scheduler configuration"
    assert isinstance(classify_http(403, disabled), PermissionDenied)
    assert repr(classify_http(404, "eval not found")) == (
        "NotFound(status=404, message='eval not found')"
    )
