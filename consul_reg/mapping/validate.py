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

import functools
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
    return _parse_ip(text)


@functools.lru_cache(maxsize=1024)  # a host's few addresses, read several times per container; immutable answers
def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
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
