"""Keep-alive HTTP/1.1 connections to one server (TCP, verified TLS or a unix
socket), on the standard library's http.client, shared by threads.

The hot paths (the agent's register / deregister / TTL updates, Docker's
inspect) are one small request and one small answer each: through httpx and
httpcore a call cost ~0.8 ms of CPU here, through http.client ~0.3 ms
(BENCHMARKS.md). At most `max_connections` requests are in flight; a
caller waits for a free connection up to its timeout. An idle connection the
server closed is noticed before reuse, and a request that fails on a reused
connection before any answer came is sent once more on a new one (every
request made through this pool is idempotent: GET, a PUT of a whole
definition or state, a DELETE).
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
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


class ConnectionPool:
    def __init__(self, *, host: str = "", port: int = 0, socket_path: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 8,
                 timeout: float = 10.0) -> None:
        self._host, self._port, self._socket_path, self._ssl = host, port, socket_path, ssl_context
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
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
            connection, reused = self._take(timeout)
            try:
                return self._exchange(connection, method, target, body, headers, timeout)
            except _STALE:
                connection.close()
                if not reused:
                    raise
            connection = self._new(timeout)  # the server had closed the reused one
            try:
                return self._exchange(connection, method, target, body, headers, timeout)
            except BaseException:
                connection.close()
                raise
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _exchange(self, connection: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
                  headers: dict[str, str] | None, timeout: float) -> Answer:
        try:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        except _STALE:
            raise
        except BaseException:
            connection.close()
            raise
        answer = Answer(response.status, {name.lower(): value for name, value in response.getheaders()}, data)
        if response.will_close:
            connection.close()
        else:
            self._give_back(connection)
        return answer

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._new(timeout), False
            if _usable(connection):
                return connection, True
            connection.close()

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        if self._socket_path:
            return _UnixConnection(self._socket_path, timeout)
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()


def _usable(connection: http.client.HTTPConnection) -> bool:
    """An idle connection is usable while the server sent nothing on it (a readable
    idle socket means it was closed, or holds bytes nobody asked for)."""
    sock = connection.sock
    if sock is None:
        return True  # never connected: connects on first use
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
