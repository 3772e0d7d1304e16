"""A container's own endpoints (check_targets.OwnEndpoints): what its health checks
and sidecar forwards may probe without an operator's rule, and where the agent
reaches each of its ports (for `:PORT` check targets, check_ports.py). Pure:
no I/O, never raises."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consul_reg.mapping.addresses import UNSPECIFIED_HOST_IPS, container_addresses
from consul_reg.mapping.check_ports import PortReach
from consul_reg.mapping.check_targets import OwnEndpoints
from consul_reg.mapping.ports import binding_text, int_or_none, port_entries
from consul_reg.mapping.settings import MappingSettings, PublishedPort
from consul_reg.mapping.validate import normal_host, parse_ip


def own_endpoints(container: dict[str, Any], network_peer: dict[str, Any] | None, settings: MappingSettings,
                  ports: Sequence[PublishedPort]) -> OwnEndpoints:
    """What this container's checks (and sidecar forwards) may probe without an
    operator's rule, as exact pairs (see validate.OwnEndpoints): its own IPs with
    its container-side ports; each binding's (HostIp, HostPort); a port published
    on every address at each address the daemon registers at, of that family."""
    exposed, bound = port_entries(container, settings.limits, [])
    container_ports = {int(number) for number, _ in exposed} | {int(number) for (number, _), _ in bound}
    container_ports |= {int(p.exposed) for p in ports if p.declared}
    chosen = {normal_host(a) for a in (settings.host_ip or settings.default_address, settings.host_ip6) if a}
    pairs: set[tuple[str, int]] = set()
    reached: list[tuple[int, str, str, int]] = []  # (container port, protocol, HostIp, HostPort)
    budget = settings.limits.port_entries  # bindings looked at, over all ports
    for (number, protocol), bindings in bound:
        for binding in bindings[:budget] if isinstance(bindings, list) else ():
            budget -= 1
            host_port = int_or_none(binding_text(binding.get("HostPort") or "")) if isinstance(binding, dict) else None
            if host_port is None:
                continue
            host_ip = binding_text(binding.get("HostIp") or "")
            if host_ip in UNSPECIFIED_HOST_IPS:
                pairs |= {(address, host_port) for address in chosen if _same_family(address, host_ip)}
            elif parse_ip(host_ip) is not None:
                pairs.add((normal_host(host_ip), host_port))
            else:
                continue
            reached.append((int(number), protocol, host_ip, host_port))
        if budget <= 0:
            break
    on_host = _dict(container.get("HostConfig")).get("NetworkMode") == "host"
    if on_host:
        pairs |= {(address, port) for address in chosen for port in container_ports}
    typed_ports = {(int(number), protocol) for number, protocol in exposed} | \
        {(int(number), protocol) for (number, protocol), _ in bound} | \
        {(int(p.exposed), p.protocol) for p in ports if p.declared}
    reach = PortReach("internal" if settings.internal else "host" if on_host else "published",
                      frozenset(typed_ports), tuple(reached))
    return OwnEndpoints(container_addresses=container_addresses(container, network_peer),
                        container_ports=frozenset(container_ports), host_pairs=frozenset(pairs),
                        chosen_addresses=frozenset(chosen), reach=reach)


def _same_family(address: str, unspecified: str) -> bool:
    """Whether a binding on `unspecified` ("" both families, 0.0.0.0 IPv4, :: IPv6) is
    reached at `address`. Docker lists 0.0.0.0 and :: separately when a port is on
    both; a host name (-ip name) is taken as reached either way."""
    ip = parse_ip(address)
    return not unspecified or ip is None or ip.version == (4 if unspecified == "0.0.0.0" else 6)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
