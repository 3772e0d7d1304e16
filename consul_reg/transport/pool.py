"""Keep-alive HTTP/1.1 connections to one server (TCP, verified TLS or a unix
socket), shared by threads; h11 frames every exchange (`wire`). A call that
streams, or must not wait for a pooled connection, is an `exchange` instead.

The hot paths (the agent's register / deregister / TTL updates, Docker's
inspect) are one small request and one small answer each: a kept-alive
connection spares a connect per call, and httpx's own stack cost 3-5 times
the CPU per call here (BENCHMARKS.md). At most `max_connections` requests are
in flight; a caller waits for a free connection up to its timeout, and the
whole exchange has that timeout as its deadline. An idle connection the
server closed is noticed before reuse, and a request that fails on a reused
connection before any answer came is sent once more on a new one (every
request made through this pool is idempotent: GET, a PUT of a whole
definition or state, a DELETE). An answer's body is refused past the
request's `max_body` (the pool's by default), without reading further.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from consul_reg.transport.wire import MAX_HEADERS, Address, BodyTooLarge, ProtocolError, RemoteDisconnected, Wire

__all__ = ["Answer", "BodyTooLarge", "ConnectionPool", "DEFAULT_MAX_BODY", "MAX_HEADERS", "Pending", "PoolBusy",
           "PoolTimeout", "ProtocolError", "TRANSPORT_ERRORS"]

# What a request may raise when the server cannot be reached or speaks no HTTP
# (h11's RemoteProtocolError arrives as ProtocolError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, ProtocolError)
# A reused connection the server had closed: nothing of the answer came.
_STALE = (RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# Docker's inspect of a container with labels and env at Docker's own limits, the
# agent's services with 1,000 services: far below (BENCHMARKS.md).
DEFAULT_MAX_BODY = 64 * 1024 * 1024


class PoolTimeout(TimeoutError):
    """No connection became free in time."""


class PoolBusy(PoolTimeout):
    """Every connection is in use, or a new one was not made within NO_WAIT_CONNECT_SECONDS,
    and the caller would not wait (`begin(wait=False)`)."""


# What `begin(wait=False)` gives a new connection (and its TLS handshake): its caller (Docker's
# event thread) must never be held for a whole timeout by a server that accepts but never
# answers; a server that slow is busy to such a caller, not gone (the other calls find out).
NO_WAIT_CONNECT_SECONDS = 0.05
# A cancelled request whose answer has begun to come: read for at most this long, so that its
# connection is kept (a start that registers nothing drops its read of the agent, answered).
# What has come is read at once; the caller (the loop, Docker's event thread) never waits
# longer than this for the rest.
CANCEL_READ_SECONDS = 0.002


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


class ConnectionPool:
    def __init__(self, *, host: str = "", port: int = 0, socket_path: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 8,
                 timeout: float = 10.0, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.address = Address(unix_path=socket_path or "", host=host, port=port, ssl_context=ssl_context)
        self._host_header = self.address.host_header
        self.description = self.address.description
        self.timeout = timeout
        self.max_body = max_body
        self._idle: list[Wire] = []
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None,
                max_body: int | None = None) -> Answer:
        """One exchange within `timeout`; raises one of TRANSPORT_ERRORS when the server cannot
        be reached, answers no HTTP or a body over `max_body` (BodyTooLarge), ValueError for a
        target or header that cannot be sent."""
        timeout = self.timeout if timeout is None else timeout
        deadline = self._claim_slot(timeout)
        try:
            fields = self._fields(headers)
            if body is not None or method in ("PUT", "POST"):
                fields.append(("Content-Length", str(len(body or b""))))
            limit = self.max_body if max_body is None else max_body
            wire, reused = self._take(max(deadline - time.monotonic(), 0.001))
            try:
                return self._exchange(wire, deadline, method, target, fields, body or b"", limit)
            except _STALE:
                if not reused:
                    raise
            wire = self._connect(max(deadline - time.monotonic(), 0.001))  # the server had closed the reused one
            return self._exchange(wire, deadline, method, target, fields, body or b"", limit)
        finally:
            self._slots.release()

    def begin(self, method: str, target: str, headers: dict[str, str] | None = None,
              timeout: float | None = None, max_body: int | None = None, wait: bool = True) -> Pending:
        """A bodiless request sent now, on a connection it keeps, whose answer the caller
        reads later (`Pending.answer`) or never (`Pending.cancel`): the caller's thread goes
        on meanwhile, with no thread of ours in between. Raises as `request` does; with
        `wait=False`, PoolBusy at once when every connection is in use."""
        timeout = self.timeout if timeout is None else timeout
        deadline = self._claim_slot(timeout, wait)

        def connect_within() -> float:
            left = max(deadline - time.monotonic(), 0.001)
            return left if wait else min(left, NO_WAIT_CONNECT_SECONDS)
        try:
            fields = self._fields(headers)
            wire, reused = self._take(connect_within())
            try:
                wire.deadline = deadline
                wire.send_request(method, target, fields)
            except BaseException as error:
                wire.close()
                if not (reused and isinstance(error, _STALE)):
                    raise
                wire, reused = self._connect(connect_within()), False
                wire.deadline = deadline
                try:
                    wire.send_request(method, target, fields)
                except BaseException:
                    wire.close()
                    raise
        except TimeoutError as error:
            self._slots.release()
            if wait or isinstance(error, PoolTimeout):
                raise
            raise PoolBusy(f"no new connection to {self.description} within {NO_WAIT_CONNECT_SECONDS:g}s") \
                from None
        except BaseException:
            self._slots.release()
            raise
        # Its answer gets what is left of `timeout` once sent: the wait for a connection (and
        # to connect) counts, as in `request`; the caller's own work until it reads does not.
        return Pending(self, wire, reused, method, target, fields, self.max_body if max_body is None else max_body,
                       max(deadline - time.monotonic(), 0.001))

    def _claim_slot(self, timeout: float, wait: bool = True) -> float:
        """A slot for one request (PoolTimeout when none frees within `timeout`); its deadline."""
        deadline = time.monotonic() + timeout
        if not wait:
            if not self._slots.acquire(blocking=False):
                raise PoolBusy(f"every connection to {self.description} is in use")
        elif not self._slots.acquire(timeout=timeout):
            raise PoolTimeout(f"no free connection to {self.description} within {timeout:g}s")
        return deadline

    def _fields(self, headers: dict[str, str] | None) -> list[tuple[str, str]]:
        return [("Host", self._host_header), *(headers or {}).items()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for wire in idle:
            wire.close()

    def _exchange(self, wire: Wire, deadline: float, method: str, target: str, fields: list[tuple[str, str]],
                  body: bytes, limit: int) -> Answer:
        try:
            wire.deadline = deadline
            wire.send_request(method, target, fields, body)
        except BaseException:
            wire.close()
            raise
        return self._finish(wire, method, target, limit)

    def _finish(self, wire: Wire, method: str, target: str, limit: int) -> Answer:
        """The answer of the request just sent on `wire` (within its deadline); the
        connection is kept for another request when both sides allow it."""
        try:
            status, headers = wire.read_head()
            data = wire.read_body(headers, limit, f"{method} {target[:200]} on {self.description}")
        except BaseException:
            wire.close()
            raise
        if wire.next_cycle():
            self._give_back(wire)
        else:
            wire.close()
        return Answer(status, headers, data)

    def _take(self, timeout: float) -> tuple[Wire, bool]:
        while True:
            with self._lock:
                wire = self._idle.pop() if self._idle else None
            if wire is None:
                return self._connect(timeout), False
            if _usable(wire.sock):
                return wire, True
            wire.close()

    def _connect(self, timeout: float | None) -> Wire:
        return self.address.connect(timeout)

    def _give_back(self, wire: Wire) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(wire)
                return
        wire.close()


class Pending:
    """A request of `ConnectionPool.begin`, sent; its connection and its slot in the pool
    are held until its answer is read or it is cancelled. One thread uses it."""

    def __init__(self, pool: ConnectionPool, wire: Wire, reused: bool, method: str, target: str,
                 fields: list[tuple[str, str]], limit: int, timeout: float) -> None:
        self._pool, self._wire, self._reused = pool, wire, reused
        self._request = (method, target, fields, limit)
        self._timeout = timeout
        self._done = False

    def answer(self) -> Answer:
        """The whole answer; the server gets from now what was left of the timeout when the
        request was sent (it has had the time since besides). Raises as `request` does."""
        if self._done:
            raise RuntimeError("this answer was already taken")
        self._done = True
        method, target, fields, limit = self._request
        deadline = time.monotonic() + self._timeout
        try:
            self._wire.deadline = deadline
            try:
                return self._pool._finish(self._wire, method, target, limit)
            except _STALE:
                if not self._reused:
                    raise
            # The server had closed the reused connection before the request came.
            wire = self._pool._connect(max(deadline - time.monotonic(), 0.001))
            return self._pool._exchange(wire, deadline, method, target, fields, b"", limit)
        finally:
            self._pool._slots.release()

    def cancel(self) -> None:
        """Not wanted. An answer that has come is read all the same (if whole within
        CANCEL_READ_SECONDS), so its kept-alive connection goes back to the pool; else the
        connection is closed (its answer may still be on its way)."""
        if self._done:
            return
        self._done = True
        try:
            if _usable(self._wire.sock):  # nothing came yet
                self._wire.close()
                return
            method, target, _, limit = self._request
            self._wire.deadline = time.monotonic() + CANCEL_READ_SECONDS
            try:
                self._pool._finish(self._wire, method, target, limit)  # closes the wire when it cannot
            except Exception:  # nobody wants this answer: a failure only costs its connection
                pass
        finally:
            self._pool._slots.release()


def _usable(sock: socket.socket) -> bool:
    """An idle connection is usable while the server sent nothing on it (a readable
    idle socket means it was closed, or holds bytes nobody asked for)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
