"""Container inspect data -> service records. Pure: no I/O, never raises.

Follows registrator's documented semantics (docs/user/services.md), with the
differences listed in the README's "moving from registrator" section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from consul_reg.core.records import Check, Service, marker_meta
from consul_reg.mapping import labels, swarm, workers
from consul_reg.mapping.addresses import AddressChoice, choose_address
from consul_reg.mapping.check_targets import OwnEndpoints
from consul_reg.mapping.checks import asks_checks, service_checks
from consul_reg.mapping.default_ids import SIDECAR_ID_SUFFIX, default_id_host, is_sidecar_shaped
from consul_reg.mapping.definitions import Extras, service_extras
from consul_reg.mapping.endpoints import own_endpoints
from consul_reg.mapping.json_checks import json_checks, parse_checks
from consul_reg.mapping.labels import KeyValue, ServiceKeys, show
from consul_reg.mapping.ports import int_or_none, published_ports
from consul_reg.mapping.registration import registration_bytes
from consul_reg.mapping.restart_policy import restart_policy
from consul_reg.mapping.selection import selected
from consul_reg.mapping.settings import CheckSettings, MappingSettings, PublishedPort
from consul_reg.mapping.tags_meta import capped_tags, service_meta, tags_of, template_tags, without_reserved
from consul_reg.mapping.validate import identifier_problem, squats_host_namespace

__all__ = ["CheckSettings", "ContainerRecords", "MappingSettings", "PublishedPort", "default_service_name",
           "map_container", "published_ports", "service_meta"]

COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


@dataclass
class ContainerRecords:
    """What one container maps to: its services, plus why and what was wrong."""

    container_id: str
    container_name: str
    services: list[Service] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Set when the container registers nothing: the reason, for logs and explain.
    skipped_reason: str = ""


def map_container(
    container: dict[str, Any],
    settings: MappingSettings,
    network_peer: dict[str, Any] | None = None,
    extra_sources: tuple[tuple[str, list[tuple[str, str]]], ...] = (),
) -> ContainerRecords:
    """Map one container's inspect dict to the services it should have.

    `network_peer` is the inspect dict of the container whose network this
    one shares (`--net=container:<other>`), when there is one.
    """
    container = container if isinstance(container, dict) else {}
    network_peer = network_peer if isinstance(network_peer, dict) else None
    config = _dict(container.get("Config"))
    container_id = str(container.get("Id") or "")
    container_name = str(container.get("Name") or "").lstrip("/") or container_id[:12]
    records = ContainerRecords(container_id=container_id, container_name=container_name)
    _map_into(records, container, config, settings, network_peer, extra_sources)
    records.warnings = _bounded(records.warnings, settings.limits.warnings_per_container)
    return records


def _map_into(records: ContainerRecords, container: dict[str, Any], config: dict[str, Any],
              settings: MappingSettings, network_peer: dict[str, Any] | None,
              extra_sources: tuple[tuple[str, list[tuple[str, str]]], ...]) -> None:
    limits = settings.limits
    keys = labels.collect(config.get("Env"), _dict(config.get("Labels")), *extra_sources, limits=limits)
    records.warnings.extend(keys.warnings)
    if settings.tags_template is not None:
        settings = replace(settings, force_tags=tuple(template_tags(container, settings, records.warnings)))

    unmatched = selected(container, settings.selection)
    if unmatched is not None:
        records.skipped_reason = f"it does not match --filter label={labels.printable(unmatched.docker_form, 200)}"
        return

    ignore = keys.general.get("ignore")
    if ignore and labels.is_true_flag(ignore.value):
        records.skipped_reason = f"{ignore.original_key}={show(ignore.value)} asks to ignore it"
        return

    declared = keys.general.get("port")
    ports = published_ports(container, settings.internal, limits, records.warnings,
                            declared if declared is not None and declared.value.strip() else None)
    if len(ports) > limits.services_per_container:
        records.warnings.append(f"it has {len(ports)} ports; only the lowest {limits.services_per_container} "
                                "become services (--max-services-per-container)")
        ports = ports[:limits.services_per_container]
    _warn_unknown_port_keys(keys, ports, records.warnings)
    context = _Context(container, keys, settings, network_peer, records, ports=tuple(ports),
                       general_tags=tags_of(keys.general.get("tags"), limits, records.warnings))
    if not ports:
        worker = _portless_service(context)
        if worker is not None:
            records.services.append(worker)
        elif not records.skipped_reason:
            records.skipped_reason = ("it publishes no port" + (" and exposes none" if settings.internal else "")
                                      + " and sets no SERVICE_NAME")
        return

    is_group = len(ports) > 1
    default_name = default_service_name(container, records.container_name)
    for port in ports:
        service = _service_for_port(context, port, is_group, default_name)
        if service is not None:
            records.services.append(service)
    if not records.services and not records.skipped_reason:
        records.skipped_reason = "every port was ignored, unnamed or refused"


@dataclass(frozen=True)
class _Context:
    """What every service of one container shares, computed once."""

    container: dict[str, Any]
    keys: ServiceKeys
    settings: MappingSettings
    network_peer: dict[str, Any] | None
    records: ContainerRecords
    ports: tuple[PublishedPort, ...]  # the container's ports that become services
    general_tags: list[str]
    # SERVICE_CHECKS values parsed once per container, and how many checks they gave so far.
    parsed_checks: dict[str, list[object] | str] = field(default_factory=dict)
    json_checks_made: list[int] = field(default_factory=lambda: [0])
    sidecars_made: list[int] = field(default_factory=lambda: [0])
    registration_bytes: list[int] = field(default_factory=lambda: [0])  # of the services kept so far

    @cached_property
    def own(self) -> OwnEndpoints:
        """What the container's checks and sidecar may probe: made when the first of them
        asks (most containers have neither, and it is a third of a mapping's work)."""
        return own_endpoints(self.container, self.network_peer, self.settings, self.ports)


def default_service_name(container: dict[str, Any], container_name: str) -> str:
    """A Swarm task's service name; else the image's base name, without registry host, tag or digest."""
    if swarm.service_name(container):
        return swarm.service_name(container)
    image = str(_dict(container.get("Config")).get("Image") or "")
    if image.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{12,64}", image):
        # Referenced by bare ID (docker compose v2 does this): no name to take.
        compose_service = _dict(_dict(container.get("Config")).get("Labels")).get(COMPOSE_SERVICE_LABEL)
        return str(compose_service) if compose_service else container_name
    base = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return base.split(":", 1)[0] or container_name


def _service_for_port(context: _Context, port: PublishedPort, is_group: bool, default_name: str) -> Service | None:
    keys, settings, records = context.keys, context.settings, context.records
    port_keys = keys.by_port.get(port.exposed, {})
    merged = keys.for_port(port.exposed)
    where = f"port {port.exposed}/{port.protocol}"

    ignore = port_keys.get("ignore")
    if ignore and labels.is_true_flag(ignore.value):
        return None

    name_entry = _non_empty(port_keys.get("name"), records.warnings)
    if name_entry is not None:
        name = name_entry.value.strip()
    else:
        name_entry = _non_empty(keys.general.get("name"), records.warnings)
        if name_entry is None and settings.explicit:
            return None
        name = (name_entry.value.strip() if name_entry else default_name) + (f"-{port.exposed}" if is_group else "")

    id_entry = _non_empty(port_keys.get("id"), records.warnings)
    if id_entry is not None:
        service_id = id_entry.value.strip()
    else:
        id_entry = _non_empty(keys.general.get("id"), records.warnings)
        if id_entry is not None:
            service_id = id_entry.value.strip() + (f"-{port.exposed}" if is_group else "")
        else:
            service_id = f"{settings.hostname}:{records.container_name}:{port.exposed}"
            if port.protocol == "udp":
                service_id += ":udp"
    if not _identifiers_ok(service_id, id_entry, name, name_entry, settings.hostname, records.warnings):
        return None

    tags = list(context.general_tags)
    tags.extend(tags_of(port_keys.get("tags"), settings.limits, records.warnings))
    tags = capped_tags(tags, service_id, settings, records.warnings) + ["udp"] * (port.protocol == "udp")

    choice = choose_address(context.container, merged, port, settings, context.network_peer, records.warnings)
    if not choice.address:
        return None
    if settings.internal:
        port_number = int(port.exposed)
    else:
        host_port = int_or_none(port.host_port)
        if host_port is None:
            records.warnings.append(f"{where}: host port {show(port.host_port)} is not a number, skipped")
            return None
        port_number = host_port

    checks = service_checks(merged, service_id, name, choice.address, port_number, records.container_id,
                            settings.checks, records.warnings, context.own, settings.limits) \
        if asks_checks(merged) else ()
    if workers.has_healthcheck(context.container):
        checks += (workers.docker_health_check(service_id, name, records.container_id,
                                               settings.health_reassert_seconds),)
    return _service(context, merged, service_id, name, choice, port, port_number, tags, checks)


def _service(context: _Context, keys: dict[str, KeyValue], service_id: str, name: str, choice: AddressChoice,
             port: PublishedPort | None, port_number: int | None, tags: list[str], checks: tuple[Check, ...]
             ) -> Service | None:
    """The record, with what every service gets: Meta and the marker, SERVICE_CHECKS, the extras;
    None when its registration is over the size caps (warned)."""
    settings, records = context.settings, context.records
    marker = marker_meta(settings.hostname, records.container_id, settings.instance)
    meta = without_reserved(service_meta(keys, records.warnings, settings.limits,
                                         marker_pairs=len(marker) + 1))  # + the digest
    meta.update(marker)
    entry = keys.get("checks")
    if entry is not None and entry.value.strip():
        parsed = context.parsed_checks.get(entry.value)
        if parsed is None:
            parsed = context.parsed_checks.setdefault(entry.value, parse_checks(entry))
        from_json = json_checks(entry, service_id, name, choice.address, port_number, records.container_id,
                                settings.checks, records.warnings, context.own,
                                {c.check_id for c in checks}, settings.limits, parsed,
                                settings.limits.json_checks_per_container - context.json_checks_made[0])
        context.json_checks_made[0] += len(from_json)
        checks += from_json
    extras = _capped_sidecars(context, keys, service_id, service_extras(
        keys, service_id, choice, port, port_number, settings, records.warnings, lambda: context.own))
    return _within_size(context, Service(
        id=service_id,
        name=name,
        address=choice.address,
        port=port_number,
        tags=tuple(labels.unique(tags)),
        meta=tuple(sorted(meta.items())),
        checks=checks,
        container_id=records.container_id,
        container_name=records.container_name,
        exposed_port=f"{port.exposed}/{port.protocol}" if port is not None else "",
        address_reason=choice.reason,
        tagged_addresses=extras.tagged_addresses,
        weights=extras.weights,
        enable_tag_override=extras.enable_tag_override,
        connect=extras.connect,
        origins=extras.origins,
        restart=restart_policy(keys, checks, context.container, records.warnings),
    ))


def _capped_sidecars(context: _Context, keys: dict[str, KeyValue], service_id: str, extras: Extras) -> Extras:
    """Each sidecar takes a port of the agent's sidecar range (21000-21255 by default),
    shared by every service of this host: a container gets a few, never the range."""
    if extras.connect is None or not extras.connect.sidecar:
        return extras
    limit = context.settings.limits.sidecars_per_container
    if context.sidecars_made[0] < limit:
        context.sidecars_made[0] += 1
        return extras
    entry = keys.get("connect")
    where = f"key {show(entry.original_key)}" if entry is not None else "SERVICE_CONNECT"
    context.records.warnings.append(
        f"{where}: a container may have at most {limit} sidecar proxies (each takes a port of the agent's sidecar "
        f"range, shared by this host); service {show(service_id)} is registered without one")
    origins = tuple((k, v) for k, v in extras.origins if not k.startswith("Connect"))
    return replace(extras, connect=None, origins=origins)


def _within_size(context: _Context, service: Service) -> Service | None:
    """The body the agent is sent for one service, and for all of one container's, is
    bounded: a service over either cap is refused, named in the warning."""
    limits, warnings = context.settings.limits, context.records.warnings
    size = registration_bytes(service)
    if size > limits.registration_bytes:
        warnings.append(f"service {show(service.id)}: its registration would be {size} bytes, over the limit of "
                        f"{limits.registration_bytes} for one service (checks: {len(service.checks)}, tags: "
                        f"{len(service.tags)}); this service is refused")
        return None
    if context.registration_bytes[0] + size > limits.registration_bytes_per_container:
        warnings.append(f"service {show(service.id)}: its registration ({size} bytes) would take this container's "
                        f"registrations over {limits.registration_bytes_per_container} bytes in all; "
                        "this service is refused")
        return None
    context.registration_bytes[0] += size
    return service


def _portless_service(context: _Context) -> Service | None:
    """A worker that listens on no port but names itself: registered without a
    port, with a heartbeat the daemon owns."""
    keys, settings, records = context.keys, context.settings, context.records
    name_entry = _non_empty(keys.general.get("name"), records.warnings)
    if name_entry is None:
        return None
    name = name_entry.value.strip()
    id_entry = _non_empty(keys.general.get("id"), records.warnings)
    service_id = id_entry.value.strip() if id_entry else f"{settings.hostname}:{records.container_name}"
    if not _identifiers_ok(service_id, id_entry, name, name_entry, settings.hostname, records.warnings):
        return None
    no_port = PublishedPort(exposed="", protocol="", host_port="", host_ip="")
    choice = choose_address(context.container, keys.general, no_port, settings, context.network_peer,
                            records.warnings)
    if not choice.address:
        return None
    tags = capped_tags(list(context.general_tags), service_id, settings, records.warnings)
    checks = service_checks(keys.general, service_id, name, choice.address, None, records.container_id,
                            settings.checks, records.warnings, context.own, settings.limits) \
        if asks_checks(keys.general) else ()
    checks += (workers.heartbeat_check(keys.general, service_id, name, records.container_id, records.warnings),)
    return _service(context, keys.general, service_id, name, choice, None, None, tags, checks)


def _identifiers_ok(service_id: str, id_entry: KeyValue | None, name: str, name_entry: KeyValue | None,
                    hostname: str, warnings: list[str]) -> bool:
    """Validate one service's ID and name; a refusal is one warning naming the key."""
    for value, entry, what in ((service_id, id_entry, "service ID"), (name, name_entry, "service name")):
        problem = identifier_problem(value, what)
        if problem is None and what == "service ID" and entry is not None and \
                squats_host_namespace(value, hostname):
            problem = (f"IDs starting with {show(hostname + ':')} are this host's default IDs "
                       "(<hostname>:<container>:<port>) and a container may not choose one")
        elif problem is None and what == "service ID" and entry is not None and (other := default_id_host(value)):
            problem = (f"it has the shape of host {show(other)}'s default IDs "
                       "(<hostname>:<container>:<port>[:udp], <hostname>:<container>), and a container may not "
                       "choose another host's ID (mirrors and agents may be shared)")
        elif problem is None and what == "service ID" and entry is not None and is_sidecar_shaped(value):
            problem = (f"IDs ending in {show(SIDECAR_ID_SUFFIX)} are the ones the agent gives sidecar proxies "
                       "(<service ID>-sidecar-proxy), and a container may not choose one")
        if problem:
            origin = f"key {show(entry.original_key)}={show(entry.value)}" if entry else f"default {what} {show(value)}"
            warnings.append(f"{origin}: {problem}; this service is skipped")
            return False
    return True


def _bounded(warnings: list[str], limit: int) -> list[str]:
    """Each warning once, at most `limit` of them (a summary line for the rest)."""
    unique = labels.unique(warnings)
    if len(unique) <= limit:
        return unique
    return unique[:limit] + [f"{len(unique) - limit} more warnings not shown"]


def _warn_unknown_port_keys(keys: ServiceKeys, ports: list[PublishedPort], warnings: list[str]) -> None:
    known = {p.exposed for p in ports}
    for port, scoped in sorted(keys.by_port.items()):
        if "port" in scoped:
            warnings.append(f"key {show(scoped['port'].original_key)}: SERVICE_PORT is not port-scoped "
                            "(it declares the ports); ignored")
        if port not in known:
            for entry in scoped.values():
                warnings.append(f"key {show(entry.original_key)}: port {port} is not "
                                "published by this container, ignored")


def _non_empty(entry: KeyValue | None, warnings: list[str]) -> KeyValue | None:
    if entry is None:
        return None
    if not entry.value.strip():
        warnings.append(f"key {show(entry.original_key)} is empty, ignored")
        return None
    return entry


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
