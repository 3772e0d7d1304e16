"""Which of a container's ports become services: Docker's exposed and
published ports, or the ones it declares with SERVICE_PORT. Pure: no I/O,
never raises."""

from __future__ import annotations

import itertools
import re
from typing import Any

from consul_reg.mapping.addresses import UNSPECIFIED_HOST_IPS, plain_ip
from consul_reg.mapping.labels import KeyValue, show
from consul_reg.mapping.settings import PublishedPort
from consul_reg.mapping.validate import Limits, parse_ip

PORT_NUMBER = re.compile(r"[0-9]{1,5}")
PROTOCOLS = ("tcp", "udp", "sctp")

Parsed = tuple[str, str]  # ("80", "tcp")


def published_ports(container: dict[str, Any], internal: bool, limits: Limits = Limits(),
                    warnings: list[str] | None = None, declared: KeyValue | None = None) -> list[PublishedPort]:
    """The ports that become services, sorted by number and protocol.

    `declared` is the container's SERVICE_PORT: the container ports it listens
    on, in place of what the image exposes (host network without EXPOSE, or
    an image that exposes more or other ports than are used)."""
    warnings = [] if warnings is None else warnings
    host_mode = _dict(container.get("HostConfig")).get("NetworkMode") == "host"
    exposed, bound = port_entries(container, limits, warnings)
    declared_ports = declared_port_list(declared, limits, warnings) if declared is not None else None
    if declared_ports is not None:
        exposed = declared_ports
        bound = [(parsed, bindings) for parsed, bindings in bound if parsed in set(declared_ports)]
    found: dict[Parsed, PublishedPort] = {}
    is_declared = declared_ports is not None
    if host_mode:
        # No port mapping in host mode: exposed ports are reachable as they are, on the host's addresses.
        for number, protocol in exposed:
            found[(number, protocol)] = PublishedPort(number, protocol, host_port=number, host_ip="",
                                                      on_ipv6=True, declared=is_declared)
    for (number, protocol), bindings in bound:
        binding = first_binding(bindings)
        if binding is not None:
            host_port, host_ip, on_ipv4, on_ipv6 = binding
            found[(number, protocol)] = PublishedPort(number, protocol, host_port=host_port, host_ip=host_ip,
                                                      on_ipv4=on_ipv4, on_ipv6=on_ipv6, declared=is_declared)
        elif internal and (number, protocol) not in found:
            found[(number, protocol)] = PublishedPort(number, protocol, host_port="", host_ip="", declared=is_declared)
    if internal:
        for parsed in exposed:
            found.setdefault(parsed, PublishedPort(parsed[0], parsed[1], host_port="", host_ip="",
                                                   declared=is_declared))
    chosen = [p for p in found.values() if internal or p.host_port]
    if declared is not None and declared_ports is not None:
        for number, protocol in sorted(set(declared_ports) - {(p.exposed, p.protocol) for p in chosen}):
            warnings.append(f"key {show(declared.original_key)}: port {number}/{protocol} is not published "
                            "(-p) and the container is not on the host network; run consul-reg with -internal "
                            "to register container ports; skipped")
    return sorted(chosen, key=lambda p: (int(p.exposed), p.protocol))


def declared_port_list(entry: KeyValue, limits: Limits, warnings: list[str]) -> list[Parsed] | None:
    """SERVICE_PORT=8080 or 8080,9090/udp -> the ports; None when nothing usable
    was declared (the key is then ignored, warned, and Docker's ports apply)."""
    where = f"key {show(entry.original_key)}"
    parts = entry.value.split(",", limits.port_entries)
    if len(parts) > limits.port_entries:
        warnings.append(f"{where}: more than {limits.port_entries} ports; only the first "
                        f"{limits.port_entries} are looked at")
        parts = parts[:limits.port_entries]
    found: list[Parsed] = []
    for part in parts:
        parsed = parse_port_key(part.strip())
        if parsed is None:
            warnings.append(f"{where}: {show(part.strip(), 40)} is not a port (like 8080 or 8080/udp), ignored")
        elif parsed not in found:
            found.append(parsed)
    if not found:
        warnings.append(f"{where}: no usable port; the ports Docker shows are used")
        return None
    return found


def port_entries(container: dict[str, Any], limits: Limits, warnings: list[str]
                 ) -> tuple[list[Parsed], list[tuple[Parsed, object]]]:
    """Config.ExposedPorts and NetworkSettings.Ports parsed once, at most
    limits.port_entries of each looked at (a bound on the work per pass)."""
    exposed_map = _dict(_dict(container.get("Config")).get("ExposedPorts"))
    ports_map = _dict(_dict(container.get("NetworkSettings")).get("Ports"))
    for what, mapping in (("exposed", exposed_map), ("published", ports_map)):
        if len(mapping) > limits.port_entries:
            warnings.append(f"it declares {len(mapping)} {what} port entries; only the first "
                            f"{limits.port_entries} are looked at")
    exposed = [parsed for key in itertools.islice(exposed_map, limits.port_entries)
               if (parsed := parse_port_key(key))]
    bound = [(parsed, bindings) for key, bindings in itertools.islice(ports_map.items(), limits.port_entries)
             if (parsed := parse_port_key(key))]
    return exposed, bound


def first_binding(bindings: object) -> tuple[str, str, bool, bool] | None:
    """(host port, host IP, on IPv4, on IPv6) of a published port; the
    bindings of one host port on 0.0.0.0 and :: are one port on both families.
    The host IP is "" unless the port is published on exactly one specific address."""
    if not isinstance(bindings, list):
        return None
    usable = [b for b in bindings if isinstance(b, dict) and isinstance(b.get("HostPort"), (str, int))
              and b.get("HostPort") not in ("", 0)]
    if not usable:
        return None
    host_port = str(usable[0]["HostPort"])
    ips = {binding_text(b.get("HostIp") or "") for b in usable if str(b["HostPort"]) == host_port}
    ips = {ip for ip in ips if ip in UNSPECIFIED_HOST_IPS or parse_ip(ip) is not None}
    specific = sorted(ip for ip in ips if ip not in UNSPECIFIED_HOST_IPS)
    versions = {parse_ip(ip).version for ip in specific}  # type: ignore[union-attr]
    on_ipv4 = bool(ips & {"", "0.0.0.0"}) or 4 in versions or not ips
    on_ipv6 = bool(ips & {"", "::"}) or 6 in versions
    if len(specific) == 1 and len(ips) == 1:
        return host_port, plain_ip(specific[0]), on_ipv4, on_ipv6
    return host_port, "", on_ipv4, on_ipv6


def parse_port_key(key: object) -> Parsed | None:
    """"80/tcp" -> ("80", "tcp"); None for anything else (ASCII digits only)."""
    if not isinstance(key, str):
        return None
    number, _, protocol = key.partition("/")
    if not PORT_NUMBER.fullmatch(number) or not 0 < int(number) < 65536:
        return None
    protocol = (protocol or "tcp").lower()
    if protocol not in PROTOCOLS:
        return None
    return str(int(number)), protocol


def binding_text(value: object) -> str:
    """A binding's HostIp or HostPort as text: Docker writes a string (a port may come as a
    number); anything else is "" (str() of a value nested a thousand deep would raise)."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else ""


def int_or_none(text: str) -> int | None:
    return int(text) if PORT_NUMBER.fullmatch(text) and 0 < int(text) < 65536 else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
