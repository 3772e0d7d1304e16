"""Container inspect data -> service records. Pure: no I/O, never raises.

Follows registrator's documented semantics (docs/user/services.md), with the
differences listed in the README's "moving from registrator" section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from consul_reg import labels, swarm, workers
from consul_reg.addresses import UNSPECIFIED_HOST_IPS, choose_address, plain_ip
from consul_reg.checks import CheckSettings, service_checks
from consul_reg.labels import KeyValue, ServiceKeys
from consul_reg.model import MARKER_KEYS, Service, marker_meta
from consul_reg.tags_template import Template, TemplateError

COMPOSE_SERVICE_LABEL = "com.docker.compose.service"

# Consul's limits on service Meta (agent/structs validateMetaPair).
META_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_PAIRS = 64
META_MAX_KEY_LENGTH = 128
META_MAX_VALUE_LENGTH = 512
META_RESERVED_PREFIX = "consul-"


@dataclass(frozen=True)
class MappingSettings:
    """The daemon's flags and facts that shape every container's records."""

    hostname: str
    default_address: str = "127.0.0.1"
    default_address_reason: str = "the Consul agent's advertise address"
    host_ip: str | None = None  # -ip
    internal: bool = False  # -internal
    explicit: bool = False  # -explicit
    use_ip_from_label: str | None = None  # -useIpFromLabel
    force_tags: tuple[str, ...] = ()  # -tags
    tags_template: Template | None = None  # -tags in Go-template form, rendered per container
    checks: CheckSettings = CheckSettings()
    health_reassert_seconds: float = 30.0  # how often docker-health checks are re-asserted


@dataclass(frozen=True)
class PublishedPort:
    exposed: str  # "80"
    protocol: str  # "tcp" / "udp"
    host_port: str  # "" when not published
    host_ip: str  # "" when published on every address


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
    config = _dict(container.get("Config"))
    container_id = str(container.get("Id") or "")
    container_name = str(container.get("Name") or "").lstrip("/") or container_id[:12]
    records = ContainerRecords(container_id=container_id, container_name=container_name)

    keys = labels.collect(config.get("Env"), _dict(config.get("Labels")), *extra_sources)
    records.warnings.extend(keys.warnings)
    if settings.tags_template is not None:
        try:
            rendered = labels.split_tags(settings.tags_template.render(container))
        except TemplateError as error:
            records.warnings.append(f"-tags template: {error}; no -tags for this container")
            rendered = []
        settings = replace(settings, force_tags=tuple(rendered))

    ignore = keys.general.get("ignore")
    if ignore and labels.is_true_flag(ignore.value):
        records.skipped_reason = f"{ignore.original_key}={labels.show(ignore.value)} asks to ignore it"
        return records

    ports = published_ports(container, settings.internal)
    _warn_unknown_port_keys(keys, ports, records.warnings)
    if not ports:
        worker = _portless_service(container, keys, settings, network_peer, records)
        if worker is not None:
            records.services.append(worker)
        else:
            records.skipped_reason = ("it publishes no port" + (" and exposes none" if settings.internal else "")
                                      + " and sets no SERVICE_NAME")
        return records

    is_group = len(ports) > 1
    default_name = default_service_name(container, container_name)
    for port in ports:
        service = _service_for_port(
            container, keys, port, is_group, default_name, settings, network_peer, records
        )
        if service is not None:
            records.services.append(service)
    if not records.services and not records.skipped_reason:
        records.skipped_reason = "every port was ignored or unnamed"
    return records


def published_ports(container: dict[str, Any], internal: bool) -> list[PublishedPort]:
    """The ports that become services, sorted by number and protocol."""
    config = _dict(container.get("Config"))
    host_config = _dict(container.get("HostConfig"))
    network_settings = _dict(container.get("NetworkSettings"))
    found: dict[str, PublishedPort] = {}

    if host_config.get("NetworkMode") == "host":
        # No port mapping in host mode: exposed ports are reachable as they are.
        for key in _dict(config.get("ExposedPorts")):
            parsed = _parse_port_key(key)
            if parsed:
                found[key] = PublishedPort(parsed[0], parsed[1], host_port=parsed[0], host_ip="")

    for key, bindings in _dict(network_settings.get("Ports")).items():
        parsed = _parse_port_key(key)
        if not parsed:
            continue
        binding = _first_binding(bindings)
        if binding is not None:
            found[key] = PublishedPort(parsed[0], parsed[1], host_port=binding[0], host_ip=binding[1])
        elif internal and key not in found:
            found[key] = PublishedPort(parsed[0], parsed[1], host_port="", host_ip="")

    if internal:
        for key in _dict(config.get("ExposedPorts")):
            parsed = _parse_port_key(key)
            if parsed and key not in found:
                found[key] = PublishedPort(parsed[0], parsed[1], host_port="", host_ip="")

    chosen = [p for p in found.values() if internal or p.host_port]
    return sorted(chosen, key=lambda p: (int(p.exposed), p.protocol))


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


def _service_for_port(
    container: dict[str, Any],
    keys: ServiceKeys,
    port: PublishedPort,
    is_group: bool,
    default_name: str,
    settings: MappingSettings,
    network_peer: dict[str, Any] | None,
    records: ContainerRecords,
) -> Service | None:
    port_keys = keys.by_port.get(port.exposed, {})
    merged = keys.for_port(port.exposed)
    where = f"port {port.exposed}/{port.protocol}"

    ignore = port_keys.get("ignore")
    if ignore and labels.is_true_flag(ignore.value):
        return None

    name = _non_empty(port_keys.get("name"), records.warnings)
    if name is None:
        general_name = _non_empty(keys.general.get("name"), records.warnings)
        if general_name is None and settings.explicit:
            return None
        name = (general_name or default_name) + (f"-{port.exposed}" if is_group else "")

    service_id = _non_empty(port_keys.get("id"), records.warnings)
    if service_id is None:
        general_id = _non_empty(keys.general.get("id"), records.warnings)
        if general_id is not None:
            service_id = general_id + (f"-{port.exposed}" if is_group else "")
        else:
            service_id = f"{settings.hostname}:{records.container_name}:{port.exposed}"
            if port.protocol == "udp":
                service_id += ":udp"

    tags: list[str] = []
    for scope in (keys.general, port_keys):
        if "tags" in scope:
            tags.extend(labels.split_tags(scope["tags"].value))
    tags.extend(settings.force_tags)
    if port.protocol == "udp":
        tags.append("udp")

    address, reason = choose_address(container, merged, port, settings, network_peer, records.warnings)
    if settings.internal:
        port_number = int(port.exposed)
    else:
        port_number = _int_or_none(port.host_port)
        if port_number is None:
            records.warnings.append(f"{where}: host port {labels.show(port.host_port)} is not a number, skipped")
            return None

    meta = service_meta(merged, records.warnings)
    meta.update(marker_meta(settings.hostname, records.container_id))
    checks = service_checks(merged, service_id, name, address, port_number, records.container_id,
                            settings.checks, records.warnings)
    if workers.has_healthcheck(container):
        checks += (workers.docker_health_check(service_id, name, records.container_id,
                                               settings.health_reassert_seconds),)
    return Service(
        id=service_id,
        name=name,
        address=address,
        port=port_number,
        tags=tuple(labels.unique(tags)),
        meta=tuple(sorted(meta.items())),
        checks=checks,
        container_id=records.container_id,
        container_name=records.container_name,
        exposed_port=f"{port.exposed}/{port.protocol}",
        address_reason=reason,
    )


def _portless_service(
    container: dict[str, Any],
    keys: ServiceKeys,
    settings: MappingSettings,
    network_peer: dict[str, Any] | None,
    records: ContainerRecords,
) -> Service | None:
    """A worker that listens on no port but names itself: registered without a
    port, with a heartbeat the daemon owns."""
    name = _non_empty(keys.general.get("name"), records.warnings)
    if name is None:
        return None
    service_id = _non_empty(keys.general.get("id"), records.warnings) or \
        f"{settings.hostname}:{records.container_name}"
    no_port = PublishedPort(exposed="", protocol="", host_port="", host_ip="")
    address, reason = choose_address(container, keys.general, no_port, settings, network_peer, records.warnings)
    tags = labels.split_tags(keys.general["tags"].value) if "tags" in keys.general else []
    meta = service_meta(keys.general, records.warnings)
    meta.update(marker_meta(settings.hostname, records.container_id))
    checks = service_checks(keys.general, service_id, name, address, None, records.container_id,
                            settings.checks, records.warnings)
    checks += (workers.heartbeat_check(keys.general, service_id, name, records.container_id, records.warnings),)
    return Service(
        id=service_id,
        name=name,
        address=address,
        port=None,
        tags=tuple(labels.unique([*tags, *settings.force_tags])),
        meta=tuple(sorted(meta.items())),
        checks=checks,
        container_id=records.container_id,
        container_name=records.container_name,
        address_reason=reason,
    )


def service_meta(keys: dict[str, KeyValue], warnings: list[str]) -> dict[str, str]:
    """Every key that does not configure the daemon, as Consul-valid Meta."""
    meta: dict[str, str] = {}
    for key in sorted(keys):
        entry = keys[key]
        if labels.is_daemon_key(key):
            continue
        where = f"key {labels.show(entry.original_key)}"
        if key in MARKER_KEYS or key.startswith(META_RESERVED_PREFIX):
            warnings.append(f"{where}: Meta key {labels.show(key)} is reserved, dropped")
            continue
        fixed = re.sub(r"[^A-Za-z0-9_-]", "_", key)
        if fixed != key:
            warnings.append(f"{where}: Meta keys may only hold A-Z a-z 0-9 _ -, registered as {labels.show(fixed)}")
        if len(fixed) > META_MAX_KEY_LENGTH:
            warnings.append(f"{where}: Meta key longer than {META_MAX_KEY_LENGTH} characters, dropped")
            continue
        if len(entry.value) > META_MAX_VALUE_LENGTH:
            warnings.append(f"{where}: value longer than {META_MAX_VALUE_LENGTH} characters "
                            f"({len(entry.value)}), dropped")
            continue
        if fixed in meta:
            warnings.append(f"{where}: Meta key {labels.show(fixed)} already set by another key, dropped")
            continue
        if len(meta) >= META_MAX_PAIRS - len(MARKER_KEYS):
            warnings.append(f"{where}: Consul allows {META_MAX_PAIRS} Meta pairs and consul-reg needs "
                            f"{len(MARKER_KEYS)}, dropped")
            continue
        meta[fixed] = entry.value
    return meta


def _warn_unknown_port_keys(keys: ServiceKeys, ports: list[PublishedPort], warnings: list[str]) -> None:
    known = {p.exposed for p in ports}
    for port, scoped in sorted(keys.by_port.items()):
        if port not in known:
            for entry in scoped.values():
                warnings.append(f"key {labels.show(entry.original_key)}: port {port} is not "
                                "published by this container, ignored")


def _non_empty(entry: KeyValue | None, warnings: list[str]) -> str | None:
    if entry is None:
        return None
    if not entry.value.strip():
        warnings.append(f"key {labels.show(entry.original_key)} is empty, ignored")
        return None
    return entry.value.strip()


def _first_binding(bindings: object) -> tuple[str, str] | None:
    """(host port, host IP) of a published port; 0.0.0.0 and :: count as one."""
    if not isinstance(bindings, list):
        return None
    usable = [b for b in bindings if isinstance(b, dict) and b.get("HostPort")]
    if not usable:
        return None
    host_port = str(usable[0]["HostPort"])
    ips = {str(b.get("HostIp") or "") for b in usable if str(b["HostPort"]) == host_port}
    specific = sorted(ip for ip in ips if ip not in UNSPECIFIED_HOST_IPS)
    if len(specific) == 1 and len(ips) == 1:
        return host_port, plain_ip(specific[0])
    return host_port, ""


def _parse_port_key(key: object) -> tuple[str, str] | None:
    """"80/tcp" -> ("80", "tcp"); None for anything else."""
    if not isinstance(key, str):
        return None
    number, _, protocol = key.partition("/")
    if not number.isdigit() or not 0 < int(number) < 65536:
        return None
    return str(int(number)), (protocol or "tcp").lower()


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
