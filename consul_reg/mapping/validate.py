"""The one place with the rules for what a container may declare: identifier
shapes, size bounds, addresses, and which endpoints a health check may probe.
Every registry relies on these. Pure: no I/O, never raises (parse_allow_rule
raises ValueError on the operator's own flag).

Identifiers (service IDs and names) may hold ASCII letters, digits and
`-_.:@`, never `.` or `..` as the whole value, at most 128 characters: no
`/`, `%`, whitespace or control character can reach a URL path, a KV key, a
znode or a log line.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

ID_MAX_LENGTH = 128
NAME_MAX_LENGTH = 128
HOSTNAME_MAX_LENGTH = 64
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:@-]+")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# What inet_aton() would read as a number ("2852039166", "0xa9fea9fe", "0251"):
# a host name whose last label looks like that is an IP in disguise.
_NUMERIC_LABEL = re.compile(r"(0[xX][0-9A-Fa-f]*|[0-9]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
PORT_MAX = 65535
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
# Cloud platforms' instance endpoints outside link-local (169.254.169.254, GCP's and Azure's
# IMDS, ECS's 169.254.170.2 are inside it): AWS's IMDS on IPv6, Alibaba Cloud's metadata
# service, Azure's WireServer (its VM agent's goal state, certificates included).
CLOUD_METADATA = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200"),
                            ipaddress.ip_address("168.63.129.16")})
DEFAULT_CHECK_METHODS = ("GET", "HEAD", "OPTIONS", "POST")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one container may cost. Meta bounds are Consul's own."""

    services_per_container: int = 64
    port_entries: int = 4096  # entries of Config.ExposedPorts / NetworkSettings.Ports looked at per container
    tags_per_service: int = 128
    tag_length: int = 1024
    meta_pairs: int = 64
    meta_key_length: int = 128
    meta_value_length: int = 512
    value_length: int = 65536  # a label, env or env-file value longer than this is ignored
    tags_value_length: int = 32768  # a SERVICE_TAGS value longer than this is not split, ignored
    key_length: int = 256  # a SERVICE_* key longer than this is ignored
    keys_per_container: int = 1024  # SERVICE_* keys considered per container (env, labels, env file)
    warnings_per_container: int = 100
    tagged_addresses_per_service: int = 16
    checks_per_service: int = 32  # SERVICE_CHECKS entries
    json_checks_per_container: int = 128  # checks from SERVICE_CHECKS over all of a container's services
    upstreams_per_service: int = 32
    check_body_length: int = 16384  # a health check's request body
    check_text_length: int = 1024  # a check's Name or Notes
    # The same caps for every spelling of a check (SERVICE_CHECK_* keys and SERVICE_CHECKS):
    check_headers: int = 32  # header values one HTTP check sends
    header_value_length: int = 4096
    check_path_length: int = 2048  # an HTTP check's path (with its query), a gRPC check's service name
    server_name_length: int = 253  # TLSServerName: a DNS name
    # What one service's PUT /v1/agent/service/register body may weigh, and all of one container's.
    registration_bytes: int = 256 * 1024
    registration_bytes_per_container: int = 1024 * 1024
    # Each sidecar takes a port of the agent's sidecar range (21000-21255 by default), shared by the host.
    sidecars_per_container: int = 16


def identifier_problem(value: str, what: str = "service ID") -> str | None:
    """None when `value` may be used as a service ID or name, else why not."""
    limit = ID_MAX_LENGTH if what == "service ID" else NAME_MAX_LENGTH
    if not isinstance(value, str) or not value:
        return f"a {what} must not be empty"
    if len(value) > limit:
        return f"a {what} may hold at most {limit} characters (this one has {len(value)})"
    if value in (".", ".."):
        return f"a {what} may not be {value!r}"
    if not _IDENTIFIER.fullmatch(value):
        bad = next(c for c in value if not _IDENTIFIER.fullmatch(c))
        return f"a {what} may only hold ASCII letters, digits and - _ . : @ (found {bad!r})"
    return None


def hostname_problem(value: str) -> str | None:
    """The operator's --hostname: an identifier without `:` (the separator of
    default IDs `<hostname>:<container>:<port>`), at most 64 characters."""
    if isinstance(value, str) and len(value) > HOSTNAME_MAX_LENGTH:
        return f"a host name may hold at most {HOSTNAME_MAX_LENGTH} characters (this one has {len(value)})"
    problem = identifier_problem(value, "host name")
    if problem:
        return problem
    if ":" in value:
        return "a host name may not hold ':' (it separates the parts of default service IDs)"
    return None


_INSTANCE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TAGGED_ADDRESS_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DIGITS = re.compile(r"[0-9]{1,9}")


def instance_problem(value: str) -> str | None:
    """The operator's --instance: recorded in Meta and in mirror lease paths."""
    if not _INSTANCE.fullmatch(value) or value in (".", ".."):
        return "an instance name holds 1 to 64 ASCII letters, digits and - _ . (not '.' or '..')"
    return None


def tagged_address_name_problem(name: str) -> str | None:
    """A TaggedAddresses name (`lan_ipv6`, `wan`, `virtual`): lower-case letters, digits, _ and -."""
    if not _TAGGED_ADDRESS_NAME.fullmatch(name):
        return "a tagged address name holds 1 to 64 lower-case ASCII letters, digits, _ and -"
    return None


def whole_number(text: str, low: int, high: int) -> int | None:
    """ASCII digits only (no sign, no '²', no '٨'), within [low, high]; else None."""
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        return None
    number = int(text)
    return number if low <= number <= high else None


def parse_host_port(text: str) -> tuple[str, int | None] | str:
    """`host:port`, `[v6]:port`, `host`, `[v6]` or a bare IPv6 -> (host, port or None);
    a string saying why not otherwise. The host is an IP or an RFC 1123 name."""
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        inner, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return "write an IPv6 address as [address] or [address]:port"
        host, port_text = inner, after[1:]
        if (parsed := parse_ip(host)) is None or parsed.version != 6:
            return "not an IPv6 address in brackets"
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address, no port
    else:
        host, _, port_text = text.partition(":")
        if ":" in text and not port_text:
            return "a port must follow ':'"
    problem = address_problem(host)
    if problem:
        return problem
    if not port_text:
        return (host, None)
    port = whole_number(port_text, 1, PORT_MAX)
    if port is None:
        return f"port {port_text[:16]!r} is not a number from 1 to {PORT_MAX}"
    return (host, port)


def parse_check_url(value: str) -> tuple[str, str | None, int | None, str] | str:
    """An HTTP check's URL -> (scheme, host, port, path), or why it is not one. An empty
    host means the service's own address (`https:///health`, `https://:8443/health`)
    and no port its own port (None for both); no user, password or backslash."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not value.lower().startswith(parts.scheme + "://"):
        return "a URL is http:// or https://"
    netloc = parts.netloc
    if "@" in netloc or "\\" in value:
        return "no user, password or backslash in a check URL"
    host: str | None = None
    port: int | None = None
    if netloc.startswith(":"):
        port = whole_number(netloc[1:], 1, PORT_MAX)
        if port is None:
            return "not a port after ':'"
    elif netloc:
        parsed = parse_host_port(netloc)
        if isinstance(parsed, str):
            return parsed
        host, port = parsed[0], parsed[1] or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not path.startswith("/"):
        return "the path must start with /"
    return parts.scheme, host, port, path


def squats_host_namespace(service_id: str, hostname: str) -> bool:
    """Whether a container-chosen ID sits in this host's default-ID namespace."""
    return service_id.lower().startswith(hostname.lower() + ":")


def has_control(text: str) -> bool:
    """C0/C1 control characters, DEL and the Unicode line/paragraph separators (CR, LF, ESC, NUL...)."""
    if text.isprintable():  # none of those is printable: one pass in C settles the usual case
        return False
    return _CONTROL.search(text) is not None


def has_space_or_control(text: str) -> bool:
    """Any whitespace (str.isspace()'s) or control character."""
    if text.isprintable():  # the only printable whitespace is the space itself
        return " " in text
    return _CONTROL.search(text) is not None or any(c.isspace() for c in text)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, `[v6]` accepted; IPv4 hidden in IPv6 (mapped, NAT64,
    6to4, compatible) comes back as the IPv4 address it reaches."""
    if not isinstance(text, str) or "%" in text:  # no IPv6 zone: it cannot be written in a check URL
        return None
    raw = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def hostname_shape_problem(text: str) -> str | None:
    """RFC 1123 host name shape; a name that the resolver would read as a
    number (`2852039166`, `0xa9.0xfe...`, `169.254.169.254.`) is refused."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return "not a host name (1 to 253 characters)"
    labels = name.split(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return "not an IP address or a host name (labels of letters, digits and -)"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return "a host name whose last label is a number reads as an IP address; write the IP itself"
    return None


def address_problem(text: str) -> str | None:
    """A service or check address: an IP (v4 or v6) or an RFC 1123 host name."""
    if parse_ip(text) is not None:
        return None
    return hostname_shape_problem(text)


def normal_host(text: str) -> str:
    """One spelling per host: IPs in canonical form, names lower-case without a final dot."""
    address = parse_ip(text)
    if address is not None:
        return str(address)
    return text.lower().rstrip(".")


# -- health-check targets ------------------------------------------------------


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
    """

    container_addresses: frozenset[str] = frozenset()
    container_ports: frozenset[int] = frozenset()
    host_pairs: frozenset[tuple[str, int]] = frozenset()
    chosen_addresses: frozenset[str] = frozenset()

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
