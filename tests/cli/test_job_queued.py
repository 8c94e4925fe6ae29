"""`dispatchq job dispatch` through the queue: the same lines and exit codes as -direct."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.support.stack import Stack


def dispatch(stack: Stack, *args: str, direct: bool = False, stdin: bytes = b"") -> Any:
    flags = ["-direct"] if direct else []
    return subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", *flags, *args],
        input=stdin,
        capture_output=True,
        env=stack.env,
        timeout=120,
        check=False,
    )


def _shape(stdout: bytes) -> list[str]:
    """The lines with IDs blanked, so two dispatches can be compared."""
    lines = []
    for line in stdout.decode().splitlines():
        shape = line
        for marker in ('"', "= "):
            if marker in shape:
                shape = shape.split(marker)[0] + marker
        lines.append(shape)
    return lines


def test_same_lines_and_exit_code_as_direct(running: Stack) -> None:
    queued = dispatch(running, "-meta", "profile=hd", "encode", "-", stdin=b"payload")
    direct = dispatch(running, "-meta", "profile=hd", "encode", "-", direct=True, stdin=b"payload")
    assert queued.returncode == direct.returncode == 0, queued.stderr
    assert _shape(queued.stdout) == _shape(direct.stdout)
    assert queued.stdout.decode().startswith("Dispatched Job ID = encode/dispatch-")
    assert '==> Evaluation "' in queued.stdout.decode()


def test_placement_failure_exits_2(running: Stack) -> None:
    result = dispatch(running, "huge")
    assert result.returncode == 2, result.stderr
    text = result.stdout.decode()
    assert 'Task Group "encode" (failed to place 1 allocation):' in text
    assert "waiting for additional capacity to place remainder" in text


def test_validation_error_exits_1_with_nomads_text(running: Stack) -> None:
    result = dispatch(running, "-meta", "colour=red", "encode")
    assert result.returncode == 1
    assert result.stdout == b""
    assert (
        "Failed to dispatch job: Unexpected response code: 500 "
        "(Dispatch request included unpermitted metadata keys: [colour])"
    ) in result.stderr.decode()


def test_detach_prints_the_request_id(running: Stack) -> None:
    result = dispatch(running, "-detach", "-meta", "profile=hd", "encode")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode().strip()
    assert line.startswith("Request ID = ")
    request_id = line.split(" = ")[1]
    wait = subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "wait", request_id, "-timeout", "60"],
        capture_output=True,
        env=running.env,
        timeout=120,
        check=False,
    )
    assert wait.returncode == 0, wait.stderr
    assert f"Request ID        = {request_id}" in wait.stdout.decode()
    assert "Exit Code         = 0" in wait.stdout.decode()


def test_no_worker_is_a_clear_error(clean: Stack) -> None:
    env = {**clean.env, "DISPATCHQ_QUEUE": "nobody-listens"}
    result = subprocess.run(
        [sys.executable, "-m", "dispatchq.cli", "job", "dispatch", "-meta", "profile=hd", "encode"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert 'no dispatchq worker is consuming queue "nobody-listens"' in result.stderr.decode()
