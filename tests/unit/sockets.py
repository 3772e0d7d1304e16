"""Socket helpers the unit tests' stub servers and clients share."""

from __future__ import annotations

import socket
from typing import Any


def read_head(conn: socket.socket) -> bytes:
    """What a client sent up to the end of its request's headers (or until it closed)."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = conn.recv(65536)
        if not data:
            break
        request += data
    return request


def read_all(conn: socket.socket) -> bytes:
    """Everything the other side sends until it closes."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


def ask_as(server: Any, source: str, timeout: float) -> bytes:
    """/health as a client at `source` sees it: a connected pair handed to the status
    server as if accepted from there (no such address needs to exist on this machine)."""
    ours, theirs = socket.socketpair()
    with ours:
        ours.settimeout(timeout)
        server.server.process_request(theirs, (source, 40000))
        ours.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        return read_all(ours)
