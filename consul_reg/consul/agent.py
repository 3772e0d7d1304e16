"""The one Consul client: a small HTTP client of the project's own on h11
(kept-alive connections, `transport.pool`), and the agent as the primary
registry.

Every request goes through `ConsulClient.call`: each path segment is
percent-encoded (nothing a container wrote can leave its segment or climb
out of `/v1/agent/service/...`), the token header is swapped atomically on
SIGHUP, and every failure is mapped to one of the registry errors once.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from consul_reg.core.calls import Later, Ready
from consul_reg.core.errors import (
    RegistryError,
    RegistryNotFound,
    RegistryPermissionDenied,
    RegistryScriptsRefused,
    RegistryUnavailable,
)
from consul_reg.core.records import (
    AgentCheck,
    AgentInfo,
    CheckRead,
    ReadScope,
    RegisteredService,
    Service,
    fold_id,
    section,
)
from consul_reg.core.text import printable
from consul_reg.mapping.registration import connect_payload, registration_payload  # noqa: F401  (re-exported)
from consul_reg.transport.pool import TRANSPORT_ERRORS, Answer, ConnectionPool, Pending, PoolBusy

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_ERROR_BODY = 300
MAX_CHECK_OUTPUT = 1024  # characters of a check's output kept (a restart's log line shows it)
# Bodies of the agent's answers that mean "no such check" for a TTL update.
_MISSING_CHECK_TEXTS = ("unknown check", "does not have", "not found")
# Check IDs that may be quoted in a filter expression as they are (the identifier set).
_FILTER_SAFE = re.compile(r"[A-Za-z0-9_.:@-]{1,512}")
# The check the agent adds to a service in maintenance: this prefix and the service's ID.
MAINTENANCE_CHECK_PREFIX = "_service_maintenance:"


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where the agent listens: host:port (http or https) or a unix socket."""

    scheme: str  # "http" or "https"
    host: str = "127.0.0.1"
    port: int = 8500
    socket_path: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def is_local(self) -> bool:
        if self.socket_path:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def __str__(self) -> str:
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return f"{self.scheme}://{self.host}:{self.port}"


# DebugConfig's port fields (-1: that listener is off) and its address lists
# ("tcp://127.0.0.1:8500", "udp://...", "unix:///path"), as Consul 1.8 to 1.x return them.
_LISTENER_PORT_FIELDS = ("HTTPPort", "HTTPSPort", "GRPCPort", "DNSPort")
_LISTENER_ADDRESS_FIELDS = ("HTTPAddrs", "HTTPSAddrs", "GRPCAddrs", "DNSAddrs")
MAX_LISTENERS = 16  # addresses read per field


def agent_listeners(debug: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(addresses, ports) the agent listens on, from /v1/agent/self's DebugConfig."""
    ports: list[int] = []
    addresses: list[str] = []
    for name in _LISTENER_PORT_FIELDS:
        value = debug.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
            ports.append(value)
    for name in _LISTENER_ADDRESS_FIELDS:
        listed = debug.get(name)
        for entry in listed[:MAX_LISTENERS] if isinstance(listed, list) else ():
            if not isinstance(entry, str) or not entry.startswith(("tcp://", "udp://")):
                continue  # a unix socket is no check target
            parts = urllib.parse.urlsplit(entry)
            try:
                port = parts.port
            except ValueError:
                continue
            if parts.hostname:
                addresses.append(parts.hostname)
            if port:
                ports.append(port)
    return tuple(dict.fromkeys(addresses)), tuple(dict.fromkeys(ports))


def agent_path(*segments: str) -> str:
    """`/v1/<segment>/<segment>...`, each segment percent-encoded on its own.
    An empty, `.` or `..` segment is refused: no request ever leaves its path."""
    for segment in segments:
        if segment in ("", ".", ".."):
            raise RegistryError(f"refusing an unsafe path segment {segment!r}")
    return "/v1/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)


class ConsulClient:
    """Pooled keep-alive HTTP to one agent (TCP, verified TLS or unix socket).
    Thread-safe: the sync loop, heartbeat senders, the agent watch and a KV
    mirror may share it."""

    def __init__(self, endpoint: ConsulEndpoint, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, max_connections: int = 16,
                 on_unreachable: Callable[[str], None] = lambda reason: None) -> None:
        self.endpoint = endpoint
        self.description = f"consul {endpoint}"
        self.timeout = timeout
        context: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            context = ssl.create_default_context(cafile=endpoint.ca_file)
            if endpoint.client_cert:
                context.load_cert_chain(endpoint.client_cert, endpoint.client_key)
        # Kept-alive connections framed by h11: through httpx.Client a call cost 3-5
        # times its CPU here (BENCHMARKS.md), and a TTL update is nothing else.
        self._pool = ConnectionPool(host=endpoint.host, port=endpoint.port, socket_path=endpoint.socket_path,
                                    ssl_context=context, max_connections=max_connections, timeout=timeout)
        self._headers: dict[str, str] = {}
        self.set_token(token)
        # Told about every transport failure (the agent watch probes at once).
        self._on_unreachable = on_unreachable

    def set_token(self, token: str | None) -> None:
        """Replace the headers of every later request at once (never mutated in place)."""
        self._headers = {"X-Consul-Token": token} if token else {}

    def call(self, method: str, segments: tuple[str, ...], what: str, params: dict[str, str] | None = None,
             body: bytes | None = None, timeout: float | None = None, not_found_ok: bool = False) -> Answer:
        """One request; a non-2xx answer or a transport failure raises a RegistryError subclass."""
        target = agent_path(*segments)
        if params:
            target += "?" + urllib.parse.urlencode(params)
        try:
            response = self._pool.request(method, target, body, self._headers,
                                          self.timeout if timeout is None else timeout)
        except TRANSPORT_ERRORS as error:
            raise self._unreachable(what, error) from None
        return self._checked(response, what, not_found_ok)

    def begin(self, segments: tuple[str, ...], what: str, params: dict[str, str] | None = None,
              wait: bool = True) -> PendingCall:
        """A GET sent now whose answer is taken later (`PendingCall.result`: checked as `call`
        checks it) by one thread (the caller's, or the one it hands it to); raises as `call`
        does when it cannot be sent, and with `wait=False` RegistryError at once when every
        connection is in use or a new one is not made within the pool's NO_WAIT_CONNECT_SECONDS
        (the agent is busy, not gone: nobody is told it is unreachable)."""
        target = agent_path(*segments)
        if params:
            target += "?" + urllib.parse.urlencode(params)
        try:
            return PendingCall(self, self._pool.begin("GET", target, self._headers, wait=wait), what)
        except PoolBusy as error:  # every connection in use, or a new one not made at once: busy, not gone
            raise RegistryError(f"{self.description}: could not {what} at once: {error}") from None
        except TRANSPORT_ERRORS as error:
            raise self._unreachable(what, error) from None

    def _unreachable(self, what: str, error: BaseException) -> RegistryUnavailable:
        reason = f"{self.description}: could not {what}: {type(error).__name__}: {_one_line(str(error))}"
        self._on_unreachable(reason)
        return RegistryUnavailable(reason)

    def _checked(self, response: Answer, what: str, not_found_ok: bool = False) -> Answer:
        if response.status_code < 300 or (not_found_ok and response.status_code == 404):
            return response
        text = _one_line(self._scrubbed(response.text))
        if response.status_code == 403:
            raise RegistryPermissionDenied(f"{self.description}: permission denied to {what} "
                                           f"(check the ACL token's policy): {text}")
        if "Scripts are disabled" in text:
            raise RegistryScriptsRefused(f"{self.description}: the agent refused to {what}: {text}")
        if response.status_code == 404 or (response.status_code == 500
                                           and any(t in text.lower() for t in _MISSING_CHECK_TEXTS)):
            raise RegistryNotFound(f"{self.description}: could not {what}: not found ({text})")
        raise RegistryError(f"{self.description}: could not {what}: {response.status_code} {text}")

    def _scrubbed(self, text: str) -> str:
        """An answer's text without the token (a proxy's error page may echo the request's
        headers), before it is cut: a cut could otherwise leave part of it in a message."""
        token = self._headers.get("X-Consul-Token", "")
        return text.replace(token, "[redacted]") if token else text

    def json(self, method: str, segments: tuple[str, ...], what: str, params: dict[str, str] | None = None,
             timeout: float | None = None) -> Any:
        response = self.call(method, segments, what, params, timeout=timeout)
        try:
            return response.json()
        except ValueError:
            raise RegistryError(f"{self.description}: could not {what}: the answer is not JSON") from None

    def close(self) -> None:
        self._pool.close()


class PendingCall:
    """A GET of `ConsulClient.begin`, sent; its answer is taken once, or it is cancelled."""

    def __init__(self, client: ConsulClient, pending: Pending, what: str) -> None:
        self._client, self._pending, self._what = client, pending, what

    def result(self) -> Answer:
        try:
            response = self._pending.answer()
        except TRANSPORT_ERRORS as error:
            raise self._client._unreachable(self._what, error) from None
        return self._client._checked(response, self._what)

    def json(self) -> Any:
        try:
            return self.result().json()
        except ValueError:
            raise RegistryError(f"{self._client.description}: could not {self._what}: the answer is not JSON") \
                from None

    def cancel(self) -> None:
        self._pending.cancel()


class _ServicesLater:
    """The agent's services a read ahead asked for, taken when the batch's first write needs them."""

    def __init__(self, registry: ConsulRegistry, call: PendingCall, scope: ReadScope) -> None:
        self._registry, self._call, self._scope = registry, call, scope

    def result(self) -> dict[str, RegisteredService]:
        try:
            return _records(self._call.json())
        except RegistryError as error:
            if type(error) is not RegistryError or " 400 " not in str(error):
                raise
        self._registry._filter_folds = False  # no `matches` in this agent's filters (see _filtered)
        return self._registry.services_in(self._scope)

    def cancel(self) -> None:
        self._call.cancel()


class ConsulRegistry:
    """The Consul agent as the primary registry: services are agent services."""

    def __init__(self, client: ConsulClient) -> None:
        self.client = client
        self.endpoint = client.endpoint
        self.description = client.description
        self._filter_folds = True  # the agent's filters have `matches` (see _filtered)

    def set_token(self, token: str | None) -> None:
        self.client.set_token(token)

    def agent_info(self, timeout: float | None = None) -> AgentInfo:
        """The agent's version, node, addresses and script policy (`timeout`: this call's
        own, else the client's)."""
        what = "read the agent's own information"
        info = self.client.json("GET", ("agent", "self"), what, timeout=timeout)
        if not isinstance(info, dict):  # else the watch's thread would end on an AttributeError
            raise RegistryError(f"{self.description}: could not {what}: the answer is not a JSON object")
        config, member, debug = (section(info, key) for key in ("Config", "Member", "DebugConfig"))
        address = str(debug.get("AdvertiseAddrLAN") or member.get("Addr") or "")
        addresses, ports = agent_listeners(debug)
        return AgentInfo(
            version=str(config.get("Version") or ""),
            node_name=str(config.get("NodeName") or ""),
            node_id=str(config.get("NodeID") or ""),
            advertise_address=address,
            runs_remote_scripts=bool(debug.get("EnableRemoteScriptChecks", debug.get("EnableScriptChecks", False))),
            listen_addresses=addresses,
            listen_ports=ports,
        )

    def services(self) -> dict[str, RegisteredService]:
        listed = self.client.json("GET", ("agent", "services"), "list the agent's services") or {}
        return _records(listed)

    def services_matching(self, service_ids: Collection[str]) -> dict[str, RegisteredService]:
        """The agent's records whose ID is one of `service_ids` in any case (Consul's
        catalog holds one row for all of them): one filtered GET, as current as a GET
        of each ID, and the only read that also sees `WEB` when asked for `web`."""
        if not service_ids:
            return {}
        listed = self._filtered(("agent", "services"), "ID", service_ids, "read the agent's services")
        return _records(listed)

    def services_in(self, scope: ReadScope) -> dict[str, RegisteredService]:
        """The agent's records `scope` asks for (IDs and ID prefixes, any case): one
        filtered GET."""
        if not scope:
            return {}
        listed = self._filtered(("agent", "services"), "ID", scope.ids, "read the agent's services",
                                patterns=_scope_patterns(scope), keep=scope.covers, also_checked=scope.prefixes)
        return _records(listed)

    def services_in_later(self, scope: ReadScope, wait: bool = True) -> Later[dict[str, RegisteredService]]:
        """`services_in`, sent now and answered when `result()` is called: the read ahead of
        container events (issue 24), sent before Docker's inspects and read after them, with
        no thread hop in between. `wait=False` (Docker's event thread): RegistryError rather
        than waiting for a connection or reading here."""
        if not scope or not self._filter_folds:
            if not wait:
                raise RegistryError(f"{self.description}: this agent's services are read when needed")
            return Ready(self.services_in(scope))
        call = self.client.begin(("agent", "services"), "read the agent's services",
                                 params=_match_filter("ID", (*scope.ids, *scope.prefixes), _scope_patterns(scope)),
                                 wait=wait)
        return _ServicesLater(self, call, scope)

    def check_owners(self, check_ids: Collection[str] | None = None) -> dict[str, str]:
        """Check ID -> ID of the service it belongs to ("" for a node check), of every
        check the agent holds, or of those of `check_ids` it holds in any case (one
        filtered GET: the catalog folds check IDs as it folds service IDs)."""
        if check_ids is None:
            listed = self.client.json("GET", ("agent", "checks"), "list the agent's checks")
        elif not check_ids:
            return {}
        else:
            listed = self._filtered(("agent", "checks"), "CheckID", check_ids, "list the agent's checks")
        if not isinstance(listed, dict):
            raise RegistryError(f"{self.description}: could not list the agent's checks: not a JSON object")
        return {str(check_id): str(entry.get("ServiceID") or "") for check_id, entry in listed.items()
                if isinstance(entry, dict)}

    def check_statuses(self, check_ids: Collection[str], service_ids: Collection[str] = ()) -> CheckRead:
        """Each of `check_ids` the agent holds under exactly that ID (its service, status and
        last output, cut), and which of `service_ids` are in maintenance (the agent's
        `_service_maintenance:<ID>` check): one filtered GET for both."""
        by_maintenance = {f"{MAINTENANCE_CHECK_PREFIX}{service_id}": service_id for service_id in service_ids}
        if not check_ids and not by_maintenance:
            return CheckRead()
        listed = self._filtered(("agent", "checks"), "CheckID", [*check_ids, *by_maintenance],
                                "read the agent's checks")
        if not isinstance(listed, dict):
            raise RegistryError(f"{self.description}: could not read the agent's checks: not a JSON object")
        wanted = set(check_ids)
        checks = {check_id: AgentCheck(str(entry.get("ServiceID") or ""), str(entry.get("Status") or ""),
                                       str(entry.get("Output") or "")[:MAX_CHECK_OUTPUT])
                  for check_id, entry in listed.items() if check_id in wanted and isinstance(entry, dict)}
        return CheckRead(checks, frozenset(by_maintenance[check_id] for check_id, entry in listed.items()
                                           if check_id in by_maintenance and isinstance(entry, dict)))

    def _filtered(self, path: tuple[str, ...], selector: str, ids: Collection[str], what: str,
                  patterns: Collection[str] = (), keep: Callable[[str], bool] | None = None,
                  also_checked: Collection[str] = ()) -> Any:
        """A listing of the entries whose `selector` is one of `ids`, ASCII case folded
        (or, given `patterns` and `keep`, matches one of those regexes: `keep` says the same
        of a key). An agent whose filter language has no `matches` (before go-bexpr's
        regexes) answers 400: the whole listing is then read and folded here, from then on."""
        params = _match_filter(selector, (*ids, *also_checked),
                               patterns if keep is not None else [_pattern(i) for i in ids])
        if self._filter_folds:
            try:
                return self.client.json("GET", path, what, params=params)
            except RegistryError as error:
                if type(error) is not RegistryError or " 400 " not in str(error):
                    raise
                self._filter_folds = False
        listed = self.client.json("GET", path, what) or {}
        wanted = {fold_id(i) for i in ids}
        kept = keep if keep is not None else (lambda key: fold_id(key) in wanted)
        return {key: entry for key, entry in listed.items() if kept(str(key))} if isinstance(listed, dict) else listed

    def register(self, service: Service) -> None:
        self.client.call("PUT", ("agent", "service", "register"), f"register {service.id}",
                         params={"replace-existing-checks": "true"},
                         body=json.dumps(registration_payload(service)).encode())

    def deregister(self, service: RegisteredService) -> None:
        self.client.call("PUT", ("agent", "service", "deregister", service.id), f"deregister {service.id}")

    def enable_maintenance(self, service_id: str, reason: str) -> None:
        self.client.call("PUT", ("agent", "service", "maintenance", service_id),
                         f"put {service_id} in maintenance", params={"enable": "true", "reason": reason})

    def disable_maintenance(self, service_id: str) -> None:
        self.client.call("PUT", ("agent", "service", "maintenance", service_id),
                         f"take {service_id} out of maintenance", params={"enable": "false"})

    def maintenance_reasons(self, service_ids: Collection[str]) -> dict[str, str]:
        """Service ID -> the reason of its maintenance, of those of `service_ids` in
        maintenance: one filtered read of the agent's checks for all of them."""
        if not service_ids:
            return {}
        by_check = {f"{MAINTENANCE_CHECK_PREFIX}{service_id}": service_id for service_id in service_ids}
        params = {"filter": " or ".join(f'CheckID == "{c}"' for c in sorted(by_check)
                                        if _FILTER_SAFE.fullmatch(c))}
        checks = self.client.json("GET", ("agent", "checks"), "read the agent's maintenance checks",
                                  params=params) or {}
        return {by_check[check_id]: str(check.get("Notes") or "") for check_id, check in checks.items()
                if check_id in by_check and isinstance(check, dict)} if isinstance(checks, dict) else {}

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """Report a TTL check (the heartbeat's hot path). RegistryNotFound when the
        agent does not know the check (it restarted, or the service was reaped)."""
        self.client.call("PUT", ("agent", "check", "update", check_id), f"update check {check_id}",
                         body=json.dumps({"Status": status, "Output": output}).encode())

    def close(self) -> None:
        self.client.close()


class ConsulKV:
    """The few KV calls the Consul KV mirror needs, through the one client."""

    def __init__(self, client: ConsulClient) -> None:
        self.client = client

    def items(self, prefix: str) -> dict[str, tuple[str, int]]:
        """key -> (value, flags) of every key under `prefix` (its segments, no trailing slash)."""
        try:
            entries = self.client.json("GET", ("kv", *prefix.split("/")), f"read KV {prefix}/",
                                       params={"recurse": "true"})
        except RegistryNotFound:
            return {}
        found = {}
        for entry in entries or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("Key"), str):
                continue
            raw = base64.b64decode(entry.get("Value") or "")
            found[entry["Key"]] = (raw.decode("utf-8", "replace"), int(entry.get("Flags") or 0))
        return found

    def put(self, key: str, value: str, flags: int) -> None:
        self.client.call("PUT", ("kv", *key.split("/")), f"write KV {key}", params={"flags": str(flags)},
                         body=value.encode())

    def delete(self, key: str) -> None:
        self.client.call("DELETE", ("kv", *key.split("/")), f"delete KV {key}")


def _pattern(identifier: str) -> str:
    """An ID as a `(?i)` regex of every spelling Consul's catalog folds into it:
    identifier characters, `.` the one that means something in a regex; and `İ` (U+0130),
    which the catalog lower-cases to `i` (Go's strings.ToLower) but `(?i)` never folds."""
    return identifier.replace(".", "[.]").replace("i", "[i\u0130]").replace("I", "[i\u0130]")


def _match_filter(selector: str, checked: Collection[str], patterns: Collection[str]) -> dict[str, str]:
    """The `filter` parameter matching `selector` against any of `patterns` in any case;
    `checked` (what the patterns were made of) must be identifiers."""
    unsafe = [i for i in checked if not _FILTER_SAFE.fullmatch(i)]
    if unsafe:  # never reached: IDs are identifiers; refuse rather than quote
        raise RegistryError(f"refusing to look up ID {unsafe[0]!r}: unsafe characters")
    return {"filter": f'{selector} matches "(?i)^({"|".join(sorted(set(patterns)))})$"'}


def _scope_patterns(scope: ReadScope) -> tuple[str, ...]:
    """A scope as regex alternatives (`_pattern`; `_match_filter` orders them)."""
    return (*(_pattern(p) + ".*" for p in scope.prefixes), *(_pattern(i) for i in scope.ids))


def _records(listed: Any) -> dict[str, RegisteredService]:
    """The agent's answer of /v1/agent/services as records (what is not an object is skipped)."""
    if not isinstance(listed, dict):
        return {}
    return {
        str(service_id): RegisteredService(
            id=str(service_id),
            name=str(entry.get("Service") or ""),
            address=str(entry.get("Address") or ""),
            port=entry.get("Port") or None,
            meta={str(k): str(v) for k, v in entry["Meta"].items()} if isinstance(entry.get("Meta"), dict) else {},
        )
        for service_id, entry in listed.items() if isinstance(entry, dict)
    }


def _one_line(text: str, limit: int = MAX_ERROR_BODY) -> str:
    return printable(text, limit, one_line=True)
