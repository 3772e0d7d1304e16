"""SERVICE_CHECKS: a JSON array of Consul check definitions, several of any
kind, in Consul's own field names. Pure: no I/O, never raises.

Each check is validated before it is sent, with the same rules as the
SERVICE_CHECK_* keys (targets, methods, script policy, control characters)
and the agent's version: an unknown, refused or version-gated field costs
that check (one warning naming the field), never the service. Targets may be
written relative to the service: `/health` and `:9090/metrics` for HTTP,
`:9090` for TCP, `/my.Service` or `:50051` for gRPC.
"""

from __future__ import annotations

import json
import re

from consul_reg.core.records import Check, fold_id
from consul_reg.mapping.check_caps import (
    body_problem,
    header_count_problem,
    header_name_problem,
    header_value_problem,
    path_problem,
)
from consul_reg.mapping.check_fields import (
    DISABLE_REDIRECTS_MIN_VERSION,
    INITIAL_STATUSES,
    frozen_fields,
    parse_duration,
    redirect_problem,
)
from consul_reg.mapping.check_ports import relative_target
from consul_reg.mapping.check_targets import OwnEndpoints, check_target_problem
from consul_reg.mapping.labels import KeyValue, show
from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.validate import (
    Limits,
    has_control,
    has_space_or_control,
    identifier_problem,
    parse_check_url,
    parse_host_port,
    whole_number,
)
from consul_reg.mapping.versions import check_field_refusal

# Consul's field names, as sent; a field is matched ignoring case and underscores,
# as Consul's own decoder does (`deregister_critical_service_after` is DeregisterCriticalServiceAfter).
FIELDS = ("CheckID", "Name", "Notes", "Status", "HTTP", "Method", "Header", "Body", "TLSSkipVerify", "TLSServerName",
          "DisableRedirects", "TCP", "UDP", "GRPC", "GRPCUseTLS", "H2PING", "H2PingUseTLS", "Interval", "Timeout",
          "TTL", "DeregisterCriticalServiceAfter", "SuccessBeforePassing", "FailuresBeforeCritical",
          "FailuresBeforeWarning", "OutputMaxSize", "AliasService", "Args", "DockerContainerID", "Shell")
ALIASES = {"id": "CheckID", "scriptargs": "Args"}
# Fields a container may not set, and why.
REFUSED = {
    "serviceid": "a check belongs to the service it is declared on",
    "aliasnode": "a container's check may alias a service, not a node",
    "node": "a check belongs to this agent's node",
}
KINDS = ("HTTP", "TCP", "UDP", "GRPC", "H2PING", "TTL", "Args", "AliasService")
NUMBER_FIELDS = {"SuccessBeforePassing": 100000, "FailuresBeforeCritical": 100000, "FailuresBeforeWarning": 100000,
                 "OutputMaxSize": 1 << 20}
DURATION_FIELDS = ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter")
# Fields that apply to some kinds only.
KIND_FIELDS = {"Method": ("HTTP",), "Header": ("HTTP",), "Body": ("HTTP",), "DisableRedirects": ("HTTP",),
               "TLSSkipVerify": ("HTTP", "GRPC", "H2PING"), "TLSServerName": ("HTTP", "GRPC", "H2PING"),
               "GRPCUseTLS": ("GRPC",), "H2PingUseTLS": ("H2PING",), "DockerContainerID": ("Args",),
               "Shell": ("Args",), "Timeout": ("HTTP", "TCP", "UDP", "GRPC", "H2PING", "Args")}
MAX_ARGS = 64
DEFAULT_INTERVAL = "10s"
# No ':' in a given ID: check IDs are agent-wide and `service:<service ID>:<ID>` must never
# read as a check of another service (`service:<hostname>` + `web:80:http`).
_CHECK_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_BY_NORMAL = {name.lower(): name for name in FIELDS}


class Refused(Exception):
    """One check cannot be used; the message says why (the caller adds where)."""


def _normal(name: str) -> str:
    return name.replace("_", "").lower()


def parse_checks(entry: KeyValue) -> list[object] | str:
    """A SERVICE_CHECKS value as a list, or why it is not one. Parsed once per
    container and value: the same general key serves every port's service."""
    try:
        parsed = json.loads(entry.value)
    except (ValueError, RecursionError) as error:  # RecursionError: [[[[... nested thousands deep
        reason = f"{type(error).__name__}" if isinstance(error, RecursionError) else str(error).split(":")[0]
        return f"not JSON ({show(reason, 80)})"
    if not isinstance(parsed, list):
        return "must be a JSON array of check definitions ([{\"HTTP\": \"/health\"}])"
    return parsed


def json_checks(entry: KeyValue | None, service_id: str, service_name: str, address: str, port: int | None,
                container_id: str, settings: CheckSettings, warnings: list[str], own: OwnEndpoints,
                taken: set[str], limits: Limits = Limits(), parsed: list[object] | str | None = None,
                budget: int | None = None) -> tuple[Check, ...]:
    """The checks of one SERVICE_CHECKS value (`parsed`: its parse_checks(), when the
    caller has it). `taken` holds the check IDs the service already has (its
    SERVICE_CHECK_* checks); it grows with these. At most `budget` checks (what is
    left of the container's)."""
    if entry is None or not entry.value.strip():
        return ()
    where = f"key {show(entry.original_key)}"
    parsed = parse_checks(entry) if parsed is None else parsed
    if isinstance(parsed, str):
        warnings.append(f"{where}: {parsed}; no check from it")
        return ()
    if len(parsed) > limits.checks_per_service:
        warnings.append(f"{where}: {len(parsed)} checks, only the first {limits.checks_per_service} are used")
        parsed = parsed[:limits.checks_per_service]
    if budget is not None and len(parsed) > budget:
        warnings.append(f"{where}: a container may have at most {limits.json_checks_per_container} checks from "
                        f"SERVICE_CHECKS over all its services; {len(parsed) - max(budget, 0)} of this "
                        "service's are left out")
        parsed = parsed[:max(budget, 0)]
    built = []
    for index, definition in enumerate(parsed, start=1):
        try:
            builder = _JsonCheck(definition, index, service_id, service_name, address, port, container_id,
                                 settings, own, limits)
            check = builder.build(taken)
        except Refused as refusal:
            warnings.append(f"{where}: check {index}: {refusal}; that check is dropped")
            continue
        warnings.extend(f"{where}: check {index}: {note}" for note in builder.notes)
        taken.add(check.check_id)
        built.append(check)
    return tuple(built)


class _JsonCheck:
    def __init__(self, definition: object, index: int, service_id: str, service_name: str, address: str,
                 port: int | None, container_id: str, settings: CheckSettings, own: OwnEndpoints,
                 limits: Limits) -> None:
        if not isinstance(definition, dict):
            raise Refused("must be a JSON object of Consul check fields")
        self.fields = self._canonical(definition)
        self.index = index
        self.service_id = service_id
        self.service_name = service_name
        self.address = address[1:-1] if address.startswith("[") else address
        self.port = port
        self.container_id = container_id
        self.settings = settings
        self.own = own
        self.limits = limits
        self.notes: list[str] = []
        self.reading = ""  # how a `:PORT` target was read (check_ports.py), for explain

    # -- fields -----------------------------------------------------------------

    def _canonical(self, definition: dict[object, object]) -> dict[str, object]:
        fields: dict[str, object] = {}
        for raw_name, value in definition.items():
            name = str(raw_name)
            normal = _normal(name)
            if normal in REFUSED:
                raise Refused(f"field {show(name, 40)} is refused: {REFUSED[normal]}")
            canonical = ALIASES.get(normal) or _BY_NORMAL.get(normal)
            if canonical is None:
                raise Refused(f"unknown field {show(name, 40)} (Consul's names: HTTP, TCP, GRPC, Interval, ...)")
            if canonical in fields:
                raise Refused(f"field {canonical} is written twice")
            fields[canonical] = value
        return fields

    def _text(self, name: str, limit: int) -> str | None:
        value = self.fields.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise Refused(f"{name} must be a string")
        if len(value) > limit or has_control(value):
            raise Refused(f"{name} must be at most {limit} characters without control characters")
        return value

    def _duration(self, name: str) -> str | None:
        value = self.fields.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or parse_duration(value) is None:
            raise Refused(f"{name} {show(str(value), 40)} is not a duration (like \"10s\", \"1m30s\")")
        return value.strip()

    def _flag(self, name: str) -> bool | None:
        value = self.fields.get(name)
        if value is not None and not isinstance(value, bool):
            raise Refused(f"{name} must be true or false")
        return value

    # -- build ------------------------------------------------------------------

    def build(self, taken: set[str]) -> Check:
        for name in self.fields:
            refusal = check_field_refusal(name, self.settings.agent_version)
            if refusal:
                raise Refused(refusal)
        kinds = [kind for kind in KINDS if kind in self.fields]
        if len(kinds) != 1:
            raise Refused("a check needs exactly one of " + ", ".join(KINDS) + (f" (it has {', '.join(kinds)})"
                                                                                  if kinds else ""))
        kind = kinds[0]
        out: dict[str, object] = {}
        notes = self._text("Notes", self.limits.check_text_length)
        if notes is not None:
            out["Notes"] = notes
        status = self.fields.get("Status")
        if status is not None:
            if not isinstance(status, str) or status.lower() not in INITIAL_STATUSES:
                raise Refused(f"Status must be one of {', '.join(INITIAL_STATUSES)}")
            out["Status"] = status.lower()
        for name in DURATION_FIELDS:
            value = self._duration(name)
            if value is not None:
                out[name] = value
        for name, high in NUMBER_FIELDS.items():
            number = self.fields.get(name)
            if number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= high:
                raise Refused(f"{name} must be a whole number from 0 to {high}")
            out[name] = number
        if kind in ("TTL", "AliasService") and "Interval" in out:
            raise Refused(f"a {kind} check has no Interval")
        if kind not in ("TTL", "AliasService"):
            out.setdefault("Interval", DEFAULT_INTERVAL)
        self._only_for(kind)
        getattr(self, f"_kind_{kind.lower()}")(out)
        check_id = self._check_id(taken)
        name = self._text("Name", self.limits.check_text_length) or \
            f"Service '{self.service_name}' check {self.index}"
        return Check(check_id=check_id, name=name, definition=frozen_fields(out), reading=self.reading)

    def _only_for(self, kind: str) -> None:
        """Fields that belong to other kinds are refused rather than sent to be ignored."""
        for name, kinds in KIND_FIELDS.items():
            if name in self.fields and kind not in kinds:
                raise Refused(f"{name} does not apply to a {kind} check")

    def _check_id(self, taken: set[str]) -> str:
        given = self.fields.get("CheckID")
        if given is None:
            base = f"service:{self.service_id}:{self.index}"
        else:
            if not isinstance(given, str) or not _CHECK_ID.fullmatch(given):
                raise Refused("ID must be 1 to 64 ASCII letters, digits and - _ . @ (no ':', which could name "
                              "a check of another service)")
            base = f"service:{self.service_id}:{given}"
        # Compared case-folded: the catalog holds `service:web:HTTP` and `service:web:http` as one check.
        folded = {fold_id(t) for t in taken} | {fold_id(f"service:{self.service_id}")}
        check_id, suffix = base, 2
        while fold_id(check_id) in folded:
            check_id, suffix = f"{base}-{suffix}", suffix + 1
        if check_id != base:
            self.notes.append(f"its ID {show(base)} is taken by another check of this service; it is {show(check_id)}")
        return check_id

    # -- targets ----------------------------------------------------------------

    def _target(self, host: str | None, port: int | None, kind: str) -> tuple[str, int]:
        host = host or self.address
        port = port if port is not None else self.port
        if port is None:
            raise Refused(f"this service has no port: write the {kind} target with one (:9090)")
        problem = check_target_problem(host, port, self.own, self.settings.policy)
        if problem:
            raise Refused(f"the {kind} check would probe {show(host)} port {port}: {problem}")
        return host, port

    def _relative(self, port: int, kind: str) -> tuple[str, int]:
        """`:PORT`: the container's port PORT, where the agent reaches it (check_ports.py)."""
        target = relative_target(port, "udp" if kind == "UDP" else "tcp", self.address, self.own.reach)
        if target.problem:
            raise Refused(f"{kind} :{port}: {target.problem}")
        self.reading = target.reading
        return self._target(target.address, target.port, kind)

    def _host_port(self, value: object, kind: str) -> tuple[str, int]:
        """`:9090`, `host:9090`, `[v6]:9090`, or "" for the service's own address and port."""
        if not isinstance(value, str) or has_space_or_control(value):
            raise Refused(f"{kind} must be a string without spaces or control characters")
        if value in ("", "true"):
            return self._target(None, None, kind)
        if value.startswith(":"):
            port = whole_number(value[1:], 1, 65535)
            if port is None:
                raise Refused(f"{kind} {show(value, 60)}: not :port")
            return self._relative(port, kind)
        parsed = parse_host_port(value)
        if isinstance(parsed, str):
            raise Refused(f"{kind} {show(value, 60)}: {parsed}")
        return self._target(parsed[0], parsed[1], kind)

    @staticmethod
    def _bracketed(host: str) -> str:
        return f"[{host}]" if ":" in host else host

    # -- kinds ------------------------------------------------------------------

    def _kind_http(self, out: dict[str, object]) -> None:
        value = self.fields["HTTP"]
        too_long = path_problem(value, self.limits, "HTTP") if isinstance(value, str) else None
        if too_long:  # the whole URL: its path is the most of it (a host name is at most 253)
            raise Refused(too_long)
        if not isinstance(value, str) or not value or has_space_or_control(value):
            raise Refused("HTTP must be a path (/health), :port/path or a URL, without spaces or control characters")
        scheme, host, port, path = "http", None, None, value
        if value.startswith(":"):
            port_text, _, rest = value[1:].partition("/")
            port = whole_number(port_text, 1, 65535)
            if port is None:
                raise Refused(f"HTTP {show(value, 60)}: not :port/path")
            path = "/" + rest
            host, port = self._relative(port, "HTTP")
        elif not value.startswith("/"):
            parsed = parse_check_url(value)
            if isinstance(parsed, str):
                raise Refused(f"HTTP {show(value, 60)}: {parsed}")
            scheme, host, port, path = parsed
        host, port = self._target(host, port, "HTTP")
        out["HTTP"] = f"{scheme}://{self._bracketed(host)}:{port}{path}"
        method = self.fields.get("Method")
        if method is not None:
            if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]{1,16}", method):
                raise Refused("Method is not an HTTP method")
            if method.upper() not in self.settings.policy.methods:
                raise Refused(f"Method: only {', '.join(self.settings.policy.methods)} are allowed "
                              "(--allow-check-method)")
            out["Method"] = method.upper()
        if "Header" in self.fields:
            out["Header"] = self._headers(self.fields["Header"])
        if "Body" in self.fields:
            body = self.fields["Body"]
            if not isinstance(body, str):
                raise Refused("Body must be a string")
            problem = body_problem(body, self.limits.check_body_length)
            if problem:
                raise Refused(problem)
            out["Body"] = body
        problem = redirect_problem(str(out.get("Method", "GET")), bool(out.get("Body")), self.settings)
        if problem:
            raise Refused(f"the HTTP check {show(str(out['HTTP']), 80)}: {problem}")
        if self._flag("TLSSkipVerify"):
            out["TLSSkipVerify"] = True
        self._server_name(out)
        redirects = self.fields.get("DisableRedirects")
        if redirects is not None and redirects is not True:
            raise Refused("DisableRedirects may only be true: a redirect would lead the agent past the check-target "
                          "policy")
        if self.settings.agent_version >= DISABLE_REDIRECTS_MIN_VERSION:
            out["DisableRedirects"] = True

    def _headers(self, value: object) -> dict[str, list[str]]:
        """The same caps as SERVICE_CHECK_HTTP_HEADER_* keys: values counted over all names first."""
        limit = self.limits.check_headers
        if not isinstance(value, dict) or len(value) > limit:
            raise Refused(f"Header must be an object of at most {limit} names, each a string or a list of them")
        lists = {name: [values] if isinstance(values, str) else values for name, values in value.items()}
        if not all(isinstance(values, list) for values in lists.values()):
            raise Refused("Header: each name's values are a string or a list of strings")
        problem = header_count_problem(sum(len(values) for values in lists.values()), self.limits)
        if problem:
            raise Refused(f"Header: {problem}")
        headers: dict[str, list[str]] = {}
        for name, values in lists.items():
            if not isinstance(name, str) or header_name_problem(name):
                raise Refused(f"Header name {show(str(name), 40)}: letters, digits and - only (at most 128)")
            for one in values:
                problem = header_value_problem(one, self.limits) if isinstance(one, str) else "not a string"
                if problem:
                    raise Refused(f"Header {show(name, 40)}: values are strings without CR, LF or control "
                                  f"characters ({problem})")
            headers[name] = list(values)
        return headers

    def _server_name(self, out: dict[str, object]) -> None:
        server_name = self._text("TLSServerName", self.limits.server_name_length)
        if server_name is not None:
            if has_space_or_control(server_name):
                raise Refused("TLSServerName holds whitespace")
            out["TLSServerName"] = server_name

    def _kind_tcp(self, out: dict[str, object]) -> None:
        host, port = self._host_port(self.fields["TCP"], "TCP")
        out["TCP"] = f"{self._bracketed(host)}:{port}"

    def _kind_udp(self, out: dict[str, object]) -> None:
        host, port = self._host_port(self.fields["UDP"], "UDP")
        out["UDP"] = f"{self._bracketed(host)}:{port}"

    def _kind_h2ping(self, out: dict[str, object]) -> None:
        host, port = self._host_port(self.fields["H2PING"], "H2PING")
        out["H2PING"] = f"{self._bracketed(host)}:{port}"
        use_tls = self._flag("H2PingUseTLS")
        if use_tls is not None:
            out["H2PingUseTLS"] = use_tls
        if self._flag("TLSSkipVerify"):
            out["TLSSkipVerify"] = True
        self._server_name(out)

    def _kind_grpc(self, out: dict[str, object]) -> None:
        value = self.fields["GRPC"]
        if not isinstance(value, str):
            raise Refused("GRPC must be a string: /my.Service, :50051/my.Service or host:port/my.Service")
        target, slash, grpc_service = value.partition("/")
        too_long = path_problem(grpc_service, self.limits, "a gRPC check's service name")
        if too_long:
            raise Refused(too_long)
        if slash and (not grpc_service or has_space_or_control(grpc_service)):
            raise Refused("GRPC: the service name after / must be non-empty, without spaces or control characters")
        host, port = self._host_port(target, "GRPC")
        out["GRPC"] = f"{self._bracketed(host)}:{port}" + (f"/{grpc_service}" if slash else "")
        if self._flag("GRPCUseTLS"):
            out["GRPCUseTLS"] = True
        if self._flag("TLSSkipVerify"):
            out["TLSSkipVerify"] = True
        self._server_name(out)

    def _kind_ttl(self, out: dict[str, object]) -> None:
        pass  # TTL itself was validated with the durations

    def _kind_aliasservice(self, out: dict[str, object]) -> None:
        alias = self.fields["AliasService"]
        if not isinstance(alias, str) or identifier_problem(alias):
            raise Refused("AliasService must be a service ID (letters, digits and - _ . : @)")
        out["AliasService"] = alias

    def _kind_args(self, out: dict[str, object]) -> None:
        args = self.fields["Args"]
        if not isinstance(args, list) or not 0 < len(args) <= MAX_ARGS or \
                not all(isinstance(a, str) and "\x00" not in a for a in args):
            raise Refused(f"Args must be a list of 1 to {MAX_ARGS} strings")
        if self.settings.refuse_script_checks:
            raise Refused("script checks are refused here (--no-script-checks)")
        if not self.settings.agent_runs_scripts:
            raise Refused("the agent has script checks disabled (enable_script_checks) and the daemon never runs "
                          "container-declared commands on the host")
        port_text = "" if self.port is None else str(self.port)
        out["Args"] = [a.replace("$SERVICE_IP", self.address).replace("$SERVICE_PORT", port_text) for a in args]
        container = self.fields.get("DockerContainerID")
        if container is not None:
            if self.settings.exec_checks == "daemon":
                raise Refused("checks in the container are run by consul-reg here (--exec-checks daemon): "
                              "use SERVICE_CHECK_DOCKER")
            if not isinstance(container, str) or len(container) < 12 or not self.container_id.startswith(container):
                raise Refused("DockerContainerID may only name this container itself")
            out["DockerContainerID"] = self.container_id
            out["Shell"] = self._text("Shell", 256) or "/bin/sh"
        elif "Shell" in self.fields:
            raise Refused("Shell applies to a check with DockerContainerID")
