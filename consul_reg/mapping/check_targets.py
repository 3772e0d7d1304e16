"""Which endpoints a health check (or a Connect sidecar's forward) may probe:
the operator's `--allow-check-target` rules, the container's own endpoints as
exact (address, port) pairs, and what is never probed without a rule naming it
(loopback, link-local and other cloud metadata, the agent's own ports). Pure:
no I/O, never raises (parse_allow_rule raises ValueError on the operator's own flag)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from consul_reg.mapping.check_ports import PortReach
from consul_reg.mapping.validate import (
    CLOUD_METADATA,
    DEFAULT_CHECK_METHODS,
    LINK_LOCAL,
    PORT_MAX,
    address_problem,
    hostname_shape_problem,
    normal_host,
    parse_ip,
)


@dataclass(frozen=True)
class AllowRule:
    """`--allow-check-target TARGET[:PORTS]`: a CIDR, an IP or a host name,
    and optionally the ports (none: every port)."""

    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    hostname: str = ""
    ports: tuple[tuple[int, int], ...] = ()

    def covers(self, host: str, port: int) -> bool:
        if self.ports and not any(low <= port <= high for low, high in self.ports):
            return False
        address = parse_ip(host)
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        return address is None and normal_host(host) == self.hostname

    def names_port(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.ports)


def parse_allow_rule(text: str) -> AllowRule:
    """`10.0.0.0/8`, `10.0.0.0/8:80,443,9000-9100`, `fd00::/8:80`, `[::1]:8080`,
    `192.0.2.7:80`, `db.example.com:5432`. Raises ValueError with the reason."""
    rest, ports_text = text.strip(), ""
    if rest.startswith("["):
        inner, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 target as [address] or [address]:PORTS")
        rest, ports_text = inner, after[1:]
    elif "/" in rest:
        address, _, prefix = rest.partition("/")
        prefix, _, ports_text = prefix.partition(":")
        rest = f"{address}/{prefix}"
    elif rest.count(":") == 1:
        rest, _, ports_text = rest.partition(":")
    network = None
    hostname = ""
    try:
        network = ipaddress.ip_network(rest, strict=False)
    except ValueError:
        problem = hostname_shape_problem(rest)
        if problem:
            raise ValueError(f"{text!r}: not a CIDR, an IP or a host name") from None
        hostname = normal_host(rest)
    if network is not None and network.version == 6:
        mapped = parse_ip(str(network.network_address))
        if mapped is not None and mapped.version == 4 and network.prefixlen >= 96:
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    ports = _parse_ports(ports_text, text) if ports_text or text.strip().endswith(":") else ()
    return AllowRule(text=text, network=network, hostname=hostname, ports=ports)


def _parse_ports(text: str, rule: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in text.split(","):
        low_text, dash, high_text = part.strip().partition("-")
        if not re.fullmatch(r"[0-9]{1,5}", low_text) or (dash and not re.fullmatch(r"[0-9]{1,5}", high_text)):
            raise ValueError(f"{rule!r}: ports must look like 80,443,9000-9100")
        low, high = int(low_text), int(high_text) if dash else int(low_text)
        if not 0 < low <= high <= PORT_MAX:
            raise ValueError(f"{rule!r}: ports must be 1-65535, low to high")
        ranges.append((low, high))
    return tuple(ranges)


@dataclass(frozen=True)
class CheckPolicy:
    """What the operator allows beyond the container's own endpoints, and what
    is never allowed without a rule that names it."""

    allow: tuple[AllowRule, ...] = ()
    methods: tuple[str, ...] = DEFAULT_CHECK_METHODS
    agent_addresses: tuple[str, ...] = ("127.0.0.1",)  # where the agent listens
    agent_ports: tuple[int, ...] = (8500,)  # the agent's own ports: HTTP, HTTPS, gRPC, DNS


@dataclass(frozen=True)
class OwnEndpoints:
    """The endpoints that are this container's, as exact (address, port) pairs.

    - The container's own IPs with its container-side ports: its own network
      namespace, so any of those addresses with any of those ports is its own.
    - `host_pairs`: each published binding's own (HostIp, HostPort); for a port
      published on every address (HostIp "", 0.0.0.0, ::), (each host address the
      daemon registers at, of that family, HostPort); on the host network, (each
      of those addresses, each of its ports). Never a host address crossed with
      another binding's port: 127.0.0.1:8080 and 127.0.0.2:2375 published do not
      make 127.0.0.1:2375 this container's.
    - `chosen_addresses`: the host addresses the daemon registers at (-ip, -ip6,
      else the agent's advertise address): the operator's choice, never the
      container's. A loopback pair counts only at one of these.
    - `reach`: how the agent reaches each of the container's ports (its bindings).
    """

    container_addresses: frozenset[str] = frozenset()
    container_ports: frozenset[int] = frozenset()
    host_pairs: frozenset[tuple[str, int]] = frozenset()
    chosen_addresses: frozenset[str] = frozenset()
    reach: PortReach = PortReach()  # where each container port is reached, for `:PORT` targets (check_ports.py)

    def holds(self, normal: str, port: int) -> bool:
        """Whether (normal, port) (normal_host()'s spelling) is one of these endpoints."""
        if normal in self.container_addresses and port in self.container_ports:
            return True
        return (normal, port) in self.host_pairs


# Addresses that reach this host itself: loopback, and the unspecified ones (a connect to
# 0.0.0.0 or :: goes to the local host).
LOCAL_ONLY = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("0.0.0.0/8"),
              ipaddress.ip_network("::1/128"), ipaddress.ip_network("::/128"))
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def local_only(normal: str) -> bool:
    """An address (normal_host()'s spelling) that reaches this host's own loopback services."""
    address = parse_ip(normal)
    if address is None:
        return normal in _LOCAL_NAMES or normal.endswith(".localhost")
    return any(address in net for net in LOCAL_ONLY if net.version == address.version)


def _subnet(inner: ipaddress.IPv4Network | ipaddress.IPv6Network,
            outer: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """`inner` lies within `outer` (False across families)."""
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _names_local(rule: AllowRule, normal: str) -> bool:
    """A rule that names this host's own addresses: a network inside 127.0.0.0/8, ::1, or
    the unspecified addresses, or the host name itself (`localhost`). 0.0.0.0/0 does not."""
    if rule.network is None:
        return rule.hostname == normal
    network = rule.network
    return any(_subnet(network, net) for net in LOCAL_ONLY)


def check_target_problem(host: str, port: int, own: OwnEndpoints, policy: CheckPolicy) -> str | None:
    """None when a network check (or a sidecar's forward) may probe host:port, else why not.

    In order: link-local (cloud metadata) needs a rule inside 169.254.0.0/16 or
    fe80::/10, the metadata endpoints outside it (CLOUD_METADATA) a rule naming that
    address alone; the agent's own ports need a rule that lists the port (on any address
    but the container's own IPs); this host's own addresses (loopback) need a rule
    that names them, or the pair is the container's own at an address the daemon
    registers at (-ip 127.0.0.1, a dev agent's 127.0.0.1); anything else needs a
    rule or the exact pair among the container's own endpoints."""
    shape = address_problem(host)
    if shape:
        return shape
    normal = normal_host(host)
    address = parse_ip(host)
    rules = [rule for rule in policy.allow if rule.covers(host, port)]
    if address is not None and any(address in net for net in LINK_LOCAL if net.version == address.version):
        explicit = [r for r in rules if r.network is not None and any(
            _subnet(r.network, net) for net in LINK_LOCAL)]
        return None if explicit else "link-local addresses (cloud metadata) are never probed unless " \
            "an --allow-check-target rule inside 169.254.0.0/16 or fe80::/10 names them"
    if address in CLOUD_METADATA:
        exact = [r for r in rules if r.network is not None and r.network.num_addresses == 1]
        return None if exact else f"{address} is a cloud platform's metadata endpoint: it is never probed " \
            "unless an --allow-check-target rule names that address alone (/32 or /128)"
    agent_like = port in policy.agent_ports and normal not in own.container_addresses
    if agent_like or (normal in {normal_host(a) for a in policy.agent_addresses} and port in policy.agent_ports):
        if not any(r.names_port(port) for r in rules):
            return f"port {port} is one of the Consul agent's own ports (HTTP API, HTTPS, gRPC, DNS); only an " \
                "--allow-check-target rule that lists that port allows it"
    if local_only(normal):
        if any(_names_local(r, normal) for r in rules):
            return None
        if normal in own.chosen_addresses and own.holds(normal, port):
            return None
        return (f"{normal} is this host's own address (loopback): it is never probed unless an "
                "--allow-check-target rule inside 127.0.0.0/8 or ::1 names it, or it is the address the daemon "
                "registers at (-ip) and the port is this container's, published there")
    if rules:
        return None
    if own.holds(normal, port):
        return None
    if normal in own.container_addresses or normal in own.chosen_addresses or \
            any(normal == pair[0] for pair in own.host_pairs):
        return f"port {port} is not a port of this container at {normal}; allow it with --allow-check-target"
    return (f"{normal} is not this container's address; a check may only probe the container itself "
            "unless --allow-check-target allows it")
