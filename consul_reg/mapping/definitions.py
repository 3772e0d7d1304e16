"""The parts of a service definition beyond address, port, tags and checks:
tagged addresses (dual stack, -ip6, SERVICE_TAGGED_ADDRESS_<NAME>), weights,
tag override and Connect. Pure: no I/O, never raises; each refusal is one
warning naming the key, and costs that field only, never the service.
Fields the agent's version does not know are left out (versions.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consul_reg.core.records import Connect, TaggedAddress, Upstream
from consul_reg.mapping.addresses import AddressChoice
from consul_reg.mapping.check_targets import OwnEndpoints, check_target_problem
from consul_reg.mapping.labels import KeyValue, show
from consul_reg.mapping.settings import MappingSettings, PublishedPort
from consul_reg.mapping.validate import (
    identifier_problem,
    parse_host_port,
    parse_ip,
    tagged_address_name_problem,
    whole_number,
)
from consul_reg.mapping.versions import service_field_refusal

TAGGED_ADDRESS_PREFIX = "tagged_address_"
WEIGHT_MAX = 65535  # a DNS SRV weight is 16 bits
CONNECT_MODES = ("native", "sidecar")
# Consul's own default ports (server RPC, Serf LAN/WAN, HTTP, HTTPS, gRPC, gRPC TLS, DNS): an upstream's
# local listener binds where the proxy runs, often the host, and must never stand in for the agent there.
CONSUL_PORTS = frozenset({8300, 8301, 8302, 8500, 8501, 8502, 8503, 8600})
LOWEST_UPSTREAM_PORT = 1024


@dataclass(frozen=True)
class Extras:
    tagged_addresses: tuple[TaggedAddress, ...] = ()
    weights: tuple[int, int] | None = None
    enable_tag_override: bool = False
    connect: Connect | None = None
    origins: tuple[tuple[str, str], ...] = ()


def service_extras(keys: dict[str, KeyValue], service_id: str, choice: AddressChoice, port: PublishedPort | None,
                   port_number: int | None, settings: MappingSettings, warnings: list[str],
                   own: Callable[[], OwnEndpoints] = OwnEndpoints) -> Extras:
    """The extras of one service from its keys (general merged with its port's). `own()`
    is what the container's checks may probe: a sidecar proxy forwards only there (asked
    only for a sidecar)."""
    origins: dict[str, str] = {}
    version = settings.checks.agent_version
    tagged = _tagged_addresses(keys, choice, port, port_number, settings, warnings, origins)
    weights = _weights(keys, warnings, origins)
    override = _tag_override(keys, warnings, origins)
    connect = _connect(keys, choice, port_number, settings, warnings, origins, own)
    for field_name, present in (("TaggedAddresses", bool(tagged)), ("Weights", weights is not None),
                                ("Connect", connect is not None)):
        refusal = service_field_refusal(field_name, version) if present else None
        if refusal:
            warnings.append(f"service {show(service_id)}: {refusal}: left out")
            tagged = () if field_name == "TaggedAddresses" else tagged
            weights = None if field_name == "Weights" else weights
            connect = None if field_name == "Connect" else connect
    return Extras(tagged_addresses=tagged, weights=weights, enable_tag_override=override, connect=connect,
                  origins=tuple(sorted(origins.items())))


def _source(entry: KeyValue) -> str:
    return f"{entry.source} {entry.original_key}"


# -- tagged addresses --------------------------------------------------------------


def _tagged_addresses(keys: dict[str, KeyValue], choice: AddressChoice, port: PublishedPort | None,
                      port_number: int | None, settings: MappingSettings, warnings: list[str],
                      origins: dict[str, str]) -> tuple[TaggedAddress, ...]:
    found: dict[str, TaggedAddress] = {}
    if port_number is not None:
        if choice.ipv6:  # -internal on a dual-stack network: both of the container's addresses
            found["lan_ipv4"] = TaggedAddress("lan_ipv4", choice.address, port_number)
            found["lan_ipv6"] = TaggedAddress("lan_ipv6", choice.ipv6, port_number)
            origins["TaggedAddresses lan_ipv4/lan_ipv6"] = "the container's IPv4 and IPv6 (-internal, dual stack)"
        elif choice.at_host and settings.host_ip6 and port is not None and port.on_ipv6:
            address = parse_ip(choice.address)
            if address is not None and address.version == 4:
                found["lan_ipv4"] = TaggedAddress("lan_ipv4", choice.address, port_number)
            for name in ("lan_ipv6", "wan_ipv6"):
                found[name] = TaggedAddress(name, settings.host_ip6, port_number)
            origins["TaggedAddresses lan_ipv6/wan_ipv6"] = "-ip6 (the port is published on IPv6)"
    by_hand = sorted(k for k in keys if k.startswith(TAGGED_ADDRESS_PREFIX))
    limit = settings.limits.tagged_addresses_per_service
    for key in by_hand:
        entry = keys[key]
        where = f"key {show(entry.original_key)}"
        name = key[len(TAGGED_ADDRESS_PREFIX):]
        problem = tagged_address_name_problem(name)
        if problem:
            warnings.append(f"{where}: {problem}; ignored")
            continue
        if name not in found and len(found) >= limit:
            warnings.append(f"{where}: a service may have at most {limit} tagged addresses; ignored")
            continue
        parsed = parse_host_port(entry.value)
        if isinstance(parsed, str):
            warnings.append(f"{where}={show(entry.value)}: not host:port ({parsed}); ignored")
            continue
        host, tagged_port = parsed
        if tagged_port is None:
            if port_number is None:
                warnings.append(f"{where}={show(entry.value)}: this service has no port, write host:port; ignored")
                continue
            tagged_port = port_number
        found[name] = TaggedAddress(name, host, tagged_port)
        origins[f"TaggedAddresses {name}"] = _source(entry)
    return tuple(found[name] for name in sorted(found))


# -- weights and tag override ----------------------------------------------------------


def _weights(keys: dict[str, KeyValue], warnings: list[str], origins: dict[str, str]) -> tuple[int, int] | None:
    """SERVICE_WEIGHT (Weights.Passing) and SERVICE_WEIGHT_WARNING (Weights.Warning), 1 each by default."""
    values: list[int | None] = []
    for key in ("weight", "weight_warning"):
        entry = keys.get(key)
        if entry is None or not entry.value.strip():
            values.append(None)
            continue
        number = whole_number(entry.value, 1, WEIGHT_MAX)
        if number is None:
            warnings.append(f"key {show(entry.original_key)}={show(entry.value)}: a weight is a whole number "
                            f"from 1 to {WEIGHT_MAX}; using the default 1")
        else:
            origins[f"Weights.{'Passing' if key == 'weight' else 'Warning'}"] = _source(entry)
        values.append(number)
    if values == [None, None]:
        return None
    return values[0] or 1, values[1] or 1


def _tag_override(keys: dict[str, KeyValue], warnings: list[str], origins: dict[str, str]) -> bool:
    entry = keys.get("enable_tag_override")
    if entry is None or not entry.value.strip():
        return False
    value = entry.value.strip().lower()
    if value in ("true", "1", "yes", "on"):
        origins["EnableTagOverride"] = _source(entry)
        return True
    if value not in ("false", "0", "no", "off"):
        warnings.append(f"key {show(entry.original_key)}={show(entry.value)}: true or false; ignored")
    return False


# -- Connect -----------------------------------------------------------------------------


def _connect(keys: dict[str, KeyValue], choice: AddressChoice, port_number: int | None, settings: MappingSettings,
             warnings: list[str], origins: dict[str, str], own: Callable[[], OwnEndpoints]) -> Connect | None:
    entry = keys.get("connect")
    upstreams_entry = keys.get("connect_upstreams")
    if entry is None or not entry.value.strip():
        if upstreams_entry is not None and upstreams_entry.value.strip():
            warnings.append(f"key {show(upstreams_entry.original_key)}: needs SERVICE_CONNECT=sidecar; ignored")
        return None
    mode = entry.value.strip().lower()
    where = f"key {show(entry.original_key)}={show(entry.value)}"
    if mode not in CONNECT_MODES:
        warnings.append(f"{where}: must be native or sidecar; ignored")
        return None
    if port_number is None:
        warnings.append(f"{where}: a Connect service needs a port (this one is a port-less worker); ignored")
        return None
    origins["Connect"] = _source(entry)
    if mode == "native":
        if upstreams_entry is not None and upstreams_entry.value.strip():
            warnings.append(f"key {show(upstreams_entry.original_key)}: upstreams belong to a sidecar proxy "
                            "(SERVICE_CONNECT=sidecar); ignored")
        return Connect(native=True)
    # The proxy runs beside the agent and forwards the mesh's traffic to address:port, as a
    # check probes it: the same rule (a SERVICE_IP of 127.0.0.1 with port 8500 is the agent's API).
    problem = check_target_problem(choice.address, port_number, own(), settings.checks.policy)
    if problem:
        origins.pop("Connect", None)
        warnings.append(f"{where}: the sidecar proxy would forward to {show(choice.address)} port {port_number}: "
                        f"{problem}; ignored")
        return None
    upstreams: tuple[Upstream, ...] = ()
    if upstreams_entry is not None and upstreams_entry.value.strip():
        refused_ports = CONSUL_PORTS | set(settings.checks.policy.agent_ports)
        upstreams = _upstreams(upstreams_entry, settings.limits.upstreams_per_service, refused_ports, warnings)
        if upstreams:
            origins["Connect upstreams"] = _source(upstreams_entry)
    return Connect(sidecar=True, upstreams=upstreams)


def _upstreams(entry: KeyValue, limit: int, refused_ports: frozenset[int] | set[int], warnings: list[str]
               ) -> tuple[Upstream, ...]:
    """`name:localport[,name:localport]`; a bad item costs that upstream only. The local
    port is bound by the proxy (on the host, for Consul's built-in proxy run there): never
    below 1024, never one of the agent's, where it would take the place of the agent's API."""
    where = f"key {show(entry.original_key)}"
    found: dict[int, Upstream] = {}
    items = [item.strip() for item in entry.value.split(",", limit + 1)]
    if len(items) > limit:
        warnings.append(f"{where}: at most {limit} upstreams; the rest are ignored")
        items = items[:limit]
    for item in items:
        if not item:
            continue
        name, colon, port_text = item.rpartition(":")
        local_port = whole_number(port_text, 1, 65535) if colon else None
        problem = identifier_problem(name, "service name") if name else "a service name is needed"
        if local_port is None or problem:
            warnings.append(f"{where}: upstream {show(item, 60)} is not name:localport"
                            f"{f' ({problem})' if problem else ''}; ignored")
            continue
        if local_port < LOWEST_UPSTREAM_PORT or local_port in refused_ports:
            warnings.append(f"{where}: upstream {show(item, 60)}: local port {local_port} is below "
                            f"{LOWEST_UPSTREAM_PORT} or one of the Consul agent's; ignored")
            continue
        if local_port in found:
            warnings.append(f"{where}: local port {local_port} is already the upstream "
                            f"{show(found[local_port].destination)}'s; {show(item, 60)} ignored")
            continue
        found[local_port] = Upstream(destination=name, local_port=local_port)
    return tuple(sorted(found.values(), key=lambda u: (u.local_port, u.destination)))
