"""Keep-alive HTTP/1.1 connections to one server (TCP, verified TLS or a unix
socket), shared by threads.

The hot paths (the agent's register / deregister / TTL updates, Docker's
inspect) are one small request and one small answer each. Through httpx and
httpcore a call cost ~0.6-1 ms of CPU here, through http.client ~0.2 ms, and
through the few lines below (one send per request, the answer's head split
by hand, the body by its length or chunks) less again (BENCHMARKS.md). At
most `max_connections` requests are in flight; a caller waits for a free
connection up to its timeout. An idle connection the server closed is
noticed before reuse, and a request that fails on a reused connection before
any answer came is sent once more on a new one (every request made through
this pool is idempotent: GET, a PUT of a whole definition or state, a
DELETE). Lines of the answer's head are bounded, and so are their number.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

# What a request may raise when the server cannot be reached or speaks no HTTP.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
# Raised by http.client when a reused connection turns out closed by the server.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class PoolTimeout(TimeoutError):
    """No connection became free in time."""


@dataclass(frozen=True)
class Answer:
    """A whole answer: status, headers (names in lower case), body."""

    status_code: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


MAX_LINE = 64 * 1024
MAX_HEADERS = 100


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Wire:
    """One kept-alive connection: its socket and a buffered reader over it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        for closable in (self.reader, self.sock):
            try:
                closable.close()
            except OSError:
                pass


class ConnectionPool:
    def __init__(self, *, host: str = "", port: int = 0, socket_path: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 8,
                 timeout: float = 10.0) -> None:
        self._host, self._port, self._socket_path, self._ssl = host, port, socket_path, ssl_context
        self._host_header = "localhost" if socket_path else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.timeout = timeout
        self._idle: list[_Wire] = []
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Answer:
        """One exchange; raises OSError (ConnectionError, TimeoutError...) or
        http.client.HTTPException when the server cannot be reached or answers no HTTP."""
        timeout = self.timeout if timeout is None else timeout
        if not self._slots.acquire(timeout=timeout):
            raise PoolTimeout(f"no free connection within {timeout:g}s")
        try:
            message = self._message(method, target, body, headers or {})
            wire, reused = self._take(timeout)
            try:
                return self._exchange(wire, method, message, timeout)
            except _STALE:
                if not reused:
                    raise
            wire = self._connect(timeout)  # the server had closed the reused one
            return self._exchange(wire, method, message, timeout)
        finally:
            self._slots.release()

    def open(self, timeout: float | None) -> http.client.HTTPConnection:
        """An http.client connection of the caller's own, outside the pool (a stream that stays open)."""
        if self._socket_path:
            return _UnixConnection(self._socket_path, timeout)
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for wire in idle:
            wire.close()

    def _message(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        if any(c in "\r\n\0" for c in target) or any(c in "\r\n\0" for c in "".join(headers.values())):
            raise ValueError("a control character in a request line or header")  # never sent as a header break
        return head.encode("latin-1") + (body or b"")

    def _exchange(self, wire: _Wire, method: str, message: bytes, timeout: float) -> Answer:
        try:
            wire.sock.settimeout(timeout)
            wire.sock.sendall(message)
            status, headers, will_close = _read_head(wire.reader)
            data, will_close = _read_body(wire.reader, method, status, headers, will_close)
        except BaseException:
            wire.close()
            raise
        if will_close:
            wire.close()
        else:
            self._give_back(wire)
        return Answer(status, headers, data)

    def _take(self, timeout: float) -> tuple[_Wire, bool]:
        while True:
            with self._lock:
                wire = self._idle.pop() if self._idle else None
            if wire is None:
                return self._connect(timeout), False
            if _usable(wire.sock):
                return wire, True
            wire.close()

    def _connect(self, timeout: float) -> _Wire:
        if self._socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self._socket_path)
            except BaseException:
                sock.close()
                raise
            return _Wire(sock)
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return _Wire(sock)

    def _give_back(self, wire: _Wire) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(wire)
                return
        wire.close()


def _line(reader: Any) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("answer line")
    return line


def _read_head(reader: Any) -> tuple[int, dict[str, str], bool]:
    """(status, headers with lower-case names, whether the server closes after)."""
    while True:
        line = _line(reader)
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection without answering")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise http.client.BadStatusLine(line[:100].decode("latin-1", "replace"))
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = _line(reader)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise http.client.HTTPException(f"more than {MAX_HEADERS} headers")
        status = int(code)
        if status >= 200 or status == 101:
            connection = headers.get("connection", "").lower()
            return status, headers, "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)


def _read_body(reader: Any, method: str, status: int, headers: dict[str, str], will_close: bool) -> tuple[bytes, bool]:
    if method == "HEAD" or status in (204, 304) or status < 200:
        return b"", will_close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = _line(reader).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while _line(reader) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts), will_close
            parts.append(_exactly(reader, size))
            _line(reader)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise http.client.HTTPException(f"bad Content-Length {length[:20]!r}")
        return _exactly(reader, int(length)), will_close
    return reader.read(), True  # delimited by the connection's end


def _exactly(reader: Any, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _usable(sock: socket.socket) -> bool:
    """An idle connection is usable while the server sent nothing on it (a readable
    idle socket means it was closed, or holds bytes nobody asked for)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
