from __future__ import annotations

import io
import json

import structlog
from structlog.testing import capture_logs

from dispatchq.config.logging import configure_logging, redact_secrets, register_secrets, scrub


def test_registered_secrets_are_masked_everywhere() -> None:
    register_secrets(["s.nomad-token-0042", None, ""])
    event = redact_secrets(
        None,
        "info",
        {
            "event": "call failed: header s.nomad-token-0042 refused",
            "nested": {"url": "http://x/?t=s.nomad-token-0042"},
            "items": ["s.nomad-token-0042"],
            "error": RuntimeError("token s.nomad-token-0042"),
        },
    )
    assert "s.nomad-token-0042" not in json.dumps(event)
    assert scrub("a s.nomad-token-0042 b") == "a *** b"


def test_secret_named_keys_are_masked() -> None:
    event = redact_secrets(None, "info", {"event": "x", "token": "abc", "redis_password": "p"})
    assert event["token"] == "***"
    assert event["redis_password"] == "***"


def test_json_lines_with_bound_context() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    register_secrets(["hunter2-secret"])
    log = structlog.get_logger().bind(request_id="r-1", job_id="video")
    log.info("dispatched", eval_id="e-1", note="pw hunter2-secret")
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["request_id"] == "r-1"
    assert line["job_id"] == "video"
    assert line["eval_id"] == "e-1"
    assert line["note"] == "pw ***"
    assert line["level"] == "info"


def test_a_json_line_never_raises_on_what_orjson_refuses() -> None:
    """A hostile message's arguments are logged as they came: an integer past 64 bits."""
    out = io.StringIO()
    configure_logging("json", stream=out)
    structlog.get_logger().warning("message.dead_lettered", kwargs={"priority": 2**70})
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["kwargs"] == {"priority": 2**70}


def test_capture_logs_sees_events() -> None:
    with capture_logs() as logs:
        structlog.get_logger().warning("no worker", queue="dispatchq")
    assert logs == [{"event": "no worker", "queue": "dispatchq", "log_level": "warning"}]
