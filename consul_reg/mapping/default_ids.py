"""Whose IDs are whose: the shape of every host's default service IDs, which no
container may choose. Pure, never raises.

Default IDs are `<hostname>:<container>:<port>[:udp]` and, for a portless worker,
`<hostname>:<container>`. In a registry several hosts share (a Consul KV prefix,
etcd, ZooKeeper, one agent for two hosts) a container of one host choosing
another host's default ID would lock that host's daemon out of its own record;
so custom IDs are fleet-global, default IDs their host's.
"""

from __future__ import annotations

import re

# A host name holds no ':' (validate.hostname_problem), a container name is Docker's
# or Podman's ([a-zA-Z0-9][a-zA-Z0-9_.-]*). The portless form is told
# from the common custom `<name>:<number>` (`web:8080`, `payments:1`) by its container
# part not being all digits: a container named by digits alone is the one whose
# portless default ID another host could still take.
_HOST_PART = r"[A-Za-z0-9_.@-]{1,64}"
_CONTAINER_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_DEFAULT_ID_SHAPES = (re.compile(rf"({_HOST_PART}):{_CONTAINER_PART}:[0-9]{{1,5}}(:udp)?", re.IGNORECASE),
                      re.compile(rf"({_HOST_PART}):(?![0-9]+$){_CONTAINER_PART}"))


# The agent names the sidecar proxy of service <id> `<id>-sidecar-proxy` (SERVICE_CONNECT=sidecar).
SIDECAR_ID_SUFFIX = "-sidecar-proxy"


def is_sidecar_shaped(service_id: str) -> bool:
    """An ID of the form the agent derives for a sidecar proxy: no container may
    choose one, as it would be another service's sidecar (another host's default
    ID's sidecar, `<host>:<container>:<port>-sidecar-proxy`, included)."""
    return service_id.lower().endswith(SIDECAR_ID_SUFFIX)


def default_id_host(service_id: str) -> str | None:
    """The host in whose default-ID namespace a container-chosen ID sits (any
    host's, not only this one's: mirrors and agents may be shared by several
    hosts), or None. Case-insensitive, as Consul's catalog compares IDs."""
    for shape in _DEFAULT_ID_SHAPES:
        match = shape.fullmatch(service_id)
        if match and match.group(1) not in (".", ".."):
            return match.group(1)
    return None
