"""dockerd over tcp:// and over TLS, as DOCKER_HOST / DOCKER_TLS_VERIFY /
DOCKER_CERT_PATH name it, read by the daemon's own parsing (docker/host.py, no
docker-py): the real dockerd behind a proxy of the test's own on a loopback
port, plain or TLS (a certificate for 127.0.0.1 from a CA of the test's own,
client certificates required). Every kind of call goes through it: listing,
inspect and the event stream (the daemon registers and deregisters a
container), a file read and an exec (the per-call exchange). A dockerd whose
certificate the CA did not sign is never talked to."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consul_reg.docker.client import DockerSource, DockerUnavailable
from tests.integration.conftest import free_port, wait_until

DOCKER_SOCKET = "/var/run/docker.sock"
pytestmark = pytest.mark.integration


def openssl(*args: str) -> None:
    made = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"openssl failed: {made.stderr[-300:]}")


def issue(directory: Path, ca: Path, name: str, extensions: str) -> None:
    """<name>-key.pem and <name>-cert.pem, signed by the CA in `ca`."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(directory / f"{name}-key.pem"),
            "-out", str(directory / f"{name}.csr"))
    (directory / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", str(directory / f"{name}.csr"), "-CA", str(ca / "ca.pem"), "-CAkey",
            str(ca / "ca-key.pem"), "-CAcreateserial", "-days", "1", "-extfile", str(directory / f"{name}.ext"),
            "-out", str(directory / f"{name}-cert.pem"))


def authority(directory: Path) -> Path:
    directory.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={directory.name} CA", "-days", "1",
            "-keyout", str(directory / "ca-key.pem"), "-out", str(directory / "ca.pem"))
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, dockerd's certificate for 127.0.0.1, and DOCKER_CERT_PATH directories as the docker CLI reads
    them (ca.pem, cert.pem, key.pem): one trusting that CA, one trusting another CA."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = authority(root / "ca"), authority(root / "other")
    issue(root, ca, "dockerd", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(root, ca, "client", "extendedKeyUsage=clientAuth\n")
    paths = {"root": root}
    for name, trusted in (("certs", ca), ("wrong-ca", other)):
        directory = root / name
        directory.mkdir()
        (directory / "ca.pem").write_bytes((trusted / "ca.pem").read_bytes())
        (directory / "cert.pem").write_bytes((root / "client-cert.pem").read_bytes())
        (directory / "key.pem").write_bytes((root / "client-key.pem").read_bytes())
        paths[name] = directory
    return paths


class Proxy:
    """127.0.0.1:<port> -> the real dockerd's unix socket; TLS-terminating when given a context."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.connections = 0
        self.refused: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.context is not None:
                conn.settimeout(10)
                conn = self.context.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
        except (OSError, ssl.SSLError) as error:
            self.refused.append(str(error))
            conn.close()
            return
        self.connections += 1
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(DOCKER_SOCKET)
        threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
        self._pump(conn, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(pki: dict[str, Path]) -> Iterator[Callable[[bool], Proxy]]:
    made: list[Proxy] = []

    def start(tls: bool) -> Proxy:
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pki["root"] / "dockerd-cert.pem", pki["root"] / "dockerd-key.pem")
            context.load_verify_locations(pki["root"] / "ca" / "ca.pem")
            context.verify_mode = ssl.CERT_REQUIRED  # dockerd --tlsverify: a client certificate from the CA
        made.append(Proxy(context))
        return made[-1]
    yield start
    for each in made:
        each.close()


def docker_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> dict[str, str]:
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_every_call_reaches_dockerd_over_tcp_and_tls(tls, proxy, pki, monkeypatch, run_container, start_daemon,
                                                     consul_api, hostname):
    through = proxy(tls)
    variables = {"DOCKER_HOST": f"tcp://127.0.0.1:{through.port}"}
    if tls:
        variables |= {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(pki["certs"])}
    env = docker_env(monkeypatch, **variables)
    daemon = start_daemon("--filter", f"label=tcptls={hostname}", env=env)
    daemon.wait_log("connected: docker tcp://127.0.0.1")
    web = run_container(["sh", "-c", "echo SERVICE_TAGS=a > /svc.env && exec sleep 600"],
                        ports={"80/tcp": None}, labels={"tcptls": hostname})
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: service_id in consul_api.services_of(hostname), message="registered through the proxy")
    source = DockerSource(timeout=10)  # the daemon's own client, in this process: the per-call exchange
    try:
        assert source.inspect(web.id)["Id"] == web.id
        wait_until(lambda: source.read_file(web.id, "/svc.env", 4096, 5) == "SERVICE_TAGS=a\n",
                   message="a file read over the exchange")
        assert source.exec_in_container(web.id, "echo exec-over-$((20+1))", 10) == (0, "exec-over-21")
    finally:
        source.close()
    web.remove(force=True)  # an event on the stream through the proxy
    wait_until(lambda: service_id not in consul_api.services_of(hostname), message="deregistered on the event")
    assert through.connections >= 3 and through.refused == []
    assert "docker event stream failed" not in daemon.log()


def test_a_dockerd_the_ca_did_not_sign_is_never_talked_to(proxy, pki, monkeypatch):
    through = proxy(True)
    docker_env(monkeypatch, DOCKER_HOST=f"tcp://127.0.0.1:{through.port}", DOCKER_TLS_VERIFY="1",
               DOCKER_CERT_PATH=str(pki["wrong-ca"]))
    source = DockerSource(timeout=5)
    try:
        with pytest.raises(DockerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            source.ping()
    finally:
        source.close()
    assert through.connections == 0  # no request ever reached dockerd


def test_without_tls_variables_a_tls_dockerd_gets_no_plain_request(proxy, monkeypatch):
    """tcp:// without DOCKER_TLS_VERIFY / DOCKER_CERT_PATH is plain HTTP, as for the docker CLI:
    the TLS proxy refuses it and dockerd sees nothing."""
    through = proxy(True)
    docker_env(monkeypatch, DOCKER_HOST=f"tcp://127.0.0.1:{through.port}")
    source = DockerSource(timeout=5)
    try:
        with pytest.raises(DockerUnavailable):
            source.ping()
    finally:
        source.close()
    assert through.connections == 0
    wait_until(lambda: through.refused, message="the proxy refused the plain request")
