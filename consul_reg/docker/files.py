"""Reading one small regular file out of a container through Docker's archive API.

The path and the file are the container's: the path may name a directory
holding a sparse terabyte, a fifo, a symlink, or a file rewritten while
dockerd tars it. So: the kind is decided from the stat header before any
of the body is read, the size is checked twice (stat, then tar header),
at most the limit plus a few header blocks are taken from the stream, the
whole read has one wall-clock deadline, and every failure after the
answer's head is one FileUnreadable naming the path and the reason.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol

from consul_reg.core.text import printable
from consul_reg.docker import connection as docker_http
from consul_reg.docker.connection import Endpoint

BLOCK = 512
# Besides the file's own blocks, the stream may hold its tar header and a PAX
# header with its data (long or non-ASCII name, security.capability xattr).
HEADER_ALLOWANCE = 8 * BLOCK

# Go's os.FileMode type bits, as dockerd encodes "mode" in X-Docker-Container-Path-Stat.
_GO_MODE_KINDS = (
    (1 << 31, "directory"),
    (1 << 27, "symbolic link"),
    (1 << 25, "named pipe (fifo)"),
    (1 << 24, "socket"),
    (1 << 21, "character device"),
    (1 << 26, "device"),
    (1 << 19, "irregular file"),
)


class FileUnreadable(ValueError):
    """The path exists but is not a regular file of at most the limit that could be read in time.
    A ValueError, as read_file's callers caught before it had a type of its own."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{printable(path) or repr(path)} {reason}")


def file_kind(mode: object) -> str:
    """'regular file', or what else a Go FileMode says the path is."""
    if not isinstance(mode, int) or isinstance(mode, bool) or mode < 0:
        return "path of unknown kind"
    for bit, kind in _GO_MODE_KINDS:
        if mode & bit:
            return kind
    return "regular file"


def decode_stat(header: str | None) -> dict[str, Any]:
    """X-Docker-Container-Path-Stat (base64 of a JSON object), or {} when absent or undecodable."""
    if not header:
        return {}
    try:
        decoded = json.loads(base64.b64decode(header + "=" * (-len(header) % 4), validate=False))
    except (binascii.Error, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def read_file(endpoint: Endpoint, container_id: str, path: str, limit_bytes: int,
              timeout_seconds: float) -> str | None:
    """The file's text (UTF-8, undecodable bytes replaced); None when the container
    or the path does not exist (or the file vanished while dockerd archived it). Raises
    FileUnreadable for anything else about the file, docker_http.Unreachable when dockerd
    cannot be reached."""
    deadline = docker_http.deadline_after(timeout_seconds)
    target = docker_http.url(endpoint, "/containers/{}/archive", container_id, query={"path": path})
    try:
        exchange = docker_http.Exchange(endpoint, "GET", target, deadline,
                                        headers=(("Accept-Encoding", "identity"),))
    except docker_http.Timeout:
        raise FileUnreadable(path, f"was not read: Docker did not answer within {timeout_seconds:g}s") from None
    with exchange:
        if exchange.status == 404:
            return None
        return read_archive(exchange, path, limit_bytes, timeout_seconds)


def read_archive(exchange: _Body, path: str, limit_bytes: int, timeout_seconds: float) -> str | None:
    """The file's text from an answer of the archive endpoint (any status but 404)."""
    if exchange.status != 200:
        raise FileUnreadable(path, f"could not be read: Docker answered {printable(exchange.error_message())}")
    stat = decode_stat(exchange.headers.get("x-docker-container-path-stat"))
    kind = file_kind(stat.get("mode"))
    if kind != "regular file":
        target_note = f" (to {printable(str(stat['linkTarget']))})" if stat.get("linkTarget") else ""
        raise FileUnreadable(path, f"is a {kind}{target_note}, not a regular file")
    size = stat.get("size")
    if isinstance(size, int) and size > limit_bytes:
        raise FileUnreadable(path, f"is {size} bytes, more than the limit of {limit_bytes}")
    try:
        data = _extract(exchange, path, limit_bytes)
    except FileUnreadable:
        raise
    except docker_http.Timeout:
        raise FileUnreadable(path, f"was not read within {timeout_seconds:g}s") from None
    except Exception as error:  # tar, HTTP framing, socket: the stream is the container's doing
        raise FileUnreadable(path, f"could not be read: the archive from Docker is broken or was cut off "
                                   f"({type(error).__name__}: {docker_http.describe(error)})") from None
    return None if data is None else data.decode("utf-8", "replace")


class _Body(Protocol):
    status: int
    headers: dict[str, str]

    def read_some(self, max_bytes: int = ...) -> bytes: ...

    def error_message(self) -> str: ...


def _extract(exchange: _Body, path: str, limit_bytes: int) -> bytes | None:
    import tarfile  # here: only a daemon that reads files out of containers pays its 0.4 MB

    data_blocks = -(-limit_bytes // BLOCK) * BLOCK
    reader = _BoundedReader(exchange, path, data_blocks + HEADER_ALLOWANCE)
    # "r|": a plain stream, no compression sniffing; bufsize one block so tarfile reads no further ahead.
    with tarfile.open(fileobj=reader, mode="r|", bufsize=BLOCK) as archive:  # type: ignore[call-overload]
        member = archive.next()
        if member is None:
            return None  # removed between dockerd's stat and its tar: as when the stat found nothing
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):  # not even GNU sparse: Docker never sends it
            raise FileUnreadable(path, "is not a regular file (it changed while being read)")
        if member.size > limit_bytes:
            raise FileUnreadable(path, f"is {member.size} bytes, more than the limit of {limit_bytes}")
        extracted = archive.extractfile(member)
        data = extracted.read(member.size) if extracted is not None else b""
    if len(data) != member.size:
        raise FileUnreadable(path, "could not be read: the archive was cut off")
    return data


class _BoundedReader:
    """A file-like view of the response body that hands out at most `allowance` bytes in all."""

    def __init__(self, exchange: _Body, path: str, allowance: int) -> None:
        self._exchange = exchange
        self._path = path
        self._left = allowance
        self._allowance = allowance
        self._pending = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._left + 1
        if self._offset >= len(self._pending):
            self._pending = self._exchange.read_some(min(docker_http.RECV_BYTES, self._left + BLOCK))
            self._offset = 0
        if size > 0 and self._offset < len(self._pending) and self._left <= 0:
            raise FileUnreadable(self._path, f"could not be read: the archive goes on past {self._allowance} bytes")
        end = self._offset + min(size, self._left)
        piece = self._pending[self._offset:end]
        self._offset += len(piece)
        self._left -= len(piece)
        return piece
