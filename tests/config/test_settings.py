from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dispatchq.broker.app import celery_config
from dispatchq.config.settings import Settings, load_settings, mask_url


def test_env_vars_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", "redis://:hunter22@127.0.0.1:6390/2")
    monkeypatch.setenv("DISPATCHQ_PAYLOAD_HTTP_HOSTS", "media.example, cdn.example:8443")
    monkeypatch.setenv("DISPATCHQ_PAYLOAD_FILE_ROOTS", "/srv/a,/srv/b")
    monkeypatch.setenv("DISPATCHQ_RESULT_TTL", "600")
    settings = load_settings()
    assert settings.redis_password == "hunter22"
    assert settings.payload_http_hosts == ["media.example", "cdn.example:8443"]
    assert settings.payload_file_roots == [Path("/srv/a"), Path("/srv/b")]
    assert settings.result_ttl == 600


def test_masked_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", "rediss://user:hunter22@redis.internal:6380/0")
    settings = load_settings()
    shown = settings.masked()
    assert shown["redis_url"] == "rediss://user:***@redis.internal:6380/0"
    assert "hunter22" not in repr(settings)
    assert "hunter22" not in str(shown)


def test_mask_url_without_password_is_unchanged() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_config_file_below_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "dispatchq.toml"
    config.write_text('queue = "from-file"\nresult_ttl = 900\n')
    monkeypatch.setenv("DISPATCHQ_CONFIG", str(config))
    monkeypatch.setenv("DISPATCHQ_RESULT_TTL", "1200")
    settings = load_settings()
    assert settings.queue == "from-file"
    assert settings.result_ttl == 1200


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHQ_CONFIG", "/nonexistent/dispatchq.toml")
    with pytest.raises(FileNotFoundError, match="DISPATCHQ_CONFIG=/nonexistent"):
        load_settings()


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHQ_RESULT_TTL", "5")
    with pytest.raises(ValidationError, match="result_ttl"):
        load_settings()


def test_celery_config_is_safe_by_default() -> None:
    settings = Settings()
    conf = celery_config(settings)
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["result_expires"] == settings.result_ttl


def test_tenant_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHQ_TENANT_WEIGHTS", "acme=3, beta=1")
    assert load_settings().tenant_weights == {"acme": 3, "beta": 1}
    for bad, says in (("acme", "tenant=weight"), ("acme=0", "from 1 to 1000"),
                      ("a:b=2", "tenant must be"), ("acme=x", "tenant=weight")):  # fmt: skip
        monkeypatch.setenv("DISPATCHQ_TENANT_WEIGHTS", bad)
        with pytest.raises(ValidationError, match=says):
            load_settings()
