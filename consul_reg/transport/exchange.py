"""One HTTP/1.1 exchange on a connection of its own, under a wall-clock deadline.

For the calls that stream what the other side controls (an archive, an
exec's output, an event stream that stays open): every recv gets the time
left before the deadline as its timeout, h11 does the framing (chunked or
close-delimited) on bytes we read ourselves (`wire`), and each exchange has
its own connection (no pool: thread-safe by construction, and an abandoned
stream never leaks into the next request). A kept-alive call of the hot
paths goes through `pool` instead.

Errors, each naming the server (`peer`): Unreachable (no connection, or
dropped before the answer's head), Timeout (the deadline passed), and
BrokenExchange (the answer broke off or is not HTTP once it began).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Self

from consul_reg.core.text import printable
from consul_reg.transport.wire import RECV_BYTES, Address, ProtocolError, Wire

MAX_JSON_BYTES = 1024 * 1024  # a small JSON answer, an error body
MAX_SECONDS = 86400.0


class Unreachable(Exception):
    """The server could not be connected to, or dropped the connection before answering."""


class Timeout(Exception):
    """The deadline passed."""


class BrokenExchange(Exception):
    """The server broke off, or sent something that is not HTTP."""


def deadline_after(seconds: float) -> float:
    """time.monotonic() + seconds, with seconds made a sane number (NaN and negatives: 0; at most a day)."""
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        seconds = 0.0
    return time.monotonic() + min(max(float(seconds), 0.0), MAX_SECONDS)


class Exchange:
    """One request and its streamed answer: the request is sent and the answer's head
    read when this is made (`status`, `headers`, names in lower case); the body is
    the caller's to read. Use as a context manager; close() drops the connection.
    Without a Host among `headers`, the address's is sent."""

    def __init__(self, address: Address, method: str, target: str, deadline: float, body: bytes = b"",
                 headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (), peer: str = "the server") -> None:
        self.peer = peer
        self.status = 0
        self.headers: dict[str, str] = {}
        self._deadline = deadline
        self._wire: Wire | None = None
        fields = [] if any(name.lower() == "host" for name, _ in headers) else [("Host", address.host_header)]
        fields += [("Connection", "close"), *headers]
        if body or method in ("PUT", "POST"):
            fields.append(("Content-Length", str(len(body))))
        try:
            self._wire = address.connect(self.remaining())
        except OSError as error:  # refused, missing socket, TLS failure, connect timeout
            raise Unreachable(f"cannot connect to {address.description}: {describe(error)}") from None
        self._wire.deadline = deadline
        try:
            try:
                self._wire.send_request(method, target, fields, body)
            except TimeoutError:
                raise Timeout("the deadline passed while sending") from None
            except OSError as error:
                raise Unreachable(f"{peer} dropped the connection: {describe(error)}") from None
            try:
                self.status, self.headers = self._wire.read_head()
            except TimeoutError:
                raise Timeout("the deadline passed while reading") from None
            except (OSError, ProtocolError) as error:
                raise Unreachable(f"no answer from {peer}: {describe(error)}") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def deadline(self) -> float:
        """When the exchange gives up (time.monotonic(); math.inf: never, as a quiet stream must)."""
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = value
        if self._wire is not None:
            self._wire.deadline = value

    def remaining(self) -> float | None:
        """Seconds left (None: no deadline); Timeout once it passed."""
        if self._deadline == math.inf:
            return None
        left = self._deadline - time.monotonic()
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
        except ProtocolError as error:
            raise BrokenExchange(f"bad HTTP from {self.peer}: {error}") from None
        except OSError as error:
            raise BrokenExchange(f"connection failed: {describe(error)}") from None

    def read_all(self, limit: int) -> bytes:
        """The whole body (BrokenExchange as soon as it is longer than `limit`)."""
        data = bytearray()
        while piece := self.read_some(min(RECV_BYTES, limit - len(data) + 1)):
            data += piece
            if len(data) > limit:
                raise BrokenExchange(f"answer longer than {limit} bytes")
        return bytes(data)

    def read_json(self, limit: int = MAX_JSON_BYTES) -> Any:
        """The whole body as JSON (BrokenExchange if longer than `limit` or not JSON; an empty body is None)."""
        data = self.read_all(limit)
        try:
            return json.loads(data or b"null")
        except ValueError as error:
            raise BrokenExchange(f"answer is not JSON: {error}") from None

    def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()


def describe(error: BaseException) -> str:
    """An error for one log line: what the other side wrote in it shown escaped and cut."""
    return printable(str(error).strip() or type(error).__name__, 300, one_line=True)
