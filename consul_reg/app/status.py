"""--status-addr: /health, /metrics and /services, served from threads that
only read: the loop's last published Snapshot, and the live reachability of
Docker and the agent. Every connection has a deadline and their number is
capped, so a slow or hostile client cannot tie the daemon up: the whole
request must arrive within REQUEST_TIMEOUT_SECONDS of the connection, or of
the previous answer on a kept-alive connection (not per read: a client
dribbling a byte now and then is dropped all the same), and the answer must
be taken within as long again. One client holds at most
MAX_CONNECTIONS_PER_CLIENT of the slots (one over it is answered 503), a client being what one party can
hardly multiply: this host's loopback (all of 127.0.0.0/8 and ::1), an IPv6
/64, an IPv4 address (an IPv4-mapped IPv6 one counts as that IPv4); a request is at most
MAX_REQUEST_BYTES and MAX_HEADERS header lines; its request line is logged
escaped."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loguru import logger

from consul_reg.app.metrics import Metrics
from consul_reg.core.liveness import Liveness
from consul_reg.core.snapshot import Snapshot
from consul_reg.mapping.labels import printable

REQUEST_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 16
MAX_CONNECTIONS_PER_CLIENT = 4  # per client (client_key): one client cannot take every slot
MAX_REQUEST_BYTES = 8 * 1024  # request line and headers (a GET has no body); read no further
MAX_HEADERS = 32


def client_key(host: str) -> str:
    """Whose connection this is, for the per-client cap: any local process can bind
    any of 127.0.0.0/8, and one IPv6 host usually holds a whole /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class StatusSources:
    """What the endpoint reads; every callable returns an immutable value."""

    snapshot: Callable[[], Snapshot]
    docker: Liveness
    agent: Liveness
    mirrors: Callable[[], dict[str, str]]
    metrics: Metrics
    hostname: str


def health(sources: StatusSources, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """200 while Docker and the agent answer, else 503 with the reason."""
    now = time.monotonic() if now is None else now
    snapshot = sources.snapshot()
    body: dict[str, Any] = {}
    for name, liveness in (("docker", sources.docker), ("consul", sources.agent)):
        state = liveness.state
        body[name] = "ok" if state.ok else "unreachable"
        if not state.ok:
            body[f"{name}_reason"] = state.reason
            body[f"{name}_unreachable_seconds"] = round(now - state.since, 3)
    age = None if snapshot.last_full_pass is None else round(now - snapshot.last_full_pass, 3)
    body["last_reconcile_seconds_ago"] = age
    body.update(_passes(snapshot))
    body["mirrors"] = sources.mirrors()
    healthy = sources.docker.state.ok and sources.agent.state.ok
    return (200 if healthy else 503), body


def services(sources: StatusSources) -> dict[str, Any]:
    snapshot = sources.snapshot()
    actual = snapshot.actual or {}
    containers = {}
    for desire in snapshot.desires.values():
        containers[desire.container_name] = {
            "id": desire.container_id,
            "services": [{"id": s.id, "name": s.name, "address": s.address, "port": s.port,
                          "tags": list(s.tags), "checks": [c.check_id for c in s.checks],
                          "registered": s.id in actual and actual[s.id].digest == s.digest}
                         for s in desire.services],
        }
    owned = {sid for sid, s in actual.items() if s.owned_by(sources.hostname)}
    return {"containers": containers, "registered_but_not_desired": sorted(owned - set(snapshot.desired)),
            "agent_listing_known": snapshot.actual is not None, **_passes(snapshot)}


def _passes(snapshot: Snapshot) -> dict[str, int]:
    """Which view this is, and how far the full passes are: wait for full_pass_done to
    pass a full_passes_started read before an action to know a pass begun after it made
    its writes (see Snapshot)."""
    return {"generation": snapshot.generation, "full_passes_started": snapshot.full_passes_started,
            "full_pass_done": snapshot.full_pass_done}


class _DeadlineReader(io.RawIOBase):
    """A socket's reads that all end by one deadline: each read waits at most
    what is left of it, and none starts once it has passed."""

    def __init__(self, sock: socket.socket, deadline: float, budget: int = MAX_REQUEST_BYTES) -> None:
        self._sock = sock
        self._deadline = deadline
        self._budget = budget
        self.exhausted = False  # the request went on past the budget: the reader saw an end instead

    def restart(self, deadline: float, budget: int = MAX_REQUEST_BYTES) -> None:
        """The next request on a kept-alive connection: its own deadline and byte budget."""
        self._deadline, self._budget, self.exhausted = deadline, budget, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._budget <= 0:
            self.exhausted = True
            return 0
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        with memoryview(buffer) as view:
            received = self._sock.recv_into(view[:self._budget])
        self._budget -= received
        return received


_OVER_CAP_BODY = (f"too many connections: at most {MAX_CONNECTIONS_PER_CLIENT} from one client and "
                  f"{MAX_CONNECTIONS} in all; keep one connection alive or retry\n").encode()
_OVER_CAP = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
             b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_OVER_CAP_BODY), _OVER_CAP_BODY))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._per_client: dict[str, int] = {}  # client_key -> connections it holds
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        client = client_key(str(client_address[0]))
        with self._lock:
            held = self._per_client.get(client, 0)
            admitted = held < MAX_CONNECTIONS_PER_CLIENT and self._slots.acquire(blocking=False)
            if admitted:
                self._per_client[client] = held + 1
        if not admitted:  # over a cap: told why and closed at once, nothing read or queued
            try:
                request.setblocking(False)
                request.send(_OVER_CAP)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            client = client_key(str(client_address[0]))
            with self._lock:
                held = self._per_client.pop(client) - 1
                if held:
                    self._per_client[client] = held
                self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a traceback to stderr; here one log line (JSON with
        --log-format json, scrubbed): a client that reset is routine, not a bug."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.debug("status: client {} went away: {}: {}", client_address[0], type(error).__name__, error)
        else:
            logger.opt(exception=True).error("status: request from {} failed", client_address[0])


class StatusServer:
    def __init__(self, address: str, sources: StatusSources) -> None:
        host, _, port = address.rpartition(":")
        self.sources = sources
        host = host.strip("[]") or "127.0.0.1"
        _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = _Server((host, int(port)), _handler_for(sources))
        self.thread = threading.Thread(target=self.server.serve_forever, name="status", daemon=True)

    def start(self) -> None:
        self.thread.start()
        logger.info("status endpoint on http://{}:{}/ (/health, /metrics, /services)", *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(sources: StatusSources) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Kept alive: a monitor or scraper reuses one connection (and one slot) instead of
        # racing its next connection against the release of the last one's slot.
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT_SECONDS  # on the socket: a client that stalls is dropped

        def setup(self) -> None:
            super().setup()
            deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS
            self._reader = _DeadlineReader(self.connection, deadline)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            # Each request on a kept-alive connection has the whole deadline from the end of
            # the previous answer; one deadline per connection dropped busy clients mid-stream.
            self._reader.restart(time.monotonic() + REQUEST_TIMEOUT_SECONDS)
            super().handle_one_request()

        def parse_request(self) -> bool:
            if self._reader.exhausted:  # the request line itself went past the bound
                self.requestline, self.request_version, self.command = "", "", ""
                return self._too_large()
            if not super().parse_request():
                return False  # refused by http.server, which answered
            if self._reader.exhausted or len(self.headers) > MAX_HEADERS:
                return self._too_large()
            return True

        def _too_large(self) -> bool:
            self.close_connection = True
            self.send_error(431, f"at most {MAX_HEADERS} header lines and {MAX_REQUEST_BYTES} bytes in a request")
            return False

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self._send(200, *sources.metrics.render())
            elif self.path == "/health":
                code, body = health(sources)
                self._send(code, json.dumps(body).encode(), "application/json")
            elif self.path == "/services":
                self._send(200, json.dumps(services(sources), indent=1).encode(), "application/json")
            else:
                self._send(404, b"not found: try /health, /metrics or /services\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.connection.settimeout(REQUEST_TIMEOUT_SECONDS)  # sendall: for the whole answer
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.trace("status: {}", printable(format % args, 300))  # the request line is the client's text

    return Handler
