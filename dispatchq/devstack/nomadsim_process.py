"""Run nomadsim as a child process (`python -m nomadsim`) on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import requests

from dispatchq.devstack.ports import free_port, stop_process, wait_for_port


@dataclass
class NomadSimProcess:
    """A nomadsim server process. `args` are extra command-line flags for nomadsim."""

    args: list[str] = field(default_factory=list)
    port: int = 0
    new_session: bool = False
    """Run in a session of its own (see `RedisServer.new_session`)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NomadSimProcess:
        if not self.port:
            self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatchq.nomadsim", "--port", str(self.port), *self.args],
            stdout=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        try:
            wait_for_port(self.port, timeout)
            requests.get(f"{self.address}/v1/status/leader", timeout=timeout).raise_for_status()
        except (TimeoutError, requests.RequestException):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> NomadSimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
