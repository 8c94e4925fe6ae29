"""Stopping a child process that runs in a process group of its own (a worker with its
pool, a tracker, a notifier): the whole group, so no pool process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess


class ProcessGroup:
    """`kill`, `stop` and the context manager's exit for a class with a `process`."""

    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        """SIGKILL the whole group: a crash, nothing cleaned up or released."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
