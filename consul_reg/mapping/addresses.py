"""Which address a service is registered at: the rules, in order. Pure: this
host's own primary address is asked of the kernel by app/host.py."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from consul_reg.mapping import labels
from consul_reg.mapping.labels import KeyValue
from consul_reg.mapping.settings import MappingSettings, PublishedPort
from consul_reg.mapping.validate import address_problem, parse_ip

UNSPECIFIED_HOST_IPS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class AddressChoice:
    address: str  # "" when the container declared an unusable one (the service is skipped)
    reason: str
    declared: bool = False  # written by the container (SERVICE_IP, -useIpFromLabel's label)
    ipv6: str = ""  # -internal on a dual-stack network: the container's IPv6 beside `address`, its IPv4
    at_host: bool = False  # this host's own address (-ip, -ip6, the default): -ip6 adds the IPv6 beside it


def choose_address(
    container: dict[str, Any],
    keys: dict[str, KeyValue],
    port: PublishedPort,
    settings: MappingSettings,
    network_peer: dict[str, Any] | None,
    warnings: list[str],
) -> AddressChoice:
    """The service address and why it was chosen; the first rule that applies wins.
    An address the container wrote must be an IP or a host name, else the
    choice's address is "" (warned) and the caller skips the service."""
    explicit_ip = keys.get("ip")
    if explicit_ip is not None and explicit_ip.value.strip():
        return _declared(explicit_ip.value.strip(), f"key {labels.show(explicit_ip.original_key)}",
                         f"{explicit_ip.original_key} ({explicit_ip.source})", warnings)

    network_mode = str(_dict(container.get("HostConfig")).get("NetworkMode") or "")
    if network_mode.startswith("container:"):
        peer_ip = container_ip(network_peer or {}, None, warnings) if network_peer else ""
        if peer_ip:
            return AddressChoice(peer_ip, f"the IP of {labels.printable(network_mode, 80)}, whose network it shares")
        warnings.append(f"network mode {labels.show(network_mode)}: that container's IP is unknown, "
                        "using the next rule")

    if settings.use_ip_from_label:
        label_value = _dict(_dict(container.get("Config")).get("Labels")).get(settings.use_ip_from_label)
        if isinstance(label_value, str) and label_value.strip():
            return _declared(label_value.strip().split("/", 1)[0], f"label {labels.show(settings.use_ip_from_label)}",
                             f"label {settings.use_ip_from_label} (-useIpFromLabel)", warnings)
        warnings.append(f"label {labels.show(settings.use_ip_from_label)} (-useIpFromLabel) is not set")

    if settings.internal:
        network = keys.get("network")
        ipv4, ipv6 = container_ips(container, network.value.strip() if network else None, warnings)
        if ipv4:
            return AddressChoice(ipv4, "the container's own IP (-internal)", ipv6=ipv6)
        if ipv6:
            return AddressChoice(ipv6, "the container's own IPv6 (-internal; it has no IPv4 there)")

    if settings.host_ip6 and port.host_port and port.host_ip in UNSPECIFIED_HOST_IPS and port.on_ipv6 \
            and not port.on_ipv4:
        return AddressChoice(settings.host_ip6, f"-ip6 (port {port.exposed} is published on IPv6 only)",
                             at_host=True)

    if settings.host_ip:
        return AddressChoice(settings.host_ip, "-ip", at_host=True)

    if port.host_ip not in UNSPECIFIED_HOST_IPS:
        return AddressChoice(port.host_ip, f"the host address port {port.exposed} is published on")

    return AddressChoice(settings.default_address, settings.default_address_reason, at_host=True)


def _declared(value: str, where: str, reason: str, warnings: list[str]) -> AddressChoice:
    problem = address_problem(value)
    if problem:
        warnings.append(f"{where}={labels.show(value)}: {problem}; this service is skipped")
        return AddressChoice("", reason, declared=True)
    return AddressChoice(value[1:-1] if value.startswith("[") else value, reason, declared=True)


def container_addresses(container: dict[str, Any], network_peer: dict[str, Any] | None) -> frozenset[str]:
    """Every IP the container (or the container whose network it shares) has, normalised."""
    found: set[str] = set()
    for source in (container, network_peer or {}):
        network_settings = _dict(source.get("NetworkSettings"))
        for holder in (network_settings, *(_dict(n) for n in _dict(network_settings.get("Networks")).values())):
            for key in ("IPAddress", "GlobalIPv6Address"):
                value = holder.get(key)
                address = parse_ip(value) if isinstance(value, str) else None
                # Never a container's own: loopback, unspecified, link-local (whatever Docker reports).
                if address is not None and not (address.is_loopback or address.is_unspecified or
                                                address.is_link_local):
                    found.add(str(address))
    return frozenset(found)


def container_ip(container: dict[str, Any], network_name: str | None, warnings: list[str]) -> str:
    """The container's IP on `network_name`, else on its primary network ("" when
    unknown): its IPv4, or its IPv6 on a network without IPv4."""
    ipv4, ipv6 = container_ips(container, network_name, warnings)
    return ipv4 or ipv6


def container_ips(container: dict[str, Any], network_name: str | None, warnings: list[str]) -> tuple[str, str]:
    """(IPv4, IPv6) of the container on `network_name`, else on its primary
    network; "" for a family it has none of there."""
    network_settings = _dict(container.get("NetworkSettings"))
    networks = _dict(network_settings.get("Networks"))
    if network_name:
        chosen = _ips_of(networks.get(network_name))
        if any(chosen):
            return chosen
        warnings.append(f"SERVICE_NETWORK={labels.show(network_name)}: the container has no IP on that network")
        return "", ""
    mode = str(_dict(container.get("HostConfig")).get("NetworkMode") or "")
    primary = "bridge" if mode in ("", "default") else mode
    found = _ips_of(networks.get(primary))
    if not any(found):
        found = _ips_of(network_settings)
    if any(found):
        return found
    with_ip = [str(name) for name, net in networks.items() if any(_ips_of(net))]
    if len(with_ip) == 1:
        return _ips_of(networks[with_ip[0]])
    if len(with_ip) > 1:
        warnings.append(f"the container is on several networks ({labels.printable(', '.join(sorted(with_ip)), 200)}): "
                        "set SERVICE_NETWORK to pick one")
    return "", ""


def _ips_of(holder: object) -> tuple[str, str]:
    """The IPAddress and GlobalIPv6Address Docker reports in a network entry, when they are
    such addresses (an IPv6 that is loopback, link-local or IPv4 in disguise is not)."""
    entry = _dict(holder)
    ipv4 = entry.get("IPAddress")
    ipv4 = ipv4 if isinstance(ipv4, str) and ipv4 and parse_ip(ipv4) is not None else ""
    raw6 = entry.get("GlobalIPv6Address")
    address6 = parse_ip(raw6) if isinstance(raw6, str) and raw6 else None
    ipv6 = str(address6) if address6 is not None and address6.version == 6 and not (
        address6.is_loopback or address6.is_unspecified or address6.is_link_local) else ""
    return ipv4, ipv6


def plain_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
