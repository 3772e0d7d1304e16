"""One HTTP/1.1 exchange with dockerd on a socket of its own, under a wall-clock deadline.

Used for the calls that stream what a container controls (a file's archive,
an exec's output). docker-py cannot bound those: it switches the socket
timeout off for streams and parses headers through a buffered reader that
may swallow the first bytes of a hijacked exec stream. Here every recv gets
the time left before the deadline as its timeout, h11 does the framing
(chunked or close-delimited) on bytes we read ourselves (`http_wire`), and each exchange
has its own connection (no pool: thread-safe by construction, and an
abandoned stream never leaks into the next request).
"""

from __future__ import annotations

import json
import math
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping

from consul_reg.transport import wire as http_wire

RECV_BYTES = http_wire.RECV_BYTES
MAX_JSON_BYTES = 1024 * 1024  # an exec's create/inspect answer, an error body
MAX_SECONDS = 86400.0
# unix:///absolute/path, as written by hand or by the docker CLI's contexts: read without
# docker-py. Anything else (a trailing slash, spaces, unix://relative) goes through its parsing.
_PLAIN_UNIX = re.compile(r"unix://(/[^\s?#]*[^\s/?#])")


class Unreachable(Exception):
    """dockerd could not be connected to, or dropped the connection before answering."""


class Timeout(Exception):
    """The deadline passed."""


class BrokenExchange(Exception):
    """dockerd broke off or sent something that is not HTTP."""


@dataclass(frozen=True)
class Endpoint:
    """Where dockerd listens: a unix socket, or host:port (with TLS when ssl_context is set)."""

    unix_path: str = ""
    host: str = ""
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    api_version: str = "1.41"
    unsupported: str = ""  # why this DOCKER_HOST cannot be used here (ssh://, npipe://)

    @property
    def description(self) -> str:
        return f"unix://{self.unix_path}" if self.unix_path else f"tcp://{self.host}:{self.port}"


def endpoint_from(base_url: str | None, environ: Mapping[str, str], api_version: str) -> Endpoint:
    """The endpoint for docker_source's base URL (unix://...), or, when it is None,
    DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH read as docker-py reads them.
    A unix socket is read here; anything else through docker-py's own parsing, imported
    only then (it costs ~9 MB of memory: BENCHMARKS.md, footprint)."""
    plain = _PLAIN_UNIX.fullmatch(environ.get("DOCKER_HOST", "") if base_url is None else base_url)
    if plain:
        return Endpoint(unix_path=plain.group(1), api_version=api_version)
    import docker.utils

    tls = None
    if base_url is None:
        kwargs = docker.utils.kwargs_from_env(environment=dict(environ))
        base_url, tls = kwargs.get("base_url"), kwargs.get("tls")
    host = docker.utils.parse_host(base_url, tls=bool(tls))
    parsed = urllib.parse.urlparse(host)
    if parsed.scheme == "http+unix":  # the socket's path as docker-py's UnixHTTPAdapter takes it
        path = host[len("http+unix://"):]
        return Endpoint(unix_path=path if path.startswith("/") else "/" + path, api_version=api_version)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        context = None
        if parsed.scheme == "https":
            # As docker-py: verified against the system's CAs unless DOCKER_CERT_PATH came
            # without DOCKER_TLS_VERIFY (then encrypted only), against DOCKER_CERT_PATH's CA with it.
            context = ssl.create_default_context(cafile=tls.ca_cert if tls and tls.verify else None)
            if tls and not tls.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if tls and tls.cert:
                context.load_cert_chain(*tls.cert)
        return Endpoint(host=parsed.hostname, port=parsed.port or (2376 if context else 2375),
                        ssl_context=context, api_version=api_version)
    return Endpoint(unsupported=f"{parsed.scheme}:// is not supported for streamed calls", api_version=api_version)


def deadline_after(seconds: float) -> float:
    """time.monotonic() + seconds, with seconds made a sane number (NaN and negatives: 0; at most a day)."""
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        seconds = 0.0
    return time.monotonic() + min(max(float(seconds), 0.0), MAX_SECONDS)


def url(endpoint: Endpoint, path: str, *segments: str, query: Mapping[str, str] | None = None) -> str:
    """`path` with `{}` filled by percent-encoded segments (never a `/` or `..` of theirs)."""
    target = f"/v{endpoint.api_version}" + path.format(*(urllib.parse.quote(s, safe="") for s in segments))
    return target + ("?" + urllib.parse.urlencode(query) if query else "")


class Exchange:
    """One request and its streamed response. Use as a context manager; close() drops the connection."""

    def __init__(self, endpoint: Endpoint, method: str, target: str, deadline: float,
                 body: Any = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.deadline = deadline
        self.status = 0
        self.headers: dict[str, str] = {}
        self._wire: http_wire.Wire | None = None
        if endpoint.unsupported:
            raise Unreachable(endpoint.unsupported)
        payload = b"" if body is None else json.dumps(body).encode()
        request_headers = [("Host", "docker"), ("Connection", "close"), ("Content-Length", str(len(payload))),
                           *headers]
        if body is not None:
            request_headers.append(("Content-Type", "application/json"))
        try:
            self._wire = http_wire.Wire(http_wire.connect(
                unix_path=endpoint.unix_path, host=endpoint.host, port=endpoint.port,
                ssl_context=endpoint.ssl_context, timeout=self.remaining()))
        except OSError as error:  # refused, missing socket, TLS failure, connect timeout
            raise Unreachable(f"cannot connect to {endpoint.description}: {describe(error)}") from None
        self._wire.deadline = deadline
        try:
            try:
                self._wire.send_request(method, target, request_headers, payload)
            except TimeoutError:
                raise Timeout("the deadline passed while sending") from None
            except OSError as error:
                raise Unreachable(f"dockerd dropped the connection: {describe(error)}") from None
            try:
                self.status, self.headers = self._wire.read_head()
            except TimeoutError:
                raise Timeout("the deadline passed while reading") from None
            except (OSError, http_wire.ProtocolError) as error:
                raise Unreachable(f"no answer from dockerd: {describe(error)}") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Exchange":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout("the deadline passed")
        return left

    def read_some(self, max_bytes: int = RECV_BYTES) -> bytes:
        """The next piece of the body, b"" at its end. At most `max_bytes` more are
        taken from the socket (plus what HTTP framing already buffered)."""
        if self._wire is None:
            raise BrokenExchange("connection closed")
        try:
            return self._wire.read_some(max_bytes)
        except TimeoutError:
            raise Timeout("the deadline passed while reading") from None
        except http_wire.ProtocolError as error:
            raise BrokenExchange(f"bad HTTP from dockerd: {error}") from None
        except OSError as error:
            raise BrokenExchange(f"connection failed: {describe(error)}") from None

    def read_json(self, limit: int = MAX_JSON_BYTES) -> Any:
        """The whole body as JSON (BrokenExchange if longer than `limit` or not JSON)."""
        data = bytearray()
        while piece := self.read_some():
            data += piece
            if len(data) > limit:
                raise BrokenExchange(f"answer longer than {limit} bytes")
        try:
            return json.loads(data or b"null")
        except ValueError as error:
            raise BrokenExchange(f"answer is not JSON: {error}") from None

    def error_message(self) -> str:
        """dockerd's {"message": ...} of a failed call, else the status."""
        try:
            body = self.read_json(limit=64 * 1024)
            message = body.get("message") if isinstance(body, dict) else None
        except (BrokenExchange, Timeout, OSError):
            message = None
        return f"{self.status} {message}" if isinstance(message, str) else f"HTTP {self.status}"

    def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()


def printable(text: str, limit: int = 200) -> str:
    """Container-controlled text made safe for one log line: control characters escaped, length capped."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def describe(error: BaseException) -> str:
    return printable(" ".join(str(error).split()) or type(error).__name__, 300)
