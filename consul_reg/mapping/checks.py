"""SERVICE_CHECK_* keys -> Consul agent check definitions. Pure: no I/O, never raises.

Every kind that is set yields its own check with a stable ID
`service:<service-id>:<kind>`, except the application-owned TTL check, which
keeps Consul's default ID `service:<service-id>` that applications PUT to.
Fields the agent's version does not know are left out (Consul 1.7+ refuses
a registration with any unknown field).
"""

from __future__ import annotations

import re
from dataclasses import replace

from consul_reg.core.records import Check, DaemonProbe
from consul_reg.mapping.check_caps import (
    HEADER_NAME,
    body_problem,
    header_count_problem,
    header_name_problem,
    header_value_problem,
    path_problem,
    server_name_problem,
    text_problem,
)
from consul_reg.mapping.check_fields import (
    DISABLE_REDIRECTS_MIN_VERSION,
    INITIAL_STATUSES,
    frozen_fields,
    go_duration,
    parse_duration,
    parse_version,
    redirect_problem,
)
from consul_reg.mapping.check_ports import relative_target, split_relative
from consul_reg.mapping.check_targets import OwnEndpoints, check_target_problem
from consul_reg.mapping.labels import KeyValue, show
from consul_reg.mapping.settings import CheckSettings
from consul_reg.mapping.validate import Limits, has_space_or_control, normal_host
from consul_reg.mapping.versions import CHECK_FIELD_MIN_VERSION, check_field_refusal

__all__ = ["CheckSettings", "HEADER_NAME", "body_problem", "go_duration", "parse_duration", "parse_version",
           "redirect_problem", "service_checks"]

DEFAULT_INTERVAL = "10s"
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
_PORT = re.compile(r"[0-9]{1,5}")
# Daemon-run exec checks: Consul clamps its own check intervals and timeouts to 1 s.
EXEC_MIN_SECONDS = 1.0
TRUE_VALUES = ("true", "1", "yes", "on")
# Kinds that probe a network endpoint, with the key that enables each.
NETWORK_KINDS = ("http", "https", "tcp", "grpc", "h2ping", "udp")
# Check fields that appeared after Consul 1.7 (the oldest agent that refuses unknown fields).
FIELD_MIN_VERSION = CHECK_FIELD_MIN_VERSION


def service_checks(
    keys: dict[str, KeyValue],
    service_id: str,
    service_name: str,
    address: str,
    port: int | None,
    container_id: str,
    settings: CheckSettings,
    warnings: list[str],
    own: OwnEndpoints | None = None,
    limits: Limits = Limits(),
) -> tuple[Check, ...]:
    """All checks the keys of one service (general merged with its port's) ask for.

    `own` is what network checks may probe without an operator's rule (see
    validate.check_target_problem); by default the service's own address:port.
    """
    if own is None:
        own = OwnEndpoints(host_pairs=frozenset({(normal_host(address), port)} if port is not None else ()),
                           chosen_addresses=frozenset({normal_host(address)}))
    builder = _Builder(keys, service_id, service_name, address, port, container_id, settings, warnings, own, limits)
    return builder.build()


def asks_checks(keys: dict[str, KeyValue]) -> bool:
    """Whether any SERVICE_CHECK_* key is set: without one, `service_checks` makes none."""
    return any(key.startswith("check_") for key in keys)


class _Builder:
    def __init__(self, keys: dict[str, KeyValue], service_id: str, service_name: str, address: str,
                 port: int | None, container_id: str, settings: CheckSettings, warnings: list[str],
                 own: OwnEndpoints, limits: Limits) -> None:
        self.own = own
        self.limits = limits
        self.keys: dict[str, KeyValue] = keys
        self.service_id: str = service_id
        self.service_name: str = service_name
        self.address: str = address
        self.port: int | None = port
        self.container_id: str = container_id
        self.settings: CheckSettings = settings
        self.warnings: list[str] = warnings

    def build(self) -> tuple[Check, ...]:
        if not asks_checks(self.keys):
            return ()
        common = self._common_fields()
        if common is None:
            return ()
        checks: list[Check | None] = []
        for kind in NETWORK_KINDS:
            if self._value(f"check_{kind}") is not None:
                checks.append(self._network_check(kind, common))
        if self._value("check_script") is not None:
            checks.append(self._script_check(common))
        if self._value("check_docker") is not None:
            checks.append(self._docker_check(common))
        if self._value("check_ttl") is not None:
            checks.append(self._app_ttl_check(common))
        return tuple(c for c in checks if c is not None)

    # -- key access -------------------------------------------------------

    def _value(self, key: str) -> str | None:
        entry = self.keys.get(key)
        if entry is None or not entry.value.strip():
            return None
        return entry.value.strip()

    def _warn(self, key: str, message: str) -> None:
        entry = self.keys.get(key)
        written = entry.original_key if entry else "SERVICE_" + key.upper()
        value = f"={show(entry.value)}" if entry else ""
        self.warnings.append(f"key {show(written)}{value}: {message}")

    def _duration(self, key: str) -> str | None | bool:
        """The duration under `key`; None when unset; False when invalid (warned)."""
        value = self._value(key)
        if value is None:
            return None
        if parse_duration(value) is None:
            self._warn(key, "not a duration (like 10s, 1m30s), so that check is dropped")
            return False
        return value

    # -- shared fields ----------------------------------------------------

    def _common_fields(self) -> dict[str, object] | None:
        """Fields every check of this service shares; None drops them all (warned)."""
        fields: dict[str, object] = {}
        status = self._value("check_initial_status")
        if status is not None:
            if status.lower() not in INITIAL_STATUSES:
                self._warn("check_initial_status", f"must be one of {', '.join(INITIAL_STATUSES)}; ignored")
            else:
                fields["Status"] = status.lower()
        deregister_after = self._duration("check_deregister_after")
        if deregister_after is False:
            return None
        if deregister_after:
            fields["DeregisterCriticalServiceAfter"] = deregister_after
        for key, field_name in (("check_success_before_passing", "SuccessBeforePassing"),
                                ("check_failures_before_critical", "FailuresBeforeCritical")):
            value = self._value(key)
            if value is None:
                continue
            if not _WHOLE_NUMBER.fullmatch(value):
                self._warn(key, "must be a whole number (ASCII digits); ignored")
            else:
                fields[field_name] = int(value)
        notes = self._value("check_notes")
        if notes is not None:
            problem = text_problem("Notes", notes, self.limits.check_text_length)
            if problem:
                self._warn("check_notes", f"{problem}; left out")
            else:
                fields["Notes"] = notes
        return fields

    def _timing(self, kind: str) -> dict[str, object] | None:
        """Interval and timeout: CHECK_<KIND>_INTERVAL overrides CHECK_INTERVAL."""
        fields: dict[str, object] = {}
        for suffix, field_name, default in (("interval", "Interval", DEFAULT_INTERVAL), ("timeout", "Timeout", None)):
            value = self._duration(self._timing_key(kind, suffix))
            if value is False:
                return None
            if value or default:
                fields[field_name] = value or default
        return fields

    # -- kinds ------------------------------------------------------------

    def _network_check(self, kind: str, common: dict[str, object]) -> Check | None:
        key = f"check_{kind}"
        value = self._value(key) or ""
        timing = self._timing(kind)
        if timing is None:
            return None
        address = self._value("check_address") or self.address
        port_text = self._value("check_port")
        port = self.port
        if port_text is not None:
            if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
                self._warn("check_port", "not a port number, so that check is dropped")
                return None
            port = int(port_text)
        relative, reading = split_relative(value), ""
        if isinstance(relative, str):
            self._warn(key, f"{relative}, so that check is dropped")
            return None
        if relative is not None:  # `:PORT[/rest]`: the container's port PORT, wherever the agent reaches it
            port, value = relative
            if self._value("check_address") is None:
                target = relative_target(port, "udp" if kind == "udp" else "tcp", address, self.own.reach)
                if target.problem:
                    self._warn(key, f"{target.problem}; that check is dropped")
                    return None
                address, port, reading = target.address, target.port, target.reading
        if port is None:
            self._warn(key, "this service has no port; set SERVICE_CHECK_PORT, so that check is dropped")
            return None
        needed = FIELD_MIN_VERSION.get(kind.upper())
        if needed and self.settings.agent_version < needed:
            self._warn(key, f"{kind.upper()} checks need Consul {needed[0]}.{needed[1]} or later; this agent is "
                            f"{self.settings.agent_version[0]}.{self.settings.agent_version[1]}, so it is dropped")
            return None
        problem = check_target_problem(address, port, self.own, self.settings.policy)
        if problem:
            chosen_by = [k for k in ("check_address", "check_port") if self._value(k) is not None]
            self._warn(chosen_by[0] if chosen_by else key,
                       f"the {kind.upper()} check would probe {show(address)} port {port}: {problem}; "
                       "that check is dropped")
            return None
        path_too_long = path_problem(value, self.limits, "an HTTP check's path" if kind != "grpc" else
                                     "a gRPC check's service name") if kind in ("http", "https", "grpc") else None
        if path_too_long:
            self._warn(key, f"{path_too_long}, so that check is dropped")
            return None
        if kind in ("http", "https", "grpc") and has_space_or_control(value):
            self._warn(key, "holds whitespace or control characters, so that check is dropped")
            return None
        address = address[1:-1] if address.startswith("[") and address.endswith("]") else address
        host = f"[{address}]" if ":" in address else address
        fields: dict[str, object] = {**common, **timing}
        if kind in ("http", "https"):
            path = value if value.startswith("/") else "/" + value
            fields["HTTP"] = f"{kind}://{host}:{port}{path}"
            method = self._value(f"check_{kind}_method")
            if method is not None:
                if not re.fullmatch(r"[A-Za-z]{1,16}", method):
                    self._warn(f"check_{kind}_method", "not an HTTP method, so that check is dropped")
                    return None
                if method.upper() not in self.settings.policy.methods:
                    self._warn(f"check_{kind}_method", f"only {', '.join(self.settings.policy.methods)} are "
                                                       "allowed (--allow-check-method), so that check is dropped")
                    return None
                fields["Method"] = method.upper()
            headers = self._headers()
            if headers is None:
                return None
            if headers:
                fields["Header"] = headers
            body = self._body(kind)
            if body is False:
                return None
            if body:
                fields["Body"] = body
            sends_body = bool(body) and check_field_refusal("Body", self.settings.agent_version) is None
            problem = redirect_problem(str(fields.get("Method", "GET")), sends_body, self.settings)
            if problem:
                self._warn(f"check_{kind}_body" if sends_body else f"check_{kind}_method",
                           f"the {kind.upper()} check {show(f'service:{self.service_id}:{kind}')}: {problem}; "
                           "that check is dropped")
                return None
            if kind == "https" and self._flag("check_tls_skip_verify"):
                fields["TLSSkipVerify"] = True
            if self.settings.agent_version >= DISABLE_REDIRECTS_MIN_VERSION:
                fields["DisableRedirects"] = True  # a redirect would lead the agent past the target policy
        elif kind in ("tcp", "udp"):
            fields[kind.upper()] = f"{host}:{port}"
        elif kind == "grpc":
            service_suffix = "" if value.lower() in TRUE_VALUES or not value else "/" + value
            fields["GRPC"] = f"{host}:{port}{service_suffix}"
            if self._flag("check_grpc_use_tls"):
                fields["GRPCUseTLS"] = True
                if self._flag("check_tls_skip_verify"):
                    fields["TLSSkipVerify"] = True
        elif kind == "h2ping":
            fields["H2PING"] = f"{host}:{port}"
        server_name = self._value("check_tls_server_name")
        if server_name is not None and kind in ("https", "grpc", "h2ping"):
            problem = server_name_problem(server_name, self.limits)
            if problem:
                self._warn("check_tls_server_name", f"{problem}; left out")
            else:
                fields["TLSServerName"] = server_name
        return replace(self._check(kind, fields), reading=reading)

    def _headers(self) -> dict[str, list[str]] | None:
        """SERVICE_CHECK_HTTP_HEADER_<NAME> keys, counted before any is looked into."""
        header_keys = sorted(key for key in self.keys if key.startswith("check_http_header"))
        problem = header_count_problem(len(header_keys), self.limits)
        if problem:
            self._warn(header_keys[0], f"{problem} (SERVICE_CHECK_HTTP_HEADER_* keys), so that check is dropped")
            return None
        headers: dict[str, list[str]] = {}
        for key in header_keys:
            raw_name = key[len("check_http_header"):].lstrip("_")
            name = "-".join(part.capitalize() for part in raw_name.split("_") if part)
            if header_name_problem(name):
                self._warn(key, "a header needs a name of letters, digits and _ (CHECK_HTTP_HEADER_X_API_KEY)"
                                ", so that check is dropped")
                return None
            problem = header_value_problem(self.keys[key].value, self.limits)
            if problem:
                self._warn(key, f"{problem}, so that check is dropped")
                return None
            headers.setdefault(name, []).append(self.keys[key].value)
        return headers

    def _body(self, kind: str) -> str | None | bool:
        """CHECK_HTTP_BODY (CHECK_HTTPS_BODY for HTTPS): None when unset, False when refused (warned)."""
        key = f"check_{kind}_body"
        entry = self.keys.get(key)
        if entry is None or entry.value == "":
            return None
        problem = body_problem(entry.value, self.limits.check_body_length)
        if problem:
            self._warn(key, f"{problem}, so that check is dropped")
            return False
        return entry.value

    def _script_check(self, common: dict[str, object]) -> Check | None:
        if self.settings.refuse_script_checks:
            self._warn("check_script", "script checks are refused here (--no-script-checks); dropped")
            return None
        if not self.settings.agent_runs_scripts:
            self._warn("check_script", "the agent has script checks disabled (enable_script_checks) and the "
                                       "daemon never runs container-declared commands on the host; dropped")
            return None
        timing = self._timing("script")
        if timing is None:
            return None
        command = (self._value("check_script") or "").replace("$SERVICE_IP", self.address)
        command = command.replace("$SERVICE_PORT", "" if self.port is None else str(self.port))
        return self._check("script", {**common, **timing, "Args": ["/bin/sh", "-c", command]})

    def _docker_check(self, common: dict[str, object]) -> Check | None:
        timing = self._timing("docker")
        if timing is None:
            return None
        command = self._value("check_docker") or ""
        if self.settings.exec_checks == "daemon" or not self.settings.agent_runs_scripts:
            interval, timeout = self._exec_timing(timing)
            ttl = go_duration(max(3 * interval, interval + timeout + 5))
            probe = DaemonProbe(kind="exec", interval=interval, timeout=timeout, command=command,
                                container_id=self.container_id)
            fields = {k: v for k, v in common.items() if k != "Status"}
            fields.update({"TTL": ttl, "Status": common.get("Status", "critical")})
            return self._check("docker", fields, probe)
        return self._check("docker", {**common, **timing, "DockerContainerID": self.container_id,
                                      "Shell": "/bin/sh", "Args": ["/bin/sh", "-c", command]})

    def _exec_timing(self, timing: dict[str, object]) -> tuple[float, float]:
        """Interval and timeout of a daemon-run exec: at least 1 s each, the
        timeout never above the interval (warned when clamped)."""
        interval = parse_duration(str(timing["Interval"])) or 10.0
        if interval < EXEC_MIN_SECONDS:
            self._warn(self._timing_key("docker", "interval"),
                       f"a check run by consul-reg runs at most once a second; using {go_duration(EXEC_MIN_SECONDS)}")
            interval = EXEC_MIN_SECONDS
        timeout_key = self._timing_key("docker", "timeout")
        timeout = parse_duration(str(timing["Timeout"])) if "Timeout" in timing else None
        if timeout is None:
            return interval, min(interval, 10.0)
        if timeout < EXEC_MIN_SECONDS:
            self._warn(timeout_key, f"a check run by consul-reg gets at least {go_duration(EXEC_MIN_SECONDS)}; "
                                    "using that")
            timeout = EXEC_MIN_SECONDS
        if timeout > interval:
            self._warn(timeout_key, f"longer than the interval ({go_duration(interval)}); using the interval")
            timeout = interval
        return interval, timeout

    def _timing_key(self, kind: str, suffix: str) -> str:
        specific = f"check_{kind}_{suffix}"
        return specific if self._value(specific) is not None else f"check_{suffix}"

    def _app_ttl_check(self, common: dict[str, object]) -> Check | None:
        ttl = self._duration("check_ttl")
        if not ttl:
            return None
        fields = {**common, "TTL": ttl}
        return Check(check_id=f"service:{self.service_id}", name=f"Service '{self.service_name}' TTL check",
                     definition=frozen_fields(self._for_agent(fields)))

    # -- helpers ----------------------------------------------------------

    def _flag(self, key: str) -> bool:
        value = self._value(key)
        return value is not None and value.lower() in TRUE_VALUES

    def _check(self, kind: str, fields: dict[str, object], probe: DaemonProbe | None = None) -> Check:
        return Check(check_id=f"service:{self.service_id}:{kind}",
                     name=f"Service '{self.service_name}' {kind} check",
                     definition=frozen_fields(self._for_agent(fields)), daemon_probe=probe)

    def _for_agent(self, fields: dict[str, object]) -> dict[str, object]:
        kept = {}
        for name, value in fields.items():
            refusal = check_field_refusal(name, self.settings.agent_version)
            if refusal:
                self.warnings.append(f"service {show(self.service_id)}: {refusal}: left out")
                continue
            kept[name] = value
        return kept
