"""SERVICE_CHECK_RESTART_* keys -> a service's RestartPolicy (Nomad's check_restart:
limit, grace, ignore_warnings). Pure: no I/O, never raises.

The policy names what the restart watcher counts: each of the service's checks
(the Docker-health check and the daemon's heartbeats included; an AliasService
check is not: it reports another service) with the seconds between two of its
results as counted: its Interval, a TTL check's TTL, a daemon-run check's own
interval, the container's HEALTHCHECK interval for the checks that mirror
Docker's health: the Docker-health check, and a port-less worker's heartbeat
when its container has a HEALTHCHECK (the heartbeat then reports Docker's
health: `starting` as a warning). The default grace is twice the longest of
those, plus the HEALTHCHECK's start period when a counted check mirrors it;
a mirrored result while Docker says `starting` is never counted (the
tracker's rule, from the policy's `health_mirrors`).
"""

from __future__ import annotations

import re
from typing import Any

from consul_reg.core.records import Check, RestartPolicy, section
from consul_reg.mapping.check_fields import go_duration, parse_duration
from consul_reg.mapping.labels import KeyValue, show

LIMIT_KEY, GRACE_KEY, WARNINGS_KEY = "check_restart_limit", "check_restart_grace", "check_restart_ignore_warnings"
MAX_LIMIT = 1000  # failed results in a row
MAX_GRACE_SECONDS = 24 * 3600.0
MIN_SAMPLE_SECONDS = 1.0  # Consul runs no check more often than once a second
MAX_SAMPLE_SECONDS = 24 * 3600.0
DOCKER_HEALTH_INTERVAL = 30.0  # Docker's default HEALTHCHECK interval
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def restart_policy(keys: dict[str, KeyValue], checks: tuple[Check, ...], container: dict[str, Any],
                   warnings: list[str]) -> RestartPolicy | None:
    """The service's policy, or None (no SERVICE_CHECK_RESTART_LIMIT, 0, or unusable: warned)."""
    limit_entry = keys.get(LIMIT_KEY)
    if limit_entry is None or not limit_entry.value.strip():
        for key in (GRACE_KEY, WARNINGS_KEY):
            if key in keys:
                warnings.append(f"key {show(keys[key].original_key)}: has no effect without "
                                "SERVICE_CHECK_RESTART_LIMIT; ignored")
        return None
    text = limit_entry.value.strip()
    if not re.fullmatch(r"[0-9]{1,4}", text) or int(text) > MAX_LIMIT:
        warnings.append(f"key {show(limit_entry.original_key)}={show(limit_entry.value)}: must be a whole number "
                        f"from 0 (off) to {MAX_LIMIT}; the container is never restarted for this service")
        return None
    if int(text) == 0:
        return None
    samples = tuple((check.check_id, every) for check in checks
                    if (every := _sample_seconds(check, container)) is not None)
    mirrors = tuple(check.check_id for check in checks if _mirrors_health(check, container)
                    and check.check_id in dict(samples))
    if not samples:
        warnings.append(f"key {show(limit_entry.original_key)}: this service has no check to count; ignored")
        return None
    ignore_warnings = _flag(keys.get(WARNINGS_KEY), warnings)
    longest = max(every for _, every in samples)
    start_period = _healthcheck_seconds(container, "StartPeriod", 0.0) if mirrors else 0.0
    grace = 2 * longest + start_period
    grace_source = f"default: 2 x the longest check interval ({go_duration(longest)})" + (
        f" + the HEALTHCHECK's start period ({go_duration(start_period)})" if start_period else "")
    grace_entry = keys.get(GRACE_KEY)
    if grace_entry is not None and grace_entry.value.strip():
        given = parse_duration(grace_entry.value)
        if given is None or given > MAX_GRACE_SECONDS:
            warnings.append(f"key {show(grace_entry.original_key)}={show(grace_entry.value)}: not a duration from "
                            f"0s to 24h (like 30s, 2m); using {go_duration(grace)} ({grace_source})")
        else:
            grace, grace_source = given, f"{grace_entry.source} {grace_entry.original_key}"
    return RestartPolicy(limit=int(text), grace=grace, ignore_warnings=ignore_warnings, samples=samples,
                         health_mirrors=mirrors, grace_source=grace_source)


def _sample_seconds(check: Check, container: dict[str, Any]) -> float | None:
    """Seconds between two counted results of `check`; None for a check not counted."""
    definition = dict(check.definition)
    if "AliasService" in definition:
        return None
    probe = check.daemon_probe
    if probe is not None:
        every = _healthcheck_seconds(container, "Interval", DOCKER_HEALTH_INTERVAL) \
            if _mirrors_health(check, container) else probe.interval
    else:
        every = parse_duration(str(definition.get("Interval") or definition.get("TTL") or "")) or 0.0
    return min(max(every, MIN_SAMPLE_SECONDS), MAX_SAMPLE_SECONDS)


def _mirrors_health(check: Check, container: dict[str, Any]) -> bool:
    """Whether `check` reports Docker's health: the Docker-health check, or a heartbeat on a
    container with a HEALTHCHECK (the heartbeat scheduler's rule: it mirrors any health it sees)."""
    probe = check.daemon_probe
    if probe is None:
        return False
    return probe.kind == "docker-health" or (probe.kind == "heartbeat" and _has_healthcheck(container))


def _has_healthcheck(container: dict[str, Any]) -> bool:
    """Config.Healthcheck names a test (not `NONE`, Docker's "disabled")."""
    test = section(section(container, "Config"), "Healthcheck").get("Test")
    return isinstance(test, list) and bool(test) and test[0] != "NONE"


def _healthcheck_seconds(container: dict[str, Any], field: str, default: float) -> float:
    """Config.Healthcheck's `field` (nanoseconds; 0 or unset: Docker's default), in seconds."""
    value = section(section(container, "Config"), "Healthcheck").get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return default
    return min(value / 1e9, MAX_SAMPLE_SECONDS)


def _flag(entry: KeyValue | None, warnings: list[str]) -> bool:
    if entry is None or not entry.value.strip():
        return False
    value = entry.value.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    warnings.append(f"key {show(entry.original_key)}={show(entry.value)}: must be true or false; using false")
    return False
