"""The transport's per-call exchange as a general facility (the Docker-specific
parts are tested through docker/connection.py in test_container_io.py): a
connection of its own over TCP or a unix socket, the request sent whole with
the address's Host, errors naming the peer the caller names, a deadline that
a stream lifts once its head came, and a bounded whole-body read."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consul_reg.transport.exchange import BrokenExchange, Exchange, Timeout, Unreachable
from consul_reg.transport.wire import Address
from tests.unit.sockets import read_head

Behave = Callable[[socket.socket, bytes], None]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., tuple[Address, list[bytes]]]]:
    """A scripted server, TCP on loopback or a unix socket: each connection's request
    is recorded, then `behave(conn, request)` answers it."""
    listeners: list[socket.socket] = []

    def start(behave: Behave, unix: bool = False) -> tuple[Address, list[bytes]]:
        if unix:
            path = str(tmp_path / f"s{len(listeners)}.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            address = Address(unix_path=path)
        else:
            listener = socket.create_server(("127.0.0.1", 0))
            address = Address(host="127.0.0.1", port=listener.getsockname()[1])
        listener.listen(8)
        listeners.append(listener)
        requests: list[bytes] = []

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    request = read_head(conn)
                    requests.append(request)
                    try:
                        behave(conn, request)
                    except OSError:
                        pass
        threading.Thread(target=accept, daemon=True).start()
        return address, requests
    yield start
    for listener in listeners:
        listener.close()


def ok(body: bytes) -> Behave:
    return lambda conn, request: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("unix", [False, True])
def test_a_request_is_sent_whole_on_a_connection_of_its_own(server, unix: bool) -> None:
    address, requests = server(ok(b'{"a": 1}'), unix=unix)
    with Exchange(address, "POST", "/v3/kv/range", time.monotonic() + 5, b'{"key": "eA=="}',
                  [("Content-Type", "application/json")], peer="etcd") as exchange:
        assert exchange.status == 200 and exchange.headers["content-length"] == "8"
        assert exchange.read_json() == {"a": 1}
    head = requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /v3/kv/range HTTP/1.1"
    assert f"Host: {address.host_header}".encode() in head and b"Connection: close" in head
    assert b"Content-Length: 15" in head and b"Content-Type: application/json" in head
    assert address.host_header == ("localhost" if unix else f"127.0.0.1:{address.port}")


def test_errors_name_the_peer_the_caller_names(server, tmp_path: Path) -> None:
    address, _ = server(lambda conn, request: conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n"))
    with pytest.raises(Unreachable, match="^no answer from etcd 127.0.0.1: bad HTTP"):
        Exchange(address, "GET", "/", time.monotonic() + 5, peer="etcd 127.0.0.1")
    cut, _ = server(lambda conn, request: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"))
    with Exchange(cut, "GET", "/", time.monotonic() + 5) as exchange, \
            pytest.raises(BrokenExchange, match="^bad HTTP from the server: "):
        exchange.read_all(100)
    with pytest.raises(Unreachable, match=f"^cannot connect to unix://{tmp_path}/none.sock: "):
        Exchange(Address(unix_path=str(tmp_path / "none.sock")), "GET", "/", time.monotonic() + 5)


def test_a_stream_lifts_its_deadline_once_the_head_came(server) -> None:
    """The head within the deadline; then a quiet stream waits past it, as an event stream must."""
    def quiet_then_one_event(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.8)
        conn.sendall(b"3\r\nend\r\n0\r\n\r\n")

    address, _ = server(quiet_then_one_event)
    with Exchange(address, "GET", "/events", time.monotonic() + 0.4) as exchange:
        exchange.deadline = math.inf
        assert exchange.remaining() is None
        assert exchange.read_all(100) == b"end"
    with Exchange(address, "GET", "/events", time.monotonic() + 0.4) as exchange, pytest.raises(Timeout):
        exchange.read_all(100)  # not lifted: it times out


def test_a_whole_body_is_read_up_to_its_bound(server) -> None:
    address, _ = server(ok(b"x" * 1000))
    with Exchange(address, "GET", "/", time.monotonic() + 5) as exchange, \
            pytest.raises(BrokenExchange, match="answer longer than 999 bytes"):
        exchange.read_all(999)
    with Exchange(address, "GET", "/", time.monotonic() + 5) as exchange:
        assert exchange.read_all(1000) == b"x" * 1000


def test_a_passed_deadline_sends_nothing(server) -> None:
    address, requests = server(ok(b""))
    with pytest.raises(Timeout):
        Exchange(address, "GET", "/", time.monotonic() - 1)
    time.sleep(0.1)
    assert requests == []
