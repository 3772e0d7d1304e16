"""A stub Consul agent: a real HTTP/1.1 server on a free loopback port that hands
each request to a handler as an httpx.Request and sends back the httpx.Response
it returns. The production client reaches it over its own transport (the pool,
kept-alive connections): no test-only branch in the client. A handler that
raises drops the connection without an answer, as an agent going away."""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from consul_reg.consul.agent import ConsulClient, ConsulEndpoint

Handler = Callable[[httpx.Request], httpx.Response]


class StubAgent:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = ConsulEndpoint("http", "127.0.0.1", self.port)
        threading.Thread(target=self._accept, name=f"stub-agent-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        listener = self._listener
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the head and the body are two writes
        try:
            _Exchange(conn, peer, self)  # every request on the connection, until either side closes it
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._listener.close()


class _Exchange(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept alive, as the agent does
    server: Any

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or not self.parse_request():
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        request = httpx.Request(self.command, f"http://127.0.0.1:{self.server.port}{self.path}",
                                headers=list(self.headers.items()), content=self.rfile.read(length))
        try:
            response = self.server.handler(request)
            body = response.read()
        except Exception:  # noqa: BLE001  (any failure of the handler: the agent goes away)
            self.close_connection = True  # no answer at all
            return
        self.send_response_only(response.status_code)
        for name, value in response.headers.multi_items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def stub_client(handler: Handler, **options: Any) -> ConsulClient:
    """The production ConsulClient against a StubAgent of its own, closed with the client."""
    agent = StubAgent(handler)
    client = ConsulClient(agent.endpoint, **options)
    weakref.finalize(client, agent.close)
    return client
