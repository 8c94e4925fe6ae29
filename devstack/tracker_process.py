"""A `dispatchq tracker` process, configured by environment variables (tests, dev, demo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrackerProcess:
    """`dispatchq tracker` in its own process group; `args` are extra flags."""

    env: Mapping[str, str]
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> TrackerProcess:
        command = [sys.executable, "-m", "producer.cli", "tracker", *self.args]
        out = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, nothing released (the lease lapses on its own)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def __enter__(self) -> TrackerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
