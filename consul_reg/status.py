"""--status-addr: /health, /metrics (Prometheus text, via prometheus-client)
and /services (desired against actual per container), served from a thread."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from consul_reg.daemon import Daemon

LATE_SECONDS = 1.0  # a heartbeat sent later than this after it was due counts as late


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registrations = Counter("consul_reg_registrations_total", "Services registered", ["registry"],
                                     registry=self.registry)
        self.deregistrations = Counter("consul_reg_deregistrations_total", "Services deregistered", ["registry"],
                                       registry=self.registry)
        self.errors = Counter("consul_reg_errors_total", "Registry operations that failed", ["registry"],
                              registry=self.registry)
        self.reconcile_seconds = Histogram("consul_reg_reconcile_duration_seconds", "Duration of full reconciles",
                                           registry=self.registry)
        self.event_lag = Gauge("consul_reg_docker_event_lag_seconds",
                               "Delay between a Docker event and its handling (last event)", registry=self.registry)
        self.heartbeats_sent = Counter("consul_reg_heartbeats_sent_total", "TTL check updates sent",
                                       registry=self.registry)
        self.heartbeats_late = Counter("consul_reg_heartbeats_late_total",
                                       f"TTL check updates sent more than {LATE_SECONDS:g}s after due",
                                       registry=self.registry)
        self.services_managed = Gauge("consul_reg_services_managed", "Services this daemon wants registered",
                                      registry=self.registry)

    def applied(self, registry: str, registered: int, deregistered: int, failed: int) -> None:
        self.registrations.labels(registry).inc(registered)
        self.deregistrations.labels(registry).inc(deregistered)
        self.errors.labels(registry).inc(failed)

    def heartbeat(self, lateness: float | None) -> None:
        self.heartbeats_sent.inc()
        if lateness is not None and lateness > LATE_SECONDS:
            self.heartbeats_late.inc()


class StatusServer:
    def __init__(self, address: str, daemon: "Daemon") -> None:
        host, _, port = address.rpartition(":")
        self.daemon = daemon
        handler = _handler_for(self)
        self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="status", daemon=True)

    def start(self) -> None:
        self.thread.start()
        logger.info("status endpoint on http://{}:{}/ (/health, /metrics, /services)", *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def health(self) -> tuple[int, dict[str, Any]]:
        daemon = self.daemon
        age = time.monotonic() - daemon.last_full_sync if daemon.last_full_sync else None
        body = {
            "docker": "ok" if daemon.docker_ok else "unreachable",
            "consul": "ok" if daemon.actual is not None else "unreachable",
            "last_reconcile_seconds_ago": None if age is None else round(age, 3),
            "mirrors": {m.registry.description: m.state for m in daemon.mirrors},
        }
        healthy = daemon.docker_ok and daemon.actual is not None
        return (200 if healthy else 503), body

    def services(self) -> dict[str, Any]:
        daemon = self.daemon
        actual = dict(daemon.actual or {})
        containers = {}
        for desire in list(daemon.desires.values()):
            containers[desire.container_name] = {
                "id": desire.container_id,
                "services": [{"id": s.id, "name": s.name, "address": s.address, "port": s.port,
                              "tags": list(s.tags), "checks": [c.check_id for c in s.checks],
                              "registered": s.id in actual and actual[s.id].digest == s.digest}
                             for s in desire.services],
            }
        owned = [sid for sid, s in actual.items() if s.owned_by(daemon.config.hostname)]
        wanted = {s.id for d in daemon.desires.values() for s in d.services}
        return {"containers": containers, "registered_but_not_desired": sorted(set(owned) - wanted)}


def _handler_for(status: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self._send(200, generate_latest(status.daemon.metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/health":
                code, body = status.health()
                self._send(code, json.dumps(body).encode(), "application/json")
            elif self.path == "/services":
                self._send(200, json.dumps(status.services(), indent=1).encode(), "application/json")
            else:
                self._send(404, b"not found: try /health, /metrics or /services\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.trace("status: {}", format % args)

    return Handler
