"""One HTTP/1.1 exchange with dockerd on a socket of its own, under a wall-clock deadline.

Used for the calls that stream what a container controls (a file's archive,
an exec's output) and for the event stream. docker-py cannot bound those: it
switches the socket timeout off for streams and parses headers through a
buffered reader that may swallow the first bytes of a hijacked exec stream.
The exchange itself is the transport's (`transport.exchange`: every recv gets
the time left before the deadline as its timeout); this module adds what is
Docker's: the API version in every path, JSON bodies, and dockerd's
{"message": ...} errors.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from consul_reg.docker.host import Endpoint, endpoint_from
from consul_reg.transport import exchange as transport_exchange
from consul_reg.transport.exchange import (
    MAX_JSON_BYTES,
    BrokenExchange,
    Timeout,
    Unreachable,
    deadline_after,
    describe,
)
from consul_reg.transport.wire import RECV_BYTES

# What the Docker client, file reads and execs use, in one place (the exchange's errors are the transport's).
__all__ = ["MAX_JSON_BYTES", "RECV_BYTES", "BrokenExchange", "Endpoint", "Exchange", "Timeout", "Unreachable",
           "deadline_after", "describe", "endpoint_from", "url"]


def url(endpoint: Endpoint, path: str, *segments: str, query: Mapping[str, str] | None = None) -> str:
    """`path` with `{}` filled by percent-encoded segments (never a `/` or `..` of theirs)."""
    target = f"/v{endpoint.api_version}" + path.format(*(urllib.parse.quote(s, safe="") for s in segments))
    return target + ("?" + urllib.parse.urlencode(query) if query else "")


class Exchange(transport_exchange.Exchange):
    """One request to dockerd (`body` sent as JSON) and its streamed answer."""

    def __init__(self, endpoint: Endpoint, method: str, target: str, deadline: float,
                 body: Any = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        if endpoint.unsupported:
            raise Unreachable(endpoint.unsupported)
        fields = [("Host", "docker"), *headers]
        if body is not None:
            fields.append(("Content-Type", "application/json"))
        payload = b"" if body is None else json.dumps(body).encode()
        super().__init__(endpoint.address, method, target, deadline, payload, fields, peer="dockerd")

    def error_message(self) -> str:
        """dockerd's {"message": ...} of a failed call, else the status."""
        try:
            body = self.read_json(limit=64 * 1024)
            message = body.get("message") if isinstance(body, dict) else None
        except (BrokenExchange, Timeout, OSError):
            message = None
        return f"{self.status} {message}" if isinstance(message, str) else f"HTTP {self.status}"
