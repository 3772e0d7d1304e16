"""Which address a service is registered at: the rules, in order (pure),
and this host's primary address (the one helper here that asks the kernel)."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Any

from consul_reg import labels
from consul_reg.labels import KeyValue

if TYPE_CHECKING:
    from consul_reg.mapping import MappingSettings, PublishedPort

UNSPECIFIED_HOST_IPS = ("", "0.0.0.0", "::")


def choose_address(
    container: dict[str, Any],
    keys: dict[str, KeyValue],
    port: "PublishedPort",
    settings: "MappingSettings",
    network_peer: dict[str, Any] | None,
    warnings: list[str],
) -> tuple[str, str]:
    """The service address and why it was chosen; the first rule that applies wins."""
    explicit_ip = keys.get("ip")
    if explicit_ip is not None and explicit_ip.value.strip():
        return explicit_ip.value.strip(), f"{explicit_ip.original_key} ({explicit_ip.source})"

    network_mode = str(_dict(container.get("HostConfig")).get("NetworkMode") or "")
    if network_mode.startswith("container:"):
        peer_ip = container_ip(network_peer or {}, None, warnings) if network_peer else ""
        if peer_ip:
            return peer_ip, f"the IP of {network_mode}, whose network it shares"
        warnings.append(f"network mode {network_mode}: that container's IP is unknown, using the next rule")

    if settings.use_ip_from_label:
        label_value = _dict(_dict(container.get("Config")).get("Labels")).get(settings.use_ip_from_label)
        if isinstance(label_value, str) and label_value.strip():
            return label_value.strip().split("/", 1)[0], f"label {settings.use_ip_from_label} (-useIpFromLabel)"
        warnings.append(f"label {labels.show(settings.use_ip_from_label)} (-useIpFromLabel) is not set")

    if settings.internal:
        network = keys.get("network")
        ip = container_ip(container, network.value.strip() if network else None, warnings)
        if ip:
            return ip, "the container's own IP (-internal)"

    if settings.host_ip:
        return settings.host_ip, "-ip"

    if port.host_ip not in UNSPECIFIED_HOST_IPS:
        return port.host_ip, f"the host address port {port.exposed} is published on"

    return settings.default_address, settings.default_address_reason


def container_ip(container: dict[str, Any], network_name: str | None, warnings: list[str]) -> str:
    """The container's IP on `network_name`, else on its primary network."""
    network_settings = _dict(container.get("NetworkSettings"))
    networks = _dict(network_settings.get("Networks"))
    if network_name:
        chosen = _dict(networks.get(network_name))
        if chosen.get("IPAddress"):
            return str(chosen["IPAddress"])
        warnings.append(f"SERVICE_NETWORK={labels.show(network_name)}: the container has no IP on that network")
        return ""
    mode = str(_dict(container.get("HostConfig")).get("NetworkMode") or "")
    primary = "bridge" if mode in ("", "default") else mode
    if _dict(networks.get(primary)).get("IPAddress"):
        return str(networks[primary]["IPAddress"])
    if network_settings.get("IPAddress"):
        return str(network_settings["IPAddress"])
    with_ip = [name for name, net in networks.items() if _dict(net).get("IPAddress")]
    if len(with_ip) == 1:
        return str(networks[with_ip[0]]["IPAddress"])
    if len(with_ip) > 1:
        warnings.append(f"the container is on several networks ({', '.join(sorted(with_ip))}): "
                        "set SERVICE_NETWORK to pick one")
    return ""


def plain_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


def primary_host_address() -> str:
    """The address of the interface the default route uses. A UDP connect()
    sends no packet; it only asks the kernel which source address it would use."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never contacted
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
