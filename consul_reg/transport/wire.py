"""One HTTP/1.1 connection of ours: a socket we read and write ourselves, and
h11 (its public API) for the framing. The one HTTP implementation under every
client: the kept-alive pool of the hot paths (`pool`) and the per-call
exchange of streamed calls (`exchange`) both run on it.

Every recv takes at most `RECV_BYTES` and gets the time left before the
wire's deadline as its timeout (no deadline: it waits, as an event stream
must). h11 holds at most `MAX_HEAD_BYTES` of an unfinished status line and
headers (so a head is under twice that: one recv more); a body is read piece by
piece, and `read_body` refuses one longer than its limit as soon as its
Content-Length says so or its bytes pass it.

Errors: OSError (TimeoutError past the deadline, RemoteDisconnected when the
server closed the connection before a byte of the answer came) and
ProtocolError (h11 found no HTTP, or the connection ended mid-answer);
BodyTooLarge is a ProtocolError. Our own classes: importing http.client for
them alone cost 1.4 MB of idle RSS (it loads the email package).
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import h11

RECV_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # status line + headers; Docker's and Consul's are < 1 KiB
MAX_HEADERS = 100


class ProtocolError(Exception):
    """The answer is not HTTP, or the connection ended in the middle of it."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection before a byte of the answer came (a kept-alive
    connection it had dropped: the pool sends the request again on a new one)."""


class BodyTooLarge(ProtocolError):
    """The answer's body is longer than the caller's limit (nothing past it was read)."""


def connect(*, unix_path: str | None, host: str, port: int, ssl_context: ssl.SSLContext | None,
            timeout: float | None) -> socket.socket:
    """A connected socket: the unix socket, else TCP (no Nagle), wrapped in TLS when
    a context is given (its own verification settings)."""
    if unix_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(unix_path)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Address:
    """Where a server listens: a unix socket, else host:port over TCP (TLS when a context is given)."""

    unix_path: str = ""
    host: str = ""
    port: int = 0
    ssl_context: ssl.SSLContext | None = None

    @property
    def host_header(self) -> str:
        if self.unix_path:
            return "localhost"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def description(self) -> str:
        if self.unix_path:
            return f"unix://{self.unix_path}"
        return f"{'https' if self.ssl_context else 'http'}://{self.host_header}"

    def connect(self, timeout: float | None) -> Wire:
        """A new connection (OSError when it cannot be made within `timeout`)."""
        return Wire(connect(unix_path=self.unix_path or None, host=self.host, port=self.port,
                            ssl_context=self.ssl_context, timeout=timeout))


class Wire:
    """A socket and its h11 client state. Not thread-safe: one exchange at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = math.inf
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._answered = False  # a byte of the current answer came
        self._ended = False  # the current answer's EndOfMessage came
        self._eof = False

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline); TimeoutError once it passed."""
        if self.deadline == math.inf:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        return left

    def send_request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """The whole request in one write. ValueError, before anything is sent, for a target
        or header h11 refuses (a control character never becomes a header break)."""
        try:
            data = self._conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += self._conn.send(h11.Data(data=body))
            data += self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as error:
            raise ValueError(f"refusing to send {method} {target[:100]!r}: {error}") from None
        self._answered = self._ended = False
        self.sock.settimeout(self.remaining())
        self.sock.sendall(data)

    def read_head(self) -> tuple[int, dict[str, str]]:
        """The final answer's status and headers (names in lower case)."""
        while True:
            event = self._next_event(RECV_BYTES)
            if isinstance(event, h11.Response):
                if len(event.headers) > MAX_HEADERS:
                    raise ProtocolError(f"more than {MAX_HEADERS} headers")
                return event.status_code, {name.decode("latin-1"): value.decode("latin-1")
                                           for name, value in event.headers}
            if not isinstance(event, h11.InformationalResponse):
                raise ProtocolError(f"unexpected {type(event).__name__} before the answer")

    def read_some(self, max_bytes: int = RECV_BYTES) -> bytes:
        """The next piece of the body, b"" at its end. At most `max_bytes` more are taken
        from the socket (plus what the framing already buffered)."""
        while not self._ended:
            event = self._next_event(max(1, min(max_bytes, RECV_BYTES)))
            if isinstance(event, h11.Data):
                return bytes(event.data)
            self._ended = isinstance(event, h11.EndOfMessage)
        return b""

    def read_body(self, headers: dict[str, str], limit: int, what: str) -> bytes:
        """The whole body, refused (BodyTooLarge naming `what` and the limit) when its
        Content-Length or its bytes pass `limit`."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise BodyTooLarge(f"{what}: the answer's body ({int(length)} bytes) is over the limit of "
                               f"{_size(limit)}")
        parts, size = [], 0
        while piece := self.read_some(min(RECV_BYTES, limit - size + 1)):
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(f"{what}: the answer's body is over the limit of {_size(limit)}")
            parts.append(piece)
        return b"".join(parts)

    def next_cycle(self) -> bool:
        """Ready for another request on this connection (both sides done, neither closes)."""
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _next_event(self, max_bytes: int) -> Any:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as error:
                raise ProtocolError(f"bad HTTP: {error}") from None
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise ProtocolError("the connection closed before the answer ended")
                return event
            if self._eof:
                raise ProtocolError("the connection closed before the answer ended")
            self.sock.settimeout(self.remaining())
            data = self.sock.recv(max_bytes)
            if not data and not self._answered:
                raise RemoteDisconnected("the server closed the connection without answering")
            self._answered, self._eof = True, not data
            try:
                self._conn.receive_data(data)
            except RuntimeError as error:  # h11 refuses data after the close it was told of
                raise ProtocolError(str(error)) from None


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
