"""Records that flow from the mapping to the registries.

Equality of these frozen dataclasses is what reconcile compares: two equal
`Service` values produce the same registration.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# Meta keys that mark a service as registered by consul-reg on one host.
# Consul reserves the "consul-" prefix, so ours use an underscore.
MARKER_SOURCE_KEY = "external-source"
MARKER_SOURCE_VALUE = "consul-reg"
MARKER_HOST_KEY = "consul_reg_host"
MARKER_CONTAINER_KEY = "consul_reg_container"
MARKER_DIGEST_KEY = "consul_reg_digest"
# Written only by a daemon run with --instance: two daemons of one host tell their records apart.
MARKER_INSTANCE_KEY = "consul_reg_instance"
MARKER_KEYS = frozenset({MARKER_SOURCE_KEY, MARKER_HOST_KEY, MARKER_CONTAINER_KEY, MARKER_DIGEST_KEY,
                         MARKER_INSTANCE_KEY})
# Meta of the sidecar proxy registration the agent derives from a service (SERVICE_CONNECT=sidecar):
# set so that the agent does not copy the service's own Meta, ownership marker included, into it.
SIDECAR_FOR_KEY = "consul_reg_sidecar_for"


@dataclass(frozen=True)
class Owner:
    """This daemon's identity in the ownership marker: its host name (as default
    IDs and registrator's leftover pattern use it) and its `--instance` name ("" by
    default). Shown as the host name."""

    host: str
    instance: str = ""

    def __str__(self) -> str:
        return self.host


def as_owner(owner: Owner | str) -> Owner:
    """An Owner; a plain host name is the daemon of that host without --instance."""
    return owner if isinstance(owner, Owner) else Owner(owner)


def owner_meta(owner: Owner | str) -> dict[str, str]:
    """The ownership marker of `owner`'s records (without the container and digest)."""
    owner = as_owner(owner)
    meta = {MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE, MARKER_HOST_KEY: owner.host}
    if owner.instance:
        meta[MARKER_INSTANCE_KEY] = owner.instance
    return meta


def section(holder: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`holder[key]` when it is an object (a part of Docker's inspect data), else {}:
    what a container or an engine sent is never trusted to have its usual shape."""
    value = holder.get(key)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ContainerStatus:
    """A container's run and Docker-health state, for daemon-owned checks, and
    when it last started (for the restart watcher's grace and backoff)."""

    running: bool = True
    paused: bool = False
    health: str = ""  # "", "starting", "healthy", "unhealthy"
    health_output: str = ""
    started_at: float = 0.0  # State.StartedAt in seconds since the epoch; 0: not known
    ran_before: bool = False  # State.FinishedAt is set: this start is a restart (by anyone), not the first
    stop_timeout: float = 10.0  # Config.StopTimeout (Docker's default 10 s): what a restart waits before SIGKILL

    @classmethod
    def from_inspect(cls, container: dict) -> ContainerStatus:
        state = section(container, "State")
        health = section(state, "Health")
        log = health.get("Log") if isinstance(health.get("Log"), list) else []
        last = log[-1] if log and isinstance(log[-1], dict) else {}
        return cls(running=bool(state.get("Running")), paused=bool(state.get("Paused")),
                   health=str(health.get("Status") or ""), health_output=str(last.get("Output") or "").strip(),
                   started_at=docker_time(state.get("StartedAt")), ran_before=docker_time(state.get("FinishedAt")) > 0,
                   stop_timeout=_stop_timeout(section(container, "Config").get("StopTimeout")))


def _stop_timeout(value: object) -> float:
    """Config.StopTimeout in seconds: Docker's 10 when unset, at most an hour."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 10.0
    return float(min(value, 3600))


_DOCKER_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
                          r"(Z|[+-][0-9]{2}:[0-9]{2})")


def docker_time(value: object) -> float:
    """Docker's RFC 3339 time ("2024-05-01T10:00:00.123456789Z", Podman's with an offset)
    in seconds since the epoch; 0.0 for its zero time ("0001-01-01T00:00:00Z") or anything else."""
    match = _DOCKER_TIME.fullmatch(value) if isinstance(value, str) and len(value) <= 40 else None
    if match is None or int(match.group(1)) < 1970:
        return 0.0
    year, month, day, hour, minute, second = (int(match.group(n)) for n in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return 0.0
    zone = match.group(8)
    offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds + float("0" + (match.group(7) or ".0"))


@dataclass(frozen=True)
class AgentCheck:
    """One check as the agent holds it: its service, its status and its last output."""

    service_id: str
    status: str  # "passing", "warning", "critical" (or "maintenance"-style checks' own)
    output: str = ""


@dataclass(frozen=True)
class CheckRead:
    """The agent's answer to one read of the restart watcher: each asked check it holds
    (by check ID), and which of the asked services are in maintenance (the daemon's own
    drain of a stopping container, or an operator's)."""

    checks: Mapping[str, AgentCheck] = field(default_factory=dict)
    maintenance: frozenset[str] = frozenset()  # service IDs


@dataclass(frozen=True)
class RestartPolicy:
    """SERVICE_CHECK_RESTART_*, in Nomad's check_restart terms: the container is
    restarted once one of the service's checks has failed `limit` times in a row
    (critical, or warning unless `ignore_warnings`), counting only from `grace`
    seconds after each start. `samples`: each counted check's ID and the seconds
    between two of its results as counted (its interval; a TTL check's TTL)."""

    limit: int
    grace: float
    ignore_warnings: bool = False
    samples: tuple[tuple[str, float], ...] = ()
    # The counted checks that mirror Docker's health (the Docker-health check, a worker's heartbeat on a
    # container with a HEALTHCHECK): a result while Docker says `starting` is no result.
    health_mirrors: tuple[str, ...] = ()
    # Where the grace came from ("key SERVICE_CHECK_RESTART_GRACE (label)", "default: ..."), for explain.
    grace_source: str = field(default="", compare=False)

    def fails(self, status: str) -> bool:
        """Whether a check in `status` counts as a failed result."""
        return status == "critical" or (status == "warning" and not self.ignore_warnings)


@dataclass(frozen=True)
class DaemonProbe:
    """What the daemon itself reports to a TTL check it owns (the agent only
    stores the result): a heartbeat, a command run in the container through
    the Docker exec API, or the container's Docker health."""

    kind: str  # "heartbeat", "exec", "docker-health"
    interval: float  # seconds between reports
    timeout: float = 10.0
    command: str = ""
    container_id: str = ""


@dataclass(frozen=True)
class Check:
    """One Consul agent check attached to a service.

    `definition` holds the Consul check fields (HTTP, Interval, ...) as
    sorted pairs (nested dicts too) so the record stays hashable.
    """

    check_id: str
    name: str
    definition: tuple[tuple[str, object], ...] = ()
    daemon_probe: DaemonProbe | None = None
    # How a relative target (`:9090`) was read, for explain ("" when none was written).
    reading: str = field(default="", compare=False)

    @property
    def definition_dict(self) -> dict[str, object]:
        return {key: _thaw(value) for key, value in self.definition}


def _thaw(value: object) -> object:
    """Back from the frozen form: tuples of (str, x) pairs are dicts, other tuples lists."""
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: _thaw(v) for k, v in value}
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class TaggedAddress:
    """One of Consul's service TaggedAddresses (lan_ipv4, lan_ipv6, wan, ...)."""

    name: str
    address: str
    port: int


@dataclass(frozen=True)
class Upstream:
    """A Connect upstream of a sidecar proxy: a service reached at 127.0.0.1:local_port."""

    destination: str
    local_port: int


@dataclass(frozen=True)
class Connect:
    """SERVICE_CONNECT: a Connect-native service, or one with a sidecar proxy registration."""

    native: bool = False
    sidecar: bool = False
    upstreams: tuple[Upstream, ...] = ()


@dataclass(frozen=True)
class Service:
    """A service as consul-reg wants it to exist in a registry."""

    id: str
    name: str
    address: str
    port: int | None
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    checks: tuple[Check, ...] = ()
    container_id: str = ""
    container_name: str = ""
    # Port as exposed inside the container ("80/tcp"), for mirrors that record it.
    exposed_port: str = ""
    # Why `address` was chosen, logged once per container.
    address_reason: str = field(default="", compare=False)
    tagged_addresses: tuple[TaggedAddress, ...] = ()  # sorted by name
    weights: tuple[int, int] | None = None  # (passing, warning)
    enable_tag_override: bool = False
    connect: Connect | None = None
    # Field -> where its value came from ("key SERVICE_WEIGHT (label)", "-ip6"), for explain.
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # SERVICE_CHECK_RESTART_*: restart this service's container when its checks keep failing
    # (never registered: the daemon's own business, so not in the digest).
    restart: RestartPolicy | None = None

    @property
    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}" if self.port is not None else self.address

    @cached_property
    def digest(self) -> str:
        """A short digest of everything that is registered, kept in Meta.

        The agent does not echo every field back (checks least of all), so
        "already registered as desired" is decided by this digest alone.
        """
        content: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "tags": list(self.tags),
            "meta": sorted(self.meta),
            "checks": [[c.check_id, c.name, sorted((k, repr(v)) for k, v in c.definition)] for c in self.checks],
        }
        # Only when set: a service without them keeps the digest it had before they existed
        # (no re-registration of everything when the daemon is upgraded).
        if self.tagged_addresses:
            content["tagged_addresses"] = [[t.name, t.address, t.port] for t in self.tagged_addresses]
        if self.weights is not None:
            content["weights"] = list(self.weights)
        if self.enable_tag_override:
            content["enable_tag_override"] = True
        if self.connect is not None:
            content["connect"] = [self.connect.native, self.connect.sidecar,
                                  [[u.destination, u.local_port] for u in self.connect.upstreams]]
        raw = json.dumps(content, sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class RegisteredService:
    """A service as a registry reports it (only what reconcile needs)."""

    id: str
    name: str
    address: str = ""
    port: int | None = None
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}" if self.port else self.address

    def owned_by(self, owner: Owner | str) -> bool:
        """Marked by this host's daemon of the same --instance (a plain host name is
        the daemon without an instance)."""
        owner = as_owner(owner)
        return (
            self.meta.get(MARKER_SOURCE_KEY) == MARKER_SOURCE_VALUE
            and self.meta.get(MARKER_HOST_KEY) == owner.host
            and self.meta.get(MARKER_INSTANCE_KEY, "") == owner.instance
        )

    @property
    def from_consul_reg(self) -> bool:
        """Marked by some consul-reg (any host, any instance): never a registrator leftover."""
        return self.meta.get(MARKER_SOURCE_KEY) == MARKER_SOURCE_VALUE

    @property
    def digest(self) -> str:
        return self.meta.get(MARKER_DIGEST_KEY, "")

    @property
    def container_id(self) -> str:
        return self.meta.get(MARKER_CONTAINER_KEY, "")


@dataclass(frozen=True)
class ContainerDesire:
    """What one container asks for: its services, and whether a stopped
    container's existing records are to be kept (-deregister on-success)."""

    container_id: str
    container_name: str
    created: str  # Docker's Created timestamp; the newer container wins a contested ID
    services: tuple[Service, ...] = ()
    keep_existing: bool = False
    status: ContainerStatus = ContainerStatus()
    stop_signal: str = ""  # Config.StopSignal: this signal also starts a drain
    env_file: str = ""  # path of its env file inside the container, polled for changes
    # Docker's listing entry this desire was built from (minus its moving "Status"
    # text): while the listing is unchanged, a full pass reuses the desire.
    listing_key: str = field(default="", compare=False)


def keeps_records(deregister: str, exit_code: object) -> bool:
    """-deregister on-success: a container that failed (exit code 1-127) keeps its
    records; exit 0 and deaths by signal (128 and above) do not."""
    if isinstance(exit_code, str):
        exit_code = int(exit_code) if exit_code.isascii() and exit_code.isdigit() else None
    return deregister == "on-success" and isinstance(exit_code, int) and 0 < exit_code < 128


def registered_form(service: Service) -> RegisteredService:
    """How a registry lists `service` once it is registered."""
    meta = dict(service.meta)
    meta[MARKER_DIGEST_KEY] = service.digest
    return RegisteredService(id=service.id, name=service.name, address=service.address,
                             port=service.port, meta=meta)


def marker_meta(hostname: str, container_id: str, instance: str = "") -> dict[str, str]:
    meta = {
        MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE,
        MARKER_HOST_KEY: hostname,
        MARKER_CONTAINER_KEY: container_id,
    }
    if instance:
        meta[MARKER_INSTANCE_KEY] = instance
    return meta


def fold_id(identifier: str) -> str:
    """A service ID, check ID or mirror key as Consul's catalog compares it: case
    folded (its indexes lower-case every ID). Two IDs with one fold are one record
    there: each anti-entropy sync replaces the other's row, and removing either
    removes the row. Our IDs are ASCII (validate.identifier_problem); another writer's
    may not be: Go's strings.ToLower maps `İ` (U+0130) to `i`, where Python's gives two
    characters, so it is mapped first (the Kelvin sign lowers to `k` in both)."""
    return identifier.replace("\u0130", "i").lower()


def filter_fold(identifier: str) -> str:
    """An ID as the agent's filter (`(?i)`, `i` also matching `İ`: agent.py) compares
    it, or looser: Go's case folding also matches the Kelvin sign to `k` and the long s
    to `s`, which `casefold` does too; `İ` is the catalog's `i` (`fold_id`). A looser
    match only finds more records to refuse, never fewer."""
    return identifier.replace("\u0130", "i").casefold()


@dataclass(frozen=True)
class ReadScope:
    """Which of the agent's records one read asked for: every ID that, in any case, is
    one of `ids` or begins with one of `prefixes` (a container's default IDs,
    `<host>:<container>:...`). Identifier characters only (the client refuses others)."""

    prefixes: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()

    @cached_property
    def _folded(self) -> tuple[tuple[str, ...], frozenset[str]]:
        return tuple(filter_fold(p) for p in self.prefixes), frozenset(filter_fold(i) for i in self.ids)

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.ids)

    def covers(self, service_id: str) -> bool:
        prefixes, ids = self._folded
        folded = filter_fold(service_id)
        return folded in ids or folded.startswith(prefixes)


@dataclass(frozen=True)
class Holdings:
    """The agent's records (and maybe its checks' owners), read at one moment (`read_at`, on the
    loop's clock): what the writes of one batch are checked against, answered as the
    agent's filtered reads would answer (every spelling of the IDs asked). `scope`: the
    records that read asked for (None: all of them); an ID outside it is read by its write."""

    services: Mapping[str, RegisteredService]
    # Check ID -> its service's ID ("" for a node check); None: not read (each write that
    # registers checks reads their owners itself, just before it is made).
    check_owners: Mapping[str, str] | None
    read_at: float = 0.0
    scope: ReadScope | None = None

    def covers(self, service_ids: Collection[str]) -> bool:
        """Whether this read saw every spelling of each of `service_ids`."""
        return self.scope is None or all(self.scope.covers(i) for i in service_ids)

    @cached_property
    def _service_folds(self) -> dict[str, list[str]]:
        folds: dict[str, list[str]] = {}
        for service_id in self.services:
            folds.setdefault(filter_fold(service_id), []).append(service_id)
        return folds

    @cached_property
    def _check_folds(self) -> dict[str, list[str]]:
        folds: dict[str, list[str]] = {}
        for check_id in self.check_owners or {}:
            folds.setdefault(filter_fold(check_id), []).append(check_id)
        return folds

    def services_matching(self, service_ids: Collection[str]) -> dict[str, RegisteredService]:
        return {sid: self.services[sid] for wanted in {filter_fold(i) for i in service_ids}
                for sid in self._service_folds.get(wanted, ())}

    def check_owners_matching(self, check_ids: Collection[str]) -> dict[str, str]:
        assert self.check_owners is not None
        return {cid: self.check_owners[cid] for wanted in {filter_fold(i) for i in check_ids}
                for cid in self._check_folds.get(wanted, ())}


@dataclass(frozen=True)
class AgentInfo:
    version: str
    node_name: str
    node_id: str
    advertise_address: str
    runs_remote_scripts: bool  # enable_script_checks: script and docker checks may be registered over HTTP
    # Where the agent itself listens (HTTP, HTTPS, gRPC, DNS), as its DebugConfig says: never a check target.
    listen_addresses: tuple[str, ...] = ()
    listen_ports: tuple[int, ...] = ()
