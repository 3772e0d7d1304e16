"""What the daemon counts. `Metrics` does nothing (no status endpoint: nothing
reads them, and prometheus-client is not even imported); `PrometheusMetrics`
keeps them in prometheus-client collectors for `/metrics`. Every collector is
fixed-size: nothing grows with uptime."""

from __future__ import annotations

from consul_reg.probes.load import LATE_SECONDS  # a heartbeat sent later than this after it was due is late

CHECK_RESTART_OUTCOMES = ("restarted", "failed")  # the only values of consul_reg_check_restarts_total's label


class Metrics:
    def applied(self, registry: str, registered: int, deregistered: int, failed: int) -> None:
        pass

    def heartbeat(self, lateness: float | None) -> None:
        pass

    def reconcile(self, kind: str, seconds: float) -> None:
        pass

    def heartbeat_load(self, asked: float, served: float, overloaded: bool) -> None:
        pass

    def event_lag(self, seconds: float) -> None:
        pass

    def services_managed(self, count: int) -> None:
        pass

    def check_restart(self, outcome: str) -> None:
        pass

    def render(self) -> tuple[bytes, str]:
        return b"", "text/plain; charset=utf-8"


class PrometheusMetrics(Metrics):
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._registrations = Counter("consul_reg_registrations_total", "Services registered", ["registry"],
                                      registry=self.registry)
        self._deregistrations = Counter("consul_reg_deregistrations_total", "Services deregistered", ["registry"],
                                        registry=self.registry)
        self._errors = Counter("consul_reg_errors_total", "Registry operations that failed", ["registry"],
                               registry=self.registry)
        self._reconcile = Histogram("consul_reg_reconcile_duration_seconds", "Duration of sync passes", ["kind"],
                                    registry=self.registry)
        self._event_lag = Gauge("consul_reg_docker_event_lag_seconds",
                                "Delay between a Docker event and its handling (last event)", registry=self.registry)
        self._heartbeats_sent = Counter("consul_reg_heartbeats_sent_total", "TTL check updates sent",
                                        registry=self.registry)
        self._heartbeats_late = Counter("consul_reg_heartbeats_late_total",
                                        f"TTL check updates sent more than {LATE_SECONDS:g}s after due",
                                        registry=self.registry)
        self._lateness = Histogram("consul_reg_heartbeat_lateness_seconds",
                                   "Delay between a TTL update's due time and its sending",
                                   buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                   registry=self.registry)
        self._asked = Gauge("consul_reg_heartbeats_asked_per_second",
                            "TTL updates per second the daemon-owned checks ask for", registry=self.registry)
        self._served = Gauge("consul_reg_heartbeats_served_per_second",
                             "TTL updates per second the agent served (last window)", registry=self.registry)
        self._overloaded = Gauge("consul_reg_heartbeats_overloaded",
                                 "1 while the agent cannot serve the TTL updates asked (a warning names the settings)",
                                 registry=self.registry)
        self._check_restarts = Counter("consul_reg_check_restarts_total",
                                       "Containers restarted because a check kept failing (SERVICE_CHECK_RESTART_LIMIT)"
                                       ", by outcome: restarted, failed", ["outcome"], registry=self.registry)
        for outcome in CHECK_RESTART_OUTCOMES:  # both series exist from the start, at 0
            self._check_restarts.labels(outcome)
        self._services = Gauge("consul_reg_services_managed", "Services this daemon wants registered",
                               registry=self.registry)

    def applied(self, registry: str, registered: int, deregistered: int, failed: int) -> None:
        self._registrations.labels(registry).inc(registered)
        self._deregistrations.labels(registry).inc(deregistered)
        self._errors.labels(registry).inc(failed)

    def heartbeat(self, lateness: float | None) -> None:
        self._heartbeats_sent.inc()
        if lateness is not None:
            self._lateness.observe(lateness)
            if lateness > LATE_SECONDS:
                self._heartbeats_late.inc()

    def reconcile(self, kind: str, seconds: float) -> None:
        self._reconcile.labels(kind).observe(seconds)

    def heartbeat_load(self, asked: float, served: float, overloaded: bool) -> None:
        self._asked.set(asked)
        self._served.set(served)
        self._overloaded.set(1 if overloaded else 0)

    def event_lag(self, seconds: float) -> None:
        self._event_lag.set(seconds)

    def services_managed(self, count: int) -> None:
        self._services.set(count)

    def check_restart(self, outcome: str) -> None:
        self._check_restarts.labels(outcome if outcome in CHECK_RESTART_OUTCOMES else "failed").inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
