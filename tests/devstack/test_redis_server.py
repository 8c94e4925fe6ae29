from __future__ import annotations

import redis

from dispatchq.devstack.redis_server import RedisServer


def test_session_server_answers(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_server_is_configured_for_dispatchq(redis_client: redis.Redis) -> None:
    assert redis_client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}
    assert redis_client.config_get("bind")["bind"] == "127.0.0.1"


def test_password_and_restart_keep_data() -> None:
    with RedisServer(password="s3cret") as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "1")
        client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"1"
        client.close()
        anonymous = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            anonymous.ping()
        except redis.AuthenticationError:
            pass
        else:
            raise AssertionError("a server with a password accepted an anonymous client")
        finally:
            anonymous.close()
