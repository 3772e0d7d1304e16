"""Relative check targets: `:PORT` in SERVICE_CHECK_HTTP/HTTPS/TCP/UDP/GRPC/H2PING
and in SERVICE_CHECKS names the container's own port PORT, sent to wherever
that port is reached from the agent. Pure: no I/O, never raises.

The readings, in order:
1. PORT is a port of this container (exposed, published or declared) that the
   agent reaches: with -internal and on the host network at the service's
   address and PORT itself; else through its published binding: the binding's
   host port at the service's (registered) address, or at the binding's own
   host address when it is published on one address only.
2. PORT is no reachable port of this container, but it is one of its host
   ports (`-p 8080:80` with `:8080`): the host port at the service's address,
   as before container ports were read (the README's example keeps working).
3. PORT is a port of this container that is not published: refused (the agent
   cannot reach it; publish it or use -internal).
4. Anything else: PORT at the service's address, as written; the check-target
   rule (check_targets.py) then decides, like for any target.

A number that is both a container port and a host port of another binding
(`-p 9090:80 -p 32768:9090`, `:9090`) is the container's port 9090 (reading 1):
an image's author writes the ports of their image, and what the operator
publishes must not change which process a check probes.
"""

from __future__ import annotations

from dataclasses import dataclass

from consul_reg.mapping.validate import normal_host, parse_ip

UNSPECIFIED = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class PortReach:
    """How the agent reaches this container's ports. `mode`: "published" (through
    Docker's bindings), "internal" (-internal: the container's IP), "host" (the
    host network: the host's address); "" when not known (the literal reading)."""

    mode: str = ""
    container_ports: frozenset[tuple[int, str]] = frozenset()  # (port, "tcp"/"udp")
    bindings: tuple[tuple[int, str, str, int], ...] = ()  # (container port, protocol, HostIp, HostPort)


@dataclass(frozen=True)
class RelativeTarget:
    address: str  # where to probe
    port: int
    reading: str  # which reading was taken, for explain
    problem: str = ""  # set: the check is refused, for this reason


def split_relative(value: str) -> tuple[int, str] | str | None:
    """`:9090/metrics` -> (9090, "metrics"); `:9090` -> (9090, ""); None when the value is
    not relative to a port; a problem (str) for `:` followed by no port number."""
    if not value.startswith(":"):
        return None
    port_text, _, rest = value[1:].partition("/")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return f"{value[:40]!r} is not :PORT (a port number from 1 to 65535)"
    return int(port_text), rest


def relative_target(port: int, protocol: str, address: str, reach: PortReach) -> RelativeTarget:
    """Where `:port` of a check on a service at `address` is probed (see the module's docstring)."""
    own = (port, protocol) in reach.container_ports
    if own and reach.mode in ("internal", "host"):
        where = "the container's IP (-internal)" if reach.mode == "internal" else "the host network"
        return RelativeTarget(address, port, f":{port} is the container's port {port}, reached at {where}")
    if own and reach.mode == "published":
        binding = _binding(port, protocol, address, reach)
        if binding is not None:
            host_ip, host_port = binding
            return RelativeTarget(host_ip, host_port, f":{port} is the container's port {port}, published at "
                                                      f"{_joined(host_ip, host_port)}")
    host_ports = {(host_port, proto) for _, proto, _, host_port in reach.bindings}
    if (port, protocol) in host_ports:
        return RelativeTarget(address, port, f":{port} is no published port of the container but one of its host "
                                             f"ports: read as host port {port} at {address}")
    if own and reach.mode == "published":
        return RelativeTarget(address, port, "", f"the container's port {port}/{protocol} is not published, so the "
                                                 "agent cannot reach it: publish it (-p, -P) or run consul-reg with "
                                                 "-internal")
    return RelativeTarget(address, port, f":{port} read as port {port} at the service's address {address}"
                          if reach.mode else "")


def _binding(port: int, protocol: str, address: str, reach: PortReach) -> tuple[str, int] | None:
    """The binding of the container's `port` the agent reaches: one on the service's address
    itself, else one on every address (of the service address's family), else the first
    one on a single host address; (address to probe, host port)."""
    mine = [(host_ip, host_port) for number, proto, host_ip, host_port in reach.bindings
            if number == port and proto == protocol]
    normal = normal_host(address)
    for host_ip, host_port in mine:
        if host_ip not in UNSPECIFIED and normal_host(host_ip) == normal:
            return address, host_port
    ip = parse_ip(address)
    version = ip.version if ip is not None else 0  # a host name (0): taken as reached either way
    for host_ip, host_port in mine:
        if host_ip == "" or (host_ip == "0.0.0.0" and version in (0, 4)) or (host_ip == "::" and version in (0, 6)):
            return address, host_port
    for host_ip, host_port in mine:
        if host_ip not in UNSPECIFIED:
            return host_ip, host_port
    return None


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
