"""DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH read by the daemon's own
parsing (docker/host.py), compared with docker-py's reading of the same values
(what the daemon used before, kept in the test environment as the reference):
the same socket or host:port, the same TLS (verification, CA, client pair), the
same refusals, over a table of values."""

from __future__ import annotations

import ssl
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import docker.errors
import docker.utils
import pytest

from consul_reg.docker import host as docker_host
from consul_reg.docker.host import DockerHostError, endpoint_from

HOSTS = [
    "unix:///var/run/docker.sock", "unix:///var/run/docker.sock/", "unix:///var/run/docker.sock\n",
    "unix://var/run/docker.sock", "unix://Var/run/x.sock", "unix://", "unix:///", "  unix:///run/user/1000/docker.sock ",
    "http+unix:///x.sock", "unix:///a b/c.sock", "unix:///x.sock?q=1", "unix:///x.sock#f",
    "tcp://10.0.0.5:2375", "tcp://10.0.0.5", "tcp://", "tcp://:2375", "tcp://[::1]:2375", "tcp://Host.Example:2376/p/",
    "tcp://user@host:2375", "tcp://user:pw@host:2375", "tcp://host:2375?x=1", "tcp://host:2375#f", "tcp://host:abc",
    "tcp://host:70000", "tcp://host:0", "tcp://[::1:2375",
    "http://10.0.0.5:2375", "https://10.0.0.5:2376", "https://dockerd.example", "http://:2375", "HTTP://h:1",
    "10.0.0.5:2375", "[::1]:2375", "localhost:2375", "dockerd:2375/",
    "ssh://user@host", "ssh://user@host:2222", "ssh://host/path", "ssh://user:pw@host", "npipe:////./pipe/docker_engine",
    "fd://", "ftp://x:1", "", "   ", "://x",
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory as DOCKER_CERT_PATH holds it: ca.pem, cert.pem, key.pem (one self-made pair)."""
    directory = tmp_path_factory.mktemp("certs")
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=docker",
                           "-days", "1", "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip("openssl is not available")
    (directory / "ca.pem").write_bytes((directory / "cert.pem").read_bytes())
    return directory


def tls_summary(context: ssl.SSLContext | None) -> Any:
    if context is None:
        return None
    return context.verify_mode, context.check_hostname, len(context.get_ca_certs())


def docker_py_reading(base_url: str | None, environ: dict[str, str]) -> tuple[Any, ...]:
    """What docker-py makes of the same values, as the daemon read them through it before."""
    tls = None
    if base_url is None:
        kwargs = docker.utils.kwargs_from_env(environment=environ)
        base_url, tls = kwargs.get("base_url"), kwargs.get("tls")
    address = docker.utils.parse_host(base_url, tls=bool(tls))
    parsed = urllib.parse.urlparse(address)
    if parsed.scheme == "http+unix":  # the socket's path as docker-py's UnixHTTPAdapter takes it
        path = address[len("http+unix://"):]
        return "unix", path if path.startswith("/") else "/" + path
    if parsed.scheme in ("http", "https"):
        context = None
        if parsed.scheme == "https":
            context = ssl.create_default_context(cafile=tls.ca_cert if tls and tls.verify else None)
            if tls and not tls.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return "tcp", parsed.hostname, parsed.port, tls_summary(context)
    return "docker-py", parsed.scheme


def our_reading(base_url: str | None, environ: dict[str, str]) -> tuple[Any, ...]:
    endpoint = endpoint_from(base_url, environ, "1.41")
    if endpoint.unsupported:
        return "docker-py", endpoint.scheme
    if endpoint.unix_path:
        return "unix", endpoint.unix_path
    return "tcp", endpoint.host, endpoint.port, tls_summary(endpoint.ssl_context)


def readings(base_url: str | None, environ: dict[str, str]) -> tuple[Any, Any]:
    try:
        expected: Any = docker_py_reading(base_url, environ)
    except (docker.errors.DockerException, ValueError) as error:
        expected = ("refused", type(error).__name__)
    try:
        ours: Any = our_reading(base_url, environ)
    except DockerHostError as error:
        assert str(error), "a refusal says why"
        ours = ("refused", expected[1] if expected[0] == "refused" else "DockerHostError")
    return expected, ours


@pytest.mark.parametrize("value", HOSTS)
def test_docker_host_is_read_as_docker_py_reads_it(value: str) -> None:
    expected, ours = readings(None, {"DOCKER_HOST": value})
    assert ours == expected
    expected, ours = readings(value, {})  # the client's own base URL (unix://, the default socket)
    assert ours == expected


@pytest.mark.parametrize("value", ["tcp://10.0.0.5:2376", "http://10.0.0.5:2375", "https://d.example:2376",
                                   "unix:///var/run/docker.sock", "ssh://user@host", "10.0.0.5:2376", "tcp://h"])
@pytest.mark.parametrize("tls", ["verify", "cert path only", "verify empty", "verify 0", "verify without files",
                                 "cert path without ca", "verify without ca", "verify from home"])
def test_tls_variables_are_read_as_docker_py_reads_them(value: str, tls: str, certs: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "no-ca").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "no-ca" / name).write_bytes((certs / name).read_bytes())
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (home / ".docker" / name).write_bytes((certs / name).read_bytes())
    monkeypatch.setenv("HOME", str(home))  # ~/.docker, the default DOCKER_CERT_PATH
    environ = {"DOCKER_HOST": value, **{
        "verify": {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)},
        "cert path only": {"DOCKER_CERT_PATH": str(certs)},
        "verify empty": {"DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": ""},
        "verify 0": {"DOCKER_TLS_VERIFY": "0", "DOCKER_CERT_PATH": str(certs)},
        "verify without files": {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path / "none")},
        "cert path without ca": {"DOCKER_CERT_PATH": str(tmp_path / "no-ca")},
        "verify without ca": {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path / "no-ca")},
        "verify from home": {"DOCKER_TLS_VERIFY": "yes"},
    }[tls]}
    expected, ours = readings(None, environ)
    assert ours == expected
    if expected[0] == "refused":
        return
    files = docker_host.tls_files(environ)
    reference = docker.utils.kwargs_from_env(environment=environ).get("tls")
    assert (files is None) == (reference is None)
    if files is not None:
        assert (files.ca_cert, (files.cert, files.key), files.verify) == \
            (reference.ca_cert, reference.cert, reference.verify)


def test_the_table_covers_every_kind_of_reading() -> None:
    """The comparison above is not vacuous: unix, tcp, docker-py's own schemes and refusals all occur."""
    kinds = {readings(None, {"DOCKER_HOST": value})[0][0] for value in HOSTS}
    assert kinds == {"unix", "tcp", "docker-py", "refused"}


def test_a_refusal_names_the_value_and_what_is_wrong() -> None:
    with pytest.raises(DockerHostError, match=r"DOCKER_HOST tcp://10\.0\.0\.5: a port is required"):
        endpoint_from(None, {"DOCKER_HOST": "tcp://10.0.0.5"}, "1.41")
    with pytest.raises(DockerHostError, match=r"unknown scheme ftp://"):
        endpoint_from(None, {"DOCKER_HOST": "ftp://x:1"}, "1.41")
    with pytest.raises(DockerHostError, match=r"\\n"):  # a control character never reaches a log line as it is
        endpoint_from(None, {"DOCKER_HOST": "tcp://x:1?\nFAKE LOG LINE"}, "1.41")


def test_tls_files_that_do_not_load_are_an_error_not_plain_tcp(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        endpoint_from(None, {"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_TLS_VERIFY": "1",
                             "DOCKER_CERT_PATH": str(tmp_path)}, "1.41")
