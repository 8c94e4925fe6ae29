"""A `dispatchq web` process (the dashboard), configured by environment variables (dev, demo)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dispatchq.devstack.ports import LOOPBACK, free_port, wait_for_port
from dispatchq.devstack.process_group import ProcessGroup


@dataclass
class WebProcess(ProcessGroup):
    """`dispatchq web` on a loopback port, in its own process group."""

    env: Mapping[str, str]
    log_path: Path | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def start(self, timeout: float = 20.0) -> WebProcess:
        self.port = self.port or free_port()
        command = [sys.executable, "-m", "dispatchq.cli", "web", "--host", LOOPBACK,
                   "--port", str(self.port)]  # fmt: skip
        out = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command, env={**os.environ, **self.env}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            if not isinstance(out, int):
                out.close()
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def __enter__(self) -> WebProcess:
        return self.start()
