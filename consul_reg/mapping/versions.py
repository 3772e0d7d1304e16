"""Which definition fields each Consul agent accepts. Pure.

Consul 1.7 and later refuse a whole registration with `400 unknown field`
when one field is newer than the agent, so every field that is newer than
the oldest agent consul-reg speaks to is sent only when the agent's version
(from /v1/agent/self) is at least the one listed here. The minimums are
conservative: a field is never sent to an agent that might not know it.
tests/unit/test_versions.py lists them, and tests/integration/test_definitions.py
sends everything consul-reg can send to the real Consul 1.8.7.
"""

from __future__ import annotations

Version = tuple[int, int]

# Fields of a check definition (inside the registration's Checks).
CHECK_FIELD_MIN_VERSION: dict[str, Version] = {
    "AliasService": (1, 3),
    "OutputMaxSize": (1, 6),
    "Body": (1, 7),
    "SuccessBeforePassing": (1, 7),
    "FailuresBeforeCritical": (1, 7),
    "H2PING": (1, 10),
    "TLSServerName": (1, 10),
    "H2PingUseTLS": (1, 11),
    "DisableRedirects": (1, 12),
    "UDP": (1, 13),
    "FailuresBeforeWarning": (1, 14),
    "OSService": (1, 14),
}

# Fields of the service registration itself.
SERVICE_FIELD_MIN_VERSION: dict[str, Version] = {
    "Weights": (1, 3),
    "Connect": (1, 3),  # Native (1.2) and SidecarService (1.3)
    "TaggedAddresses": (1, 6),
    "Locality": (1, 17),  # never sent by consul-reg; listed so that nobody adds it ungated
}


def shown(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def check_field_refusal(field: str, agent: Version) -> str | None:
    """None when the agent accepts this check field, else why it is left out."""
    needed = CHECK_FIELD_MIN_VERSION.get(field)
    if needed is None or agent >= needed:
        return None
    return f"the check field {field} needs Consul {shown(needed)} or later and this agent is {shown(agent)}"


def service_field_refusal(field: str, agent: Version) -> str | None:
    needed = SERVICE_FIELD_MIN_VERSION.get(field)
    if needed is None or agent >= needed:
        return None
    return f"the service field {field} needs Consul {shown(needed)} or later and this agent is {shown(agent)}"
