"""The status endpoint's bounds and its log lines (a real StatusServer on a
loopback port)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from consul_reg.core.liveness import Liveness
from consul_reg.app.metrics import Metrics
from consul_reg.core.snapshot import Snapshot
from loguru import logger

from consul_reg.app.status import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT, MAX_HEADERS, MAX_REQUEST_BYTES, \
    REQUEST_TIMEOUT_SECONDS, StatusServer, StatusSources
from tests.unit.sockets import ask_as, read_all

ROOT = Path(__file__).resolve().parents[2]


def _server() -> StatusServer:
    up = Liveness("x")
    up.ok()
    server = StatusServer("127.0.0.1:0", StatusSources(snapshot=lambda: Snapshot(), docker=up, agent=up,
                                                       mirrors=lambda: {}, metrics=Metrics(), hostname="h1"))
    server.start()
    return server


def _health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as client:
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        return client.recv(64)


def _dribble(client: socket.socket, byte: bytes) -> bool:
    """Send one more byte; False once the server has dropped this client."""
    try:
        client.sendall(byte)
        return True
    except OSError:
        return False


def test_clients_that_dribble_a_request_cannot_hold_health_for_ever() -> None:
    """README "Security model": "The status endpoint drops a client after 5 s without a
    request and serves at most 16 connections at once". The 5 s are for the whole
    request, not per read: 16 clients sending one byte every 2 s (never a whole request
    line) are dropped, and /health (what systemd or an orchestrator probes) answers."""
    server = _server()
    port = server.server.server_address[1]
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        started = time.monotonic()
        answers = []
        still_sending = len(slow)
        while time.monotonic() - started < 3 * REQUEST_TIMEOUT_SECONDS:
            still_sending = sum(_dribble(client, b"G" if not answers else b"E") for client in slow)
            time.sleep(2.0)
            answers.append(_health(port))
        assert answers[-1].startswith(b"HTTP/1.1 200"), (
            f"/health refused for {time.monotonic() - started:.0f}s by {MAX_CONNECTIONS} dribbling clients: {answers}")
        assert still_sending == 0, f"{still_sending} dribbling clients still connected after 15s"
    finally:
        for client in slow:
            client.close()
        server.stop()


def test_a_kept_alive_client_is_served_past_the_request_deadline(monkeypatch) -> None:
    """The deadline is per request: a client that keeps one connection and asks /health
    again and again (a monitor, a deploy script) is answered for longer than
    REQUEST_TIMEOUT_SECONDS, on the same connection and slot, never dropped mid-stream."""
    import http.client
    import consul_reg.app.status as status
    monkeypatch.setattr(status, "REQUEST_TIMEOUT_SECONDS", 0.5)
    server = _server()
    port = server.server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        started = time.monotonic()
        codes, sockets = [], []
        while time.monotonic() - started < 4 * status.REQUEST_TIMEOUT_SECONDS:
            connection.request("GET", "/health")
            if not sockets or sockets[-1] is not connection.sock:  # http.client re-opens a closed one
                sockets.append(connection.sock)
            response = connection.getresponse()
            response.read()
            codes.append(response.status)
        assert len(codes) > 1 and set(codes) == {200}, codes
        assert len(sockets) == 1, f"the connection was dropped and re-opened {len(sockets) - 1} times"
    finally:
        connection.close()
        server.stop()


def _ask(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """The whole answer to `request` (b"" when the server closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_SECONDS + 5,
                                  source_address=(source, 0)) as client:
        try:
            client.sendall(request)
        except OSError:  # it stopped reading, and answered or closed
            pass
        return read_all(client)


def _ask_as(server: StatusServer, source: str) -> bytes:
    return ask_as(server, source, REQUEST_TIMEOUT_SECONDS + 5)


def test_one_client_address_holds_at_most_its_share_of_the_slots() -> None:
    """Every slot held by one address's idle connections left /health to nobody else."""
    server = _server()
    port = server.server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        assert _ask_as(server, "192.0.2.7").startswith(b"HTTP/1.1 200")
        refused = 0
        for client in idle[MAX_CONNECTIONS_PER_CLIENT:]:  # over its share: told and closed at once, not at the deadline
            client.settimeout(1)
            answer = read_all(client)
            refused += answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
        assert refused == MAX_CONNECTIONS - MAX_CONNECTIONS_PER_CLIENT
        assert _ask_as(server, "192.0.2.8").startswith(b"HTTP/1.1 200")
    finally:
        for client in idle:
            client.close()
        server.stop()


def test_a_request_is_bounded_in_header_lines_and_bytes() -> None:
    server = _server()
    port = server.server.server_address[1]
    try:
        def headers(count: int, size: int = 8) -> bytes:
            return b"".join(b"X-%d: %s\r\n" % (n, b"v" * size) for n in range(count))
        assert _ask(port, b"GET /health HTTP/1.0\r\n" + headers(MAX_HEADERS) + b"\r\n").startswith(b"HTTP/1.1 200")
        for request in (b"GET /health HTTP/1.0\r\n" + headers(MAX_HEADERS + 1) + b"\r\n",
                        b"GET /health HTTP/1.0\r\n" + headers(1, MAX_REQUEST_BYTES) + b"\r\n",
                        b"GET /health HTTP/1.0\r\n" + headers(4, 64 * 1024) + b"\r\n",  # under http.server's line cap
                        b"GET /" + b"a" * (2 * MAX_REQUEST_BYTES) + b" HTTP/1.0\r\n\r\n"):
            started = time.monotonic()
            assert _ask(port, request).startswith(b"HTTP/1.1 431"), request[:60]
            assert time.monotonic() - started < REQUEST_TIMEOUT_SECONDS  # refused at once, not dropped at the deadline
    finally:
        server.stop()


def test_the_request_line_is_never_logged_raw() -> None:
    logged: list[str] = []
    handler = logger.add(lambda message: logged.append(str(message)), level="TRACE")
    server = _server()
    port = server.server.server_address[1]
    try:
        assert _ask(port, b"GET /\x1b]0;owned\x07\x1b[2J HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404")
        assert b"Error code explanation: 400" in _ask(port, b"\x1b[2J\x08\x08 HTTP/1.0\r\n\r\n")  # as HTTP/0.9
    finally:
        server.stop()
        logger.remove(handler)
    status = [line for line in logged if "status: " in line]
    assert any("GET /\\x1b]0;owned\\x07\\x1b[2J HTTP/1.0" in line for line in status), status
    assert not [line for line in status if "\x1b" in line or "\x07" in line or "\x08" in line]


SCRIPT = textwrap.dedent("""
    import socket, struct, time
    from consul_reg.app import logs
    from consul_reg.core.liveness import Liveness
    from consul_reg.app.metrics import Metrics
    from consul_reg.core.snapshot import Snapshot
    from consul_reg.app.status import StatusServer, StatusSources
    logs.setup("INFO", "json")
    up = Liveness("x"); up.ok()
    server = StatusServer("127.0.0.1:0", StatusSources(snapshot=lambda: Snapshot(), docker=up, agent=up,
                          mirrors=lambda: {}, metrics=Metrics(), hostname="h1"))
    server.start()
    port = server.server.server_address[1]
    for _ in range(3):  # a scraper that gives up (its timeout), or anyone who resets the connection
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sendall(b"GET /metrics HTTP/1.0\\r\\n\\r\\n")
        client.close()
    time.sleep(1.0)
    server.stop()
""")


def test_with_log_format_json_a_reset_status_client_never_writes_a_non_json_line() -> None:
    """README: `--log-format json`: one JSON object per line, every line scrubbed of the
    token. A client that resets its connection makes socketserver's handle_error print
    a multi-line traceback straight to stderr: not JSON, not through loguru's redaction,
    ~25 lines per reset (a log flood for anyone who can reach the port)."""
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines, run.stderr
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, f"{len(not_json)} of {len(lines)} lines are not JSON, e.g. {not_json[:3]}"


THREAD_SCRIPT = textwrap.dedent("""
    import threading
    from consul_reg.app import logs
    logs.setup("INFO", "json")
    def boom():
        raise RuntimeError("a bug in a thread")
    thread = threading.Thread(target=boom, name="worker")
    thread.start()
    thread.join()
""")


def test_with_log_format_json_a_thread_that_dies_writes_one_json_line() -> None:
    run = subprocess.run([sys.executable, "-c", THREAD_SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    record = json.loads(lines[0])["record"]
    assert "thread worker ended" in record["message"] and "a bug in a thread" in str(record["exception"])
