"""The body of PUT /v1/agent/service/register for one service, and its size.
Pure: the mapping measures what the Consul client will send (a service whose
body is over the cap is refused there, with a warning)."""

from __future__ import annotations

import json
from typing import Any

from consul_reg.core.records import MARKER_DIGEST_KEY, MARKER_SOURCE_KEY, MARKER_SOURCE_VALUE, SIDECAR_FOR_KEY, Service

# What the digest always is in Meta: 16 hex digits (model.Service.digest).
_DIGEST_STAND_IN = "0" * 16


def registration_payload(service: Service, digest: str | None = None) -> dict[str, Any]:
    """The JSON body of PUT /v1/agent/service/register for one service."""
    meta = dict(service.meta)
    meta[MARKER_DIGEST_KEY] = service.digest if digest is None else digest
    payload: dict[str, Any] = {
        "ID": service.id,
        "Name": service.name,
        "Tags": list(service.tags),
        "Address": service.address,
        "Meta": meta,
    }
    if service.port is not None:
        payload["Port"] = service.port
    if service.checks:
        payload["Checks"] = [
            {"CheckID": check.check_id, "Name": check.name, **check.definition_dict} for check in service.checks
        ]
    if service.tagged_addresses:
        payload["TaggedAddresses"] = {t.name: {"Address": t.address, "Port": t.port}
                                      for t in service.tagged_addresses}
    if service.weights is not None:
        payload["Weights"] = {"Passing": service.weights[0], "Warning": service.weights[1]}
    if service.enable_tag_override:
        payload["EnableTagOverride"] = True
    if service.connect is not None:
        payload["Connect"] = connect_payload(service)
    return payload


def registration_bytes(service: Service) -> int:
    """How many bytes the Consul client sends to register `service` (json.dumps' default
    ASCII form), without computing its digest: its stand-in has the digest's length."""
    return len(json.dumps(registration_payload(service, _DIGEST_STAND_IN)))


def connect_payload(service: Service) -> dict[str, Any]:
    """The registration's Connect block. A sidecar's own Meta is set: without it
    the agent copies the service's Meta, ownership marker included, into the
    sidecar's registration, which the daemon would then take for an orphan of
    its own and remove."""
    assert service.connect is not None
    if service.connect.native:
        return {"Native": True}
    proxy: dict[str, Any] = {"LocalServiceAddress": service.address, "LocalServicePort": service.port}
    if service.connect.upstreams:
        proxy["Upstreams"] = [{"DestinationName": u.destination, "LocalBindPort": u.local_port}
                              for u in service.connect.upstreams]
    return {"SidecarService": {"Meta": {MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE, SIDECAR_FOR_KEY: service.id},
                               "Proxy": proxy}}
