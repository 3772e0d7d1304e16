"""Where dockerd listens: DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH read
as the docker CLI reads them, in docker-py's exact reading of them (what this
daemon did through docker-py before; tests/unit/test_docker_host.py compares
the two over a table of values), without importing docker-py.

- DOCKER_HOST: unix:///path (also unix://path, docker-py's legacy form),
  tcp://host:port, http://host:port, https://host:port, host:port; ssh:// and
  npipe:// are read by docker-py itself (docker/ssh.py, an optional extra).
  Unset, or with nothing after unix://: /var/run/docker.sock.
- TLS when DOCKER_TLS_VERIFY is set to anything but "" or DOCKER_CERT_PATH is
  set: cert.pem and key.pem of DOCKER_CERT_PATH (default ~/.docker) are the
  client's pair, and tcp:// becomes https://. With DOCKER_TLS_VERIFY dockerd
  is verified against ca.pem there; without it the connection is encrypted
  but not verified. https:// without either is verified against the system's CAs.
"""

from __future__ import annotations

import os
import ssl
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from consul_reg.core.text import printable
from consul_reg.transport.wire import Address

DEFAULT_SOCKET = "/var/run/docker.sock"
FALLBACK_SOCKET = "/tmp/docker.sock"
DEFAULT_HTTP_HOST = "127.0.0.1"
DOCKER_PY_SCHEMES = ("ssh", "npipe")  # read by docker-py (docker/ssh.py), not by our transport
_SCHEME_LETTERS = frozenset(string.ascii_letters + "+")


class DockerHostError(ValueError):
    """DOCKER_HOST or the TLS files cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Endpoint:
    """Where dockerd listens: a unix socket, or host:port (with TLS when ssl_context is set)."""

    unix_path: str = ""
    host: str = ""
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    api_version: str = "1.41"
    unsupported: str = ""  # why this DOCKER_HOST cannot be used here (ssh://, npipe://)
    scheme: str = ""  # the DOCKER_HOST scheme docker-py must read ("ssh", "npipe"), else ""

    @property
    def address(self) -> Address:
        return Address(unix_path=self.unix_path, host=self.host, port=self.port, ssl_context=self.ssl_context)


@dataclass(frozen=True)
class TLSFiles:
    """The TLS files of DOCKER_CERT_PATH and whether dockerd is verified against the CA."""

    ca_cert: str
    cert: str
    key: str
    verify: bool


@dataclass(frozen=True)
class DockerHost:
    """DOCKER_HOST, read: scheme "unix" (path), "http"/"https" (host, port), "ssh" or "npipe"."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""


def docker_base_url(environ: Mapping[str, str] | None = None) -> str | None:
    """As the docker CLI: DOCKER_HOST (None: read it with the TLS variables), else the
    default socket, else /tmp/docker.sock."""
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return None
    if not os.path.exists(DEFAULT_SOCKET) and os.path.exists(FALLBACK_SOCKET):
        return f"unix://{FALLBACK_SOCKET}"
    return f"unix://{DEFAULT_SOCKET}"


def tls_files(environ: Mapping[str, str]) -> TLSFiles | None:
    """The TLS files the variables ask for (None: no TLS). DockerHostError when a file is missing."""
    cert_path = environ.get("DOCKER_CERT_PATH") or None
    verify = environ.get("DOCKER_TLS_VERIFY") not in (None, "")  # any value, "0" too, as docker's CLI
    if not (cert_path or verify):
        return None
    directory = cert_path or os.path.join(os.path.expanduser("~"), ".docker")
    files = TLSFiles(ca_cert=os.path.join(directory, "ca.pem"), cert=os.path.join(directory, "cert.pem"),
                     key=os.path.join(directory, "key.pem"), verify=verify)
    why = "DOCKER_TLS_VERIFY is set" if verify else "DOCKER_CERT_PATH is set"
    if not (os.path.isfile(files.cert) and os.path.isfile(files.key)):
        raise DockerHostError(f"TLS ({why}): cert.pem and key.pem must both be files in {printable(directory)}")
    if verify and not os.path.isfile(files.ca_cert):
        raise DockerHostError(f"TLS ({why}): no ca.pem in {printable(directory)} to verify dockerd against")
    return files


def parse_host(addr: str | None, tls: bool = False) -> DockerHost:
    """DOCKER_HOST as docker-py's utils.parse_host reads it (DockerHostError where it refuses)."""
    if not addr or addr.strip() == "unix://":
        return DockerHost("unix", path=DEFAULT_SOCKET)
    addr = addr.strip()
    shown = printable(addr)
    try:
        parsed = urllib.parse.urlparse(addr)
        scheme = parsed.scheme
        if not scheme or any(c not in _SCHEME_LETTERS for c in scheme):  # host:port, no scheme
            parsed, scheme = urllib.parse.urlparse(f"//{addr}", "tcp"), "tcp"
        hostname, password, port = parsed.hostname, parsed.password, parsed.port
    except ValueError as error:  # a port that is not a number, or out of range; a bad IPv6 literal
        raise DockerHostError(f"DOCKER_HOST {shown}: {error}") from None
    if scheme in ("http", "https"):
        tls, scheme = scheme == "https", "tcp"
    elif scheme == "http+unix":
        scheme = "unix"
    if scheme not in ("tcp", "unix", "npipe", "ssh"):
        raise DockerHostError(f"DOCKER_HOST {shown}: unknown scheme {printable(scheme)}:// "
                              "(unix, tcp, http, https, ssh or npipe)")
    if scheme == "tcp" and not parsed.netloc:
        raise DockerHostError(f"DOCKER_HOST {shown}: no host:port")
    if parsed.params or parsed.query or parsed.fragment or password:
        raise DockerHostError(f"DOCKER_HOST {shown}: a password, query or fragment is not allowed")
    if scheme == "ssh" and parsed.path:
        raise DockerHostError(f"DOCKER_HOST {shown}: ssh:// takes no path")
    if scheme == "unix":
        path = parsed.path if hostname is None else f"{hostname}/{parsed.path}"  # legacy unix://path
        path = f"http+unix://{path}".rstrip("/")[len("http+unix://"):]  # as docker-py strips, then its adapter
        return DockerHost("unix", path=path if path.startswith("/") else "/" + path)
    if scheme == "npipe":
        return DockerHost("npipe")
    if not port:
        if scheme == "tcp":
            raise DockerHostError(f"DOCKER_HOST {shown}: a port is required")
        port = 22
    host = hostname or DEFAULT_HTTP_HOST
    if scheme == "ssh":
        return DockerHost("ssh", host=host, port=port)
    return DockerHost("https" if tls else "http", host=host, port=port)


def endpoint_from(base_url: str | None, environ: Mapping[str, str], api_version: str) -> Endpoint:
    """The endpoint for the client's base URL (unix://...), or, when it is None, the
    one DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH name. DockerHostError for a
    DOCKER_HOST or TLS files that cannot be used; ssl.SSLError, OSError for files that
    do not load."""
    tls = tls_files(environ) if base_url is None else None
    where = parse_host(environ.get("DOCKER_HOST") if base_url is None else base_url, tls=tls is not None)
    if where.scheme == "unix":
        return Endpoint(unix_path=where.path, api_version=api_version)
    if where.scheme in DOCKER_PY_SCHEMES:
        return Endpoint(unsupported=f"{where.scheme}:// is not supported for streamed calls",
                        api_version=api_version, scheme=where.scheme)
    context = None
    if where.scheme == "https":
        # Verified against the system's CAs unless DOCKER_CERT_PATH came without
        # DOCKER_TLS_VERIFY (then encrypted only), against DOCKER_CERT_PATH's CA with it.
        context = ssl.create_default_context(cafile=tls.ca_cert if tls and tls.verify else None)
        if tls and not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls:
            context.load_cert_chain(tls.cert, tls.key)
    return Endpoint(host=where.host, port=where.port, ssl_context=context, api_version=api_version)
