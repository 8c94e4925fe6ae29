"""The client over a unix socket and over TLS (certificates made with the openssl CLI)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatchq.errors import ConfigError, TransportError
from dispatchq.nomad.client import NomadClient, NomadConfig
from tests.support.stub_server import StubServer, ok

SERVER_NAME = "server.global.nomad"  # not 127.0.0.1: only tls_server_name makes it match


@dataclass
class PKI:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(name: str, cwd: Path) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )


def _make_leaf(name: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=cwd,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    cwd = tmp_path_factory.mktemp("pki")
    _make_ca("ca", cwd)
    _make_ca("other", cwd)
    _make_leaf("server", f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n", cwd)
    _make_leaf("client", "extendedKeyUsage=clientAuth\n", cwd)
    return PKI(
        ca=cwd / "ca.pem",
        other_ca=cwd / "other.pem",
        server_cert=cwd / "server.pem",
        server_key=cwd / "server.key",
        client_cert=cwd / "client.pem",
        client_key=cwd / "client.key",
    )


def _server_context(pki: PKI, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.ca))
    return context


@pytest.fixture
def tls_stub(pki: PKI) -> Iterator[StubServer]:
    with StubServer(tls=_server_context(pki, require_client_cert=False)) as server:
        server.script(ok({"ID": "video"}, index=3))
        yield server


def _read(address: str, **settings: object) -> int:
    config = NomadConfig(address=address).with_overrides(**settings)
    with NomadClient(config, timeout=5) as client:
        return client.read_job("video")[1]


def test_https_with_ca_cert_and_server_name(tls_stub: StubServer, pki: PKI) -> None:
    assert _read(tls_stub.address, ca_cert=str(pki.ca), tls_server_name=SERVER_NAME) == 3


def test_https_with_ca_path_directory(tls_stub: StubServer, pki: PKI, tmp_path: Path) -> None:
    for source in (pki.other_ca, pki.ca):  # every file of the directory is trusted
        shutil.copy(source, tmp_path / source.name)
    assert _read(tls_stub.address, ca_path=str(tmp_path), tls_server_name=SERVER_NAME) == 3


def test_ca_cert_wins_over_ca_path(tls_stub: StubServer, pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TransportError):
        _read(
            tls_stub.address,
            ca_cert=str(pki.other_ca),
            ca_path=str(pki.ca.parent),
            tls_server_name=SERVER_NAME,
        )


def test_https_rejects_a_name_mismatch_without_retrying(tls_stub: StubServer, pki: PKI) -> None:
    with pytest.raises(TransportError) as caught:
        _read(tls_stub.address, ca_cert=str(pki.ca))
    assert not caught.value.retryable
    assert not caught.value.maybe_applied
    assert tls_stub.seen == []


def test_https_rejects_an_unknown_ca(tls_stub: StubServer, pki: PKI) -> None:
    with pytest.raises(TransportError):
        _read(tls_stub.address, ca_cert=str(pki.other_ca), tls_server_name=SERVER_NAME)
    with pytest.raises(TransportError):
        _read(tls_stub.address)  # system roots only


def test_https_skip_verify(tls_stub: StubServer) -> None:
    assert _read(tls_stub.address, tls_skip_verify=True) == 3


def test_client_certificate(pki: PKI) -> None:
    with StubServer(tls=_server_context(pki, require_client_cert=True)) as server:
        server.script(ok({"ID": "video"}, index=5))
        trust = {"ca_cert": str(pki.ca), "tls_server_name": SERVER_NAME}
        with pytest.raises(TransportError):
            _read(server.address, **trust)
        mutual = {"client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
        assert _read(server.address, **trust, **mutual) == 5


def test_missing_tls_file_is_a_config_error(pki: PKI) -> None:
    with pytest.raises(ConfigError, match="invalid TLS configuration"):
        NomadClient(NomadConfig(address="https://127.0.0.1:1", ca_cert="/nonexistent/ca.pem"))


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match='invalid address "ftp://x"'):
        NomadClient(NomadConfig(address="ftp://x"))


def test_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "nomad.sock"
    with StubServer(unix_path=str(socket_path)) as server:
        server.script(ok({"ID": "video"}, index=9))
        with NomadClient(NomadConfig(address=server.address, token="t0ken")) as client:
            job, index = client.read_job("video/dispatch-1-a")
            client.read_job("video")
    assert (job["ID"], index) == ("video", 9)
    first, _ = server.seen
    assert first.raw_path == "/v1/job/video%2Fdispatch-1-a"
    assert first.headers["x-nomad-token"] == "t0ken"
    assert first.headers["host"] == "localhost"


def test_unix_socket_missing(tmp_path: Path) -> None:
    socket_path = tmp_path / "absent.sock"
    client = NomadClient(NomadConfig(address=f"unix://{socket_path}"))
    with client, pytest.raises(TransportError) as caught:
        client.read_job("video")
    assert str(caught.value).endswith(
        f"dial unix {socket_path}: connect: no such file or directory"
    )
    assert not caught.value.maybe_applied
