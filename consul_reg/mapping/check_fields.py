"""What every spelling of a check shares (SERVICE_CHECK_* keys and SERVICE_CHECKS):
Go durations, check kinds and their IDs, initial statuses, the redirect rule of
agents before Consul 1.12, and frozen check fields. Pure: no I/O, never raises."""

from __future__ import annotations

import re

from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.versions import CHECK_FIELD_MIN_VERSION

# Go's time.ParseDuration units; ASCII digits only (Consul would refuse others).
_DURATION = re.compile(r"([0-9]{1,12}(\.[0-9]{1,9})?(ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_SECONDS = 2562047 * 3600.0  # Go's time.Duration overflows past ~292 years
# HTTP checks stop following redirects where the agent can (1.12; some 1.9-1.11 patch releases too).
DISABLE_REDIRECTS_MIN_VERSION = CHECK_FIELD_MIN_VERSION["DisableRedirects"]
# What an HTTP check may send to an agent that follows redirects: Go's client follows a 307 or
# 308 with the same method and body, so anything else could be carried to any address.
REDIRECT_SAFE_METHODS = ("GET", "HEAD")
# Kinds of the SERVICE_CHECK_<KIND> keys: their check IDs are `service:<service ID>:<kind>`.
KEY_CHECK_KINDS = ("http", "https", "tcp", "grpc", "h2ping", "udp", "script", "docker")
DAEMON_CHECK_KINDS = ("heartbeat", "docker-health")  # checks the daemon itself reports (workers.py)
INITIAL_STATUSES = ("passing", "warning", "critical")


def parse_duration(text: str) -> float | None:
    """A Go duration ("1m30s") in seconds, or None when it is not one (or
    longer than Go can hold)."""
    text = text.strip()
    if len(text) > 64 or not _DURATION.fullmatch(text):
        return None
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return seconds if seconds <= MAX_DURATION_SECONDS else None


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration Consul parses: never an exponent ("1e+06s")."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def redirect_problem(method: str, has_body: bool, settings: CheckSettings) -> str | None:
    """None when an HTTP check sending `method` (and a body or not) is safe on this agent;
    else why it is refused. An agent before Consul 1.12 follows the checked server's
    redirects (DisableRedirects is newer), and a 307 keeps the method and the body: the
    container's own server could send the request to any address the agent reaches, a
    loopback-only Docker API's POST /containers/create included."""
    if settings.agent_version >= DISABLE_REDIRECTS_MIN_VERSION or settings.allow_check_redirects:
        return None
    if method in REDIRECT_SAFE_METHODS and not has_body:
        return None
    sends = method + (" with a body" if has_body else "")
    agent = settings.agent_version
    return (f"it sends {sends}, and this agent (Consul {agent[0]}.{agent[1]}) follows the checked server's "
            f"redirects keeping the method and the body (Consul cannot turn that off before "
            f"{DISABLE_REDIRECTS_MIN_VERSION[0]}.{DISABLE_REDIRECTS_MIN_VERSION[1]}): a redirect would carry it to "
            "any address the agent reaches. Only GET and HEAD without a body are sent; upgrade Consul, or the "
            "operator may accept the risk with --allow-check-redirects")


def parse_version(text: str) -> tuple[int, int]:
    match = re.match(r"v?([0-9]{1,6})\.([0-9]{1,6})", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (1, 7)


def frozen_fields(fields: dict[str, object]) -> tuple[tuple[str, object], ...]:
    def freeze(value: object) -> object:
        if isinstance(value, dict):
            return tuple(sorted((k, freeze(v)) for k, v in value.items()))
        if isinstance(value, list):
            return tuple(freeze(v) for v in value)
        return value
    return tuple(sorted((k, freeze(v)) for k, v in fields.items()))


def origin_key(service_id: str, check_id: str) -> str:
    """The key that declared one of our checks, told by its ID: "check_ttl", "check_<kind>"
    (a SERVICE_CHECK_<KIND> key), "checks" (SERVICE_CHECKS), or "" for the daemon's own."""
    if check_id == f"service:{service_id}":
        return "check_ttl"
    kind = check_id.removeprefix(f"service:{service_id}:")
    if kind in KEY_CHECK_KINDS:
        return f"check_{kind}"
    return "" if kind in DAEMON_CHECK_KINDS else "checks"
