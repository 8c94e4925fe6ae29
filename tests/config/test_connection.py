"""`dispatchq.config.connection`: one way to reach Redis, standalone or behind Sentinel."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from dispatchq.broker.app import GuardedSentinelBackend, celery_config, make_app
from dispatchq.config.connection import RedisTarget
from dispatchq.config.settings import Settings
from dispatchq.errors import NotReplicated
from dispatchq.producer.api import Producer
from dispatchq.worker.health import warn_about_redis
from tests.support.sentinel import MASTER, SentinelGroup

SENTINELS = "sentinel://:pw@10.0.0.1:26379/2?ssl=true&ssl_ca_certs=/ca.pem;sentinel://10.0.0.2"


def test_a_sentinel_list_names_every_sentinel_and_the_primarys_credentials() -> None:
    target = RedisTarget(SENTINELS, master_name="main", sentinel_password="sp")
    assert target.is_sentinel
    assert target.sentinels() == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert target.tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}
    options = target.celery_options(max_connections=8)
    assert options["broker_url"] == "sentinel://:pw@10.0.0.1:26379/2"  # see PoisonSentinelChannel
    assert options["backend_url"] == "sentinel://:pw@10.0.0.1:26379/2;sentinel://10.0.0.2"
    assert options["broker_transport_options"]["master_name"] == "main"
    assert options["broker_transport_options"]["sentinels"] == target.sentinels()
    sentinel_kwargs = options["result_backend_transport_options"]["sentinel_kwargs"]
    assert (sentinel_kwargs["password"], sentinel_kwargs["ssl"]) == ("sp", True)
    assert options["broker_use_ssl"] == target.tls


def test_a_standalone_url_is_used_as_given() -> None:
    target = RedisTarget("rediss://u:p@h:6380/1?ssl_cert_reqs=none")
    assert not target.is_sentinel
    assert target.tls == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert celery_config(Settings(redis_url=target.url))["broker_url"] == target.url


@pytest.mark.parametrize(
    ("url", "master", "problem"),
    [
        ("sentinel://h:26379", "", "DISPATCHQ_REDIS_MASTER_NAME"),
        ("sentinel://h:26379;redis://h:6379", "m", "only sentinel:// URLs"),
        ("redis://a;redis://b", "", "only sentinel:// URLs"),
        ("sentinel://h:0", "m", "port"),
        ("memcached://h", "", "scheme"),
    ],
)
def test_bad_redis_settings_are_refused_with_what_to_fix(
    url: str, master: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(redis_url=url, redis_master_name=master)
    assert problem in str(err.value)
    assert "pw" not in str(err.value)


def test_the_sentinel_password_is_a_secret_masked_where_settings_are_shown() -> None:
    settings = Settings(redis_url=SENTINELS, redis_master_name="main",
                        redis_sentinel_password="sentinel-secret")  # fmt: skip
    assert {"pw", "sentinel-secret"} <= set(settings.secrets)
    shown = settings.masked()
    assert shown["redis_sentinel_password"] == "***"
    assert shown["redis_url"].startswith("sentinel://:***@10.0.0.1:26379/2?")
    assert "sentinel-secret" not in repr(settings)


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup(replicas=1) as g:
        yield g


def _settings(group: SentinelGroup, **overrides: Any) -> Settings:
    return Settings(redis_url=group.url, redis_master_name=MASTER, queue="conn-test",
                    **overrides)  # fmt: skip


@pytest.mark.integration
def test_every_client_kind_reaches_the_primary_through_the_sentinels(
    group: SentinelGroup,
) -> None:
    settings = _settings(group)
    primary = group.primary_port()
    for client in (settings.redis.client(),
                   settings.redis.client(max_connections=4, wait_for_connection=5)):  # fmt: skip
        client.set("conn-test-key", "1")
        assert client.connection_pool.get_master_address()[1] == primary  # type: ignore[attr-defined]
        client.close()
    backend = make_app(settings).backend
    assert isinstance(backend, GuardedSentinelBackend)
    backend.set("conn-test-result", "x")
    assert redis.Redis(port=primary).get("conn-test-result") == b"x"


@pytest.mark.integration
def _until_replicated(enqueue: Callable[[], str]) -> str:
    """As a caller does: the same ID again until the replica confirms it (on a loaded
    machine, or just after a full resync, a replica may take more than the 0.5 s timeout
    to acknowledge)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return enqueue()
        except NotReplicated:
            assert time.monotonic() < deadline, "the replica never confirmed"
            time.sleep(0.2)


def test_an_enqueue_waits_for_the_replicas_it_is_told_to(group: SentinelGroup) -> None:
    """With redis_min_replicas, enqueue returns once a replica has the request; with the
    replica away it fails with NotReplicated (and a worker starting would warn), and the
    same request ID enqueued again once the replica is back succeeds, once."""
    settings = _settings(group, redis_min_replicas=1, redis_replica_timeout=0.5)
    replica = next(s for s in group.servers if s.port != group.primary_port())
    group.wait_synced()
    with Producer(settings) as producer:
        rid = _until_replicated(lambda: producer.enqueue("encode", meta={"profile": "hd"},
                                                         request_id="r-first"))  # fmt: skip
        assert redis.Redis(port=replica.port).exists(f"dispatchq:request:{rid}")
        replica.stop()
        try:
            started = time.monotonic()
            with pytest.raises(NotReplicated, match="0 of the 1 replicas"):
                producer.enqueue("encode", meta={"profile": "hd"}, request_id="r-away")
            assert time.monotonic() - started >= 0.4  # it waited for the replica
            warnings = warn_about_redis(settings)
            assert "no replica connected" in warnings[0]
            assert "fewer than DISPATCHQ_REDIS_MIN_REPLICAS=1" in warnings[1]
        finally:
            replica.start()
        group.wait_synced()
        again = _until_replicated(
            lambda: producer.enqueue("encode", meta={"profile": "hd"}, request_id="r-away")
        )
        assert again == "r-away"
        assert producer.redis.llen("conn-test") == 2  # r-away's message once
        assert redis.Redis(port=replica.port).exists("dispatchq:request:r-away")
