"""The daemon's start: reaching the agent, retrying, and the signals that come meanwhile
(a stub agent on a loopback port stands in for the agent's answers)."""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from consul_reg.app.config import Config
from consul_reg.app.daemon import Daemon

AGENT_SELF = {"Config": {"Version": "1.8.7", "NodeName": "n1", "NodeID": "id-1"},
              "Member": {"Addr": "127.0.0.1"}, "DebugConfig": {"EnableRemoteScriptChecks": False}}


class AclAgent(ThreadingHTTPServer):
    """Answers /v1/agent/self only to the token `accepted`; 403 otherwise."""

    daemon_threads = True
    accepted = "new-token"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.refused = 0
        self.refusal = threading.Condition()

    def wait_refused(self, count: int, timeout: float = 10.0) -> bool:
        """True once the daemon's tries were refused `count` times."""
        with self.refusal:
            return self.refusal.wait_for(lambda: self.refused >= count, timeout)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-Consul-Token") != self.server.accepted:  # type: ignore[attr-defined]
            body, code = b"ACL not found", 403
        else:
            body, code = json.dumps(AGENT_SELF).encode(), 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if code == 403:
            with self.server.refusal:  # type: ignore[attr-defined]
                self.server.refused += 1  # type: ignore[attr-defined]
                self.server.refusal.notify_all()  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass


def _connecting(tmp_path: Path) -> tuple[AclAgent, Path, Daemon, threading.Thread, list[Any]]:
    agent = AclAgent(("127.0.0.1", 0), _Handler)
    threading.Thread(target=agent.serve_forever, daemon=True).start()
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    config = Config(hostname="h1", registry_uris=(f"consul://127.0.0.1:{agent.server_address[1]}",),
                    token="old-token", token_file=str(token_file), retry_interval_ms=200)
    daemon = Daemon(config)
    daemon.docker.ping = lambda: None  # type: ignore[method-assign]  (Docker is not the point here)
    result: list[Any] = []
    connecting = threading.Thread(target=lambda: result.append(daemon.connect()), daemon=True)
    connecting.start()
    return agent, token_file, daemon, connecting, result


def _close(agent: AclAgent, daemon: Daemon, connecting: threading.Thread) -> None:
    if connecting.is_alive():
        daemon.on_signal(signal.SIGTERM, None)
        connecting.join(timeout=10)
    agent.shutdown()
    daemon.registry.close()
    daemon.docker.close()


def test_a_sighup_while_the_start_is_retried_rereads_the_token(tmp_path: Path) -> None:
    """The token is re-read from CONSUL_HTTP_TOKEN_FILE on SIGHUP, also while the daemon
    still retries its start (an expired token gets 403 from /v1/agent/self)."""
    agent, token_file, daemon, connecting, result = _connecting(tmp_path)
    try:
        assert agent.wait_refused(3), "a few refused tries"
        assert connecting.is_alive() and not result
        token_file.write_text("new-token\n")  # the operator rotates the token...
        daemon.on_signal(signal.SIGHUP, None)  # ...and tells the daemon
        connecting.join(timeout=8.0)
        assert result and result[0] is not None, "still retrying with the old token 8s after SIGHUP"
        assert result[0].node_id == "id-1"
    finally:
        _close(agent, daemon, connecting)


def test_a_sigterm_while_the_start_is_retried_stops_it(tmp_path: Path) -> None:
    agent, _, daemon, connecting, result = _connecting(tmp_path)
    try:
        assert agent.wait_refused(2), "the start is retried"
        daemon.on_signal(signal.SIGTERM, None)
        connecting.join(timeout=8.0)
        assert not connecting.is_alive() and result == [None]
    finally:
        _close(agent, daemon, connecting)
