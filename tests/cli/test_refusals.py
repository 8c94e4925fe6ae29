"""The command line never prints a traceback: every refusal is one line on stderr and exit
code 1, usage errors included; `dispatchq config` masks every secret form (issue 15)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatchq.cli.main import main
from dispatchq.devstack.redis_server import RedisServer


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """`job dispatch` configures logging (WARNING): later tests get theirs back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def env(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("DISPATCHQ_QUEUE", "refusals")
    for name in ("NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_HTTP_AUTH", "DISPATCHQ_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["job", "dispatch", "-detach", "-priority", "101", "plain"], "priority must be"),
        (["job", "dispatch", "-detach", "-meta", "=v", "plain"], "meta keys must be non-empty"),
        (["job", "dispatch", "-detach", ""], "job ID must be a non-empty string"),
        (["job", "dispatch", "-detach", "plain", "BIG"], "Payload exceeds maximum size"),
        (["wait", "-timeout", "abc", "x"], "invalid duration 'abc'"),
        (["status"], "Missing argument 'REQUEST_ID'"),
        (["dlq", "bogus"], "No such command 'bogus'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_refusals_are_one_line_and_exit_1(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 17_000)
    assert _run([str(big) if a == "BIG" else a for a in argv]) == 1
    err = capsys.readouterr().err
    assert reason in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "url",
    ["redis://:hunter22@127.0.0.1:abc/0", "redis://:hunter22@[::1/0", "ftp://hunter22@h/0",
     "redis://:hunter22@127.0.0.1:0/0"],
)  # fmt: skip
def test_a_bad_redis_url_is_a_settings_error_without_the_password(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    monkeypatch.setenv("DISPATCHQ_REDIS_URL", url)
    for argv in (["status", "x"], ["config"], ["job", "dispatch", "-detach", "plain"]):
        assert _run(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Error in the settings: redis_url"), err
        assert len(err.strip().splitlines()) == 1 and "hunter22" not in err


SECRETS = ("hunter22", "qpw-secret", "n0mad-pass", "tok-abcdef", "basic-pw")


def test_config_masks_every_secret_form(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    forms = [
        "redis://:hunter22@127.0.0.1:6379/0?password=qpw-secret",
        "rediss://user:hunter22@h:6380/0?ssl_password=qpw-secret",
        "redis://hunter22@127.0.0.1:6379/0",
        "unix:///tmp/redis.sock?db=0&password=qpw-secret",
    ]
    monkeypatch.setenv("NOMAD_ADDR", "http://admin:n0mad-pass@127.0.0.1:4646")
    monkeypatch.setenv("NOMAD_TOKEN", "tok-abcdef")
    monkeypatch.setenv("NOMAD_HTTP_AUTH", "user:basic-pw")
    for url in forms:
        monkeypatch.setenv("DISPATCHQ_REDIS_URL", url)
        for argv in (["config"], ["config", "-json"]):
            assert _run(argv) == 0
            out = capsys.readouterr().out
            assert [s for s in SECRETS if s in out] == [], out
            assert "***" in out
    assert _run(["config", "-json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["nomad"]["address"] == "http://admin:***@127.0.0.1:4646"
    assert shown["dispatchq"]["redis_url"] == "unix:///tmp/redis.sock?db=0&password=***"


words = st.sampled_from(
    [
        "status",
        "wait",
        "config",
        "dlq",
        "list",
        "replay",
        "purge",
        "job",
        "dispatch",
        "-detach",
        "-meta",
        "=v",
        "k=v",
        "-priority",
        "101",
        "-1",
        "abc",
        "-timeout",
        "0.05",
        "-json",
        "",
        "plain",
        "-id-prefix-template",
        "-idempotency-token",
        "-namespace",
        "--",
        "-",
        "\x00",
        "batch",
        "results",
        "cancel",
        "-all",
        "-h",
    ]
) | st.text(max_size=6)


@given(argv=st.lists(words, max_size=6))
@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_fuzzed_command_lines_never_raise(
    env: None, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Any command line: exit 0, 1 or 2 (an outcome's code), never an exception. A failure
    says why on stderr (one line, except the nomad-style usage of `job dispatch`)."""
    if argv[:1] in (["job"], ["batch"]) and "-" in argv:
        return  # would read stdin
    if argv[:1] == ["wait"]:  # an ID not known yet is waited for: bound every wait
        rest, drawn = [], iter(argv[1:])
        for word in drawn:  # a -timeout the fuzz drew (`-timeout 101`) would win: drop it
            if word in ("-timeout", "--timeout"):
                next(drawn, None)
            elif not word.startswith(("-timeout=", "--timeout=")):
                rest.append(word)
        argv = ["wait", "-timeout", "0.05", *rest]
    code = _run(argv)
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 1 and argv[:2] != ["job", "dispatch"] and argv[:1] != ["wait"]:
        assert err.strip(), argv
