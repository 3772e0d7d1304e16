"""Checks the daemon owns and reports itself (pure, no I/O):

- the heartbeat of a port-less worker (`service:<id>:heartbeat`), a TTL check
  the daemon keeps passing while the container runs, or that mirrors the
  container's Docker health when it has a HEALTHCHECK;
- `service:<id>:docker-health` on services with ports whose container has a
  HEALTHCHECK: a long TTL, so a stopped daemon never turns them critical.
"""

from __future__ import annotations

from typing import Any

from consul_reg.core.records import Check, DaemonProbe, section
from consul_reg.mapping.check_fields import go_duration, parse_duration
from consul_reg.mapping.labels import KeyValue, show

DEFAULT_HEARTBEAT_TTL = 30.0
DOCKER_HEALTH_TTL = "24h"


def has_healthcheck(container: dict[str, Any]) -> bool:
    config = section(container, "Config")
    healthcheck = section(config, "Healthcheck")
    test = healthcheck.get("Test")
    return isinstance(test, list) and bool(test) and test[0] != "NONE"


def heartbeat_check(keys: dict[str, KeyValue], service_id: str, service_name: str, container_id: str,
                    warnings: list[str]) -> Check:
    ttl = _seconds(keys.get("heartbeat_ttl"), DEFAULT_HEARTBEAT_TTL, warnings)
    interval = _seconds(keys.get("heartbeat_interval"), ttl / 3, warnings)
    if interval >= ttl:
        warnings.append(f"SERVICE_HEARTBEAT_INTERVAL ({go_duration(interval)}) must be shorter than the TTL "
                        f"({go_duration(ttl)}); using {go_duration(ttl / 3)}")
        interval = ttl / 3
    return Check(
        check_id=f"service:{service_id}:heartbeat",
        name=f"Service '{service_name}' heartbeat from consul-reg",
        definition=(("Notes", "passing while the container runs (or mirrors its Docker health); "
                              "critical when consul-reg stops vouching"), ("TTL", go_duration(ttl))),
        daemon_probe=DaemonProbe(kind="heartbeat", interval=interval, container_id=container_id),
    )


def docker_health_check(service_id: str, service_name: str, container_id: str, reassert_seconds: float) -> Check:
    return Check(
        check_id=f"service:{service_id}:docker-health",
        name=f"Service '{service_name}' Docker health",
        definition=(("Notes", "the container's Docker HEALTHCHECK, reported by consul-reg"),
                    ("Status", "critical"), ("TTL", DOCKER_HEALTH_TTL)),
        daemon_probe=DaemonProbe(kind="docker-health", interval=reassert_seconds, container_id=container_id),
    )


def _seconds(entry: KeyValue | None, default: float, warnings: list[str]) -> float:
    if entry is None or not entry.value.strip():
        return default
    seconds = parse_duration(entry.value)
    if seconds is None or seconds < 1:
        warnings.append(f"key {show(entry.original_key)}={show(entry.value)}: not a duration of at least 1s "
                        f"(like 30s); using {go_duration(default)}")
        return default
    return seconds
