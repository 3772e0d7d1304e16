"""Review H7: the daemon's wiring and liveness against a stub agent on a
loopback port (the agent is trusted: a stub stands in for its answers)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from consul_reg.agent_watch import AgentWatch
from consul_reg.config import Config
from consul_reg.daemon import Daemon
from consul_reg.liveness import Liveness
from consul_reg.registries.consul import ConsulClient, ConsulEndpoint, ConsulRegistry

AGENT_SELF = {"Config": {"Version": "1.8.7", "NodeName": "n1", "NodeID": "id-1"},
              "Member": {"Addr": "127.0.0.1"}, "DebugConfig": {"EnableRemoteScriptChecks": False}}


class AclAgent(ThreadingHTTPServer):
    """Answers /v1/agent/self only to the token `accepted`; 403 otherwise."""

    daemon_threads = True
    accepted = "new-token"


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

    def log_message(self, *args: Any) -> None:
        pass


def test_F10_a_sighup_while_the_daemon_retries_its_start_rereads_the_token(tmp_path: Path) -> None:
    """README (ACL): the token is re-read from CONSUL_HTTP_TOKEN_FILE on SIGHUP. While the
    daemon retries its start (-retry-attempts -1: an expired token gets 403 from
    /v1/agent/self), the SIGHUP lands in early_inbox, connect() takes it off the
    queue as a mere wake-up and drops it: the new token is never read and the daemon
    retries the old one for ever (a restart is the only way out)."""
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
    try:
        time.sleep(1.0)  # a few refused tries
        assert connecting.is_alive() and not result
        token_file.write_text("new-token\n")  # the operator rotates the token...
        daemon.on_signal(signal.SIGHUP, None)  # ...and tells the daemon
        connecting.join(timeout=8.0)
        assert result and result[0] is not None, "still retrying with the old token 8s after SIGHUP"
    finally:
        if connecting.is_alive():
            daemon.on_signal(signal.SIGTERM, None)
            connecting.join(timeout=10)
        agent.shutdown()
        daemon.registry.close()
        daemon.docker.close()


def test_F11_health_turns_503_within_5s_when_the_agent_hangs() -> None:
    """Issue 10 / README "Guarantees": /health is 503 within 5 s of the agent going
    away. An agent that hangs (SIGSTOPped, a VM paused, a blackholed remote agent)
    still accepts TCP connections (the kernel's backlog) and never answers: the
    watch's probe waits for the client's 10 s timeout, so /health says "ok" for
    10 s or more; so does every other call (heartbeats, writes)."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # never accepted, never answered
    client = ConsulClient(ConsulEndpoint("http", "127.0.0.1", hung.getsockname()[1]))
    liveness = Liveness("consul")
    liveness.ok()
    watch = AgentWatch(ConsulRegistry(client), liveness, lambda hint: None, identity=None)
    client.on_unreachable = watch.unreachable
    watch.start()
    try:
        hung_at = time.monotonic()
        while time.monotonic() - hung_at < 5.0 and liveness.state.ok:
            time.sleep(0.1)
        assert not liveness.state.ok, (
            f"/health still says the agent is ok {time.monotonic() - hung_at:.1f}s after it stopped answering")
    finally:
        watch.stop()
        hung.close()
        client.close()
