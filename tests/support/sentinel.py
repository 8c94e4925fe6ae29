"""A Redis primary with replicas watched by three Sentinels, all real processes on loopback
(Debian's redis-server, and redis-server in Sentinel mode), for the failover tests."""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from dispatchq.devstack.ports import free_port, stop_process, wait_for_port
from dispatchq.devstack.redis_server import RedisServer, find_redis_server

MASTER = "dispatchq-main"
DOWN_AFTER_MS = 1_000
"""Sentinels take a primary for down after this long without an answer."""
FAILOVER_TIMEOUT_MS = 5_000


@dataclass
class Sentinel:
    port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.process = subprocess.Popen(
            [find_redis_server(), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


def _primary_port(sentinel: Sentinel) -> int:
    address: Any = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
    return int(address[1])


@dataclass
class SentinelGroup:
    """One primary, `replicas` replicas, three Sentinels (quorum 2)."""

    replicas: int = 1
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[Sentinel] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def env(self) -> dict[str, str]:
        return {"DISPATCHQ_REDIS_URL": self.url, "DISPATCHQ_REDIS_MASTER_NAME": MASTER}

    def start(self) -> SentinelGroup:
        self._tmp = tempfile.TemporaryDirectory(prefix="dispatchq-sentinel-")
        root = Path(self._tmp.name)
        primary = RedisServer(data_dir=self._dir(root, "r0")).start()
        self.servers = [primary]
        for n in range(1, self.replicas + 1):
            replica = RedisServer(
                data_dir=self._dir(root, f"r{n}"),
                extra_args=["--replicaof", "127.0.0.1", str(primary.port)],
            )
            self.servers.append(replica.start())
        for n in range(3):
            port = free_port()
            config = root / f"sentinel{n}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {root}\n"
                f"logfile {root / f'sentinel{n}.log'}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(Sentinel(port, config).start())
        self.wait_synced()
        return self

    @staticmethod
    def _dir(root: Path, name: str) -> Path:
        path = root / name
        path.mkdir()
        return path

    def primary_port(self) -> int:
        """The primary's port, as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            try:
                return _primary_port(sentinel)
            except redis.RedisError:
                continue
        raise RuntimeError("no Sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def primary(self) -> RedisServer:
        return self.server(self.primary_port())

    def wait_synced(self, timeout: float = 20) -> None:
        """Until the primary has its replicas online, and every Sentinel knows of them."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                port = self.primary_port()
                info = redis.Redis(port=port).info("replication")
                known = [
                    len(s.client().sentinel_slaves(MASTER))
                    for s in self.sentinels
                    if s.process is not None
                ]
                online = [
                    v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                ]
                if (
                    info.get("role") == "master"
                    and len([r for r in online if r.get("state") == "online"]) >= self.replicas
                    and known
                    and min(known) >= self.replicas
                ):
                    return
            except (redis.RedisError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Sentinel group did not come up in time")
            time.sleep(0.1)

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        """Until every Sentinel names a primary other than `old_port`; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = set()
            for sentinel in self.sentinels:
                try:
                    ports.add(_primary_port(sentinel))
                except redis.RedisError:
                    ports.add(-1)
            if len(ports) == 1 and old_port not in ports and -1 not in ports:
                return ports.pop()
            time.sleep(0.05)
        raise TimeoutError("no failover in time")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
