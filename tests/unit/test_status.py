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

from consul_reg.liveness import Liveness
from consul_reg.metrics import Metrics
from consul_reg.snapshot import Snapshot
from consul_reg.status import MAX_CONNECTIONS, REQUEST_TIMEOUT_SECONDS, StatusServer, StatusSources

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
        assert answers[-1].startswith(b"HTTP/1.0 200"), (
            f"/health refused for {time.monotonic() - started:.0f}s by {MAX_CONNECTIONS} dribbling clients: {answers}")
        assert still_sending == 0, f"{still_sending} dribbling clients still connected after 15s"
    finally:
        for client in slow:
            client.close()
        server.stop()


SCRIPT = textwrap.dedent("""
    import socket, struct, time
    from consul_reg import logs
    from consul_reg.liveness import Liveness
    from consul_reg.metrics import Metrics
    from consul_reg.snapshot import Snapshot
    from consul_reg.status import StatusServer, StatusSources
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
    from consul_reg import logs
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
