"""A `dispatchq tracker` process, configured by environment variables (tests, dev, demo)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dispatchq.devstack.process_group import ProcessGroup


@dataclass
class TrackerProcess(ProcessGroup):
    """`dispatchq tracker` in its own process group; `args` are extra flags."""

    env: Mapping[str, str]
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> TrackerProcess:
        command = [sys.executable, "-m", "dispatchq.cli", "tracker", *self.args]
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

    def __enter__(self) -> TrackerProcess:
        return self.start()
