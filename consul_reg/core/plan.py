"""Desired services x registered services -> the minimal plan, and applying it.

Knows nothing of Docker or of a particular registry: it compares records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from loguru import logger

from consul_reg.core.agent_records import AgentRecords
from consul_reg.core.calls import Calls, Runner, one_by_one
from consul_reg.core.errors import (
    RegistryError,
    RegistryNotOurs,
    RegistryRefused,
    RegistryScriptsRefused,
    RegistryUnavailable,
)
from consul_reg.core.protocols import RegistryWrites
from consul_reg.core.records import ContainerDesire, Owner, RegisteredService, Service, as_owner, fold_id


def _created_order(desire: ContainerDesire) -> tuple[str, str]:
    """Docker's RFC 3339 Created time made comparable (its fraction has 1-9 digits)."""
    stamp = desire.created.rstrip("Z")
    seconds, _, fraction = stamp.partition(".")
    return f"{seconds}.{fraction[:9]:0<9}", desire.container_id


class DesiredServices:
    """Every container's services, merged by service ID and kept up to date one
    container at a time. Two containers claiming one ID: the newer container
    gets it (a squatter started earlier never keeps another's ID), with a
    warning naming both. IDs that differ only in case are one ID here, as in
    Consul's catalog (`fold_id`): `web` and `WEB` are a contest too, and only
    the winner's spelling is desired."""

    def __init__(self) -> None:
        self.by_id: dict[str, Service] = {}
        # Folded ID -> container ID -> (its creation order, its service of that ID).
        self._claims: dict[str, dict[str, tuple[tuple[str, str], Service]]] = {}
        self._names: dict[str, str] = {}  # container ID -> name, for warnings
        self._contests: dict[str, tuple[str, ...]] = {}  # folded ID -> claimants last warned about
        self._winners: dict[str, str] = {}  # folded ID -> the spelling desired (the winner's)

    def holds(self, container_id: str, service_id: str) -> bool:
        """Whether this container won `service_id` (only the winner's daemon-owned checks run)."""
        winner = self.by_id.get(service_id)
        return winner is not None and winner.container_id == container_id

    def claimants(self, service_ids: Iterable[str]) -> set[str]:
        """Every container claiming one of these IDs (a new election may change their share)."""
        return {cid for service_id in service_ids for cid in self._claims.get(fold_id(service_id), ())}

    def update(self, old: ContainerDesire | None, new: ContainerDesire | None) -> tuple[set[str], list[str]]:
        """Replace one container's desire; returns (service IDs whose desired record
        may have changed, every spelling of them, warnings to log)."""
        affected: set[str] = set()
        warnings: list[str] = []
        if old is not None:
            for service in old.services:
                claims = self._claims.get(fold_id(service.id))
                if claims is not None and claims.pop(old.container_id, None) is not None:
                    affected.add(service.id)
                    if not claims:
                        del self._claims[fold_id(service.id)]
            self._names.pop(old.container_id, None)
        if new is not None:
            self._names[new.container_id] = new.container_name
            order = _created_order(new)
            for service in new.services:
                claims = self._claims.setdefault(fold_id(service.id), {})
                if new.container_id in claims:
                    first = claims[new.container_id][1].id
                    warnings.append(f"container {new.container_name}: two of its ports declare service ID "
                                    f"{service.id!r}; the first is registered" if first == service.id else
                                    f"container {new.container_name}: two of its ports declare service IDs "
                                    f"{first!r} and {service.id!r}, which differ only in case (one ID in "
                                    "Consul's catalog); the first is registered")
                    continue
                claims[new.container_id] = (order, service)
                affected.add(service.id)
        for folded in {fold_id(service_id) for service_id in affected}:
            warnings.extend(self._elect(folded, affected))
        return affected, warnings

    def replace_all(self, desires: Iterable[ContainerDesire]) -> list[str]:
        """Rebuild from scratch (a full pass)."""
        self.by_id.clear()
        self._claims.clear()
        self._names.clear()
        self._winners.clear()
        warnings: list[str] = []
        for desire in desires:
            warnings.extend(self.update(None, desire)[1])
        return warnings

    def _elect(self, folded: str, affected: set[str]) -> list[str]:
        previous = self._winners.pop(folded, None)
        if previous is not None:
            self.by_id.pop(previous, None)
            affected.add(previous)  # a spelling no longer desired: its record goes
        claims = self._claims.get(folded)
        if not claims:
            self._contests.pop(folded, None)
            return []
        winner_id = max(claims, key=lambda cid: claims[cid][0])
        winner = claims[winner_id][1]
        self.by_id[winner.id] = winner
        self._winners[folded] = winner.id
        affected.add(winner.id)
        claimants = tuple(sorted(claims))
        if len(claimants) < 2:
            self._contests.pop(folded, None)
            return []
        if self._contests.get(folded) == claimants:
            return []
        self._contests[folded] = claimants
        name = self._names.get(winner_id, winner_id[:12])
        losers = ", ".join(sorted(self._names.get(c, c[:12]) for c in claimants if c != winner_id))
        spellings = sorted({service.id for _, service in claims.values()})
        if len(spellings) == 1:
            return [f"service ID {winner.id!r} is declared by containers {name} and {losers}: the newest, "
                    f"{name}, gets it"]
        return [f"service IDs {', '.join(repr(s) for s in spellings)} differ only in case (one ID in Consul's "
                f"catalog) and are declared by containers {name} and {losers}: the newest, {name}, gets it, "
                f"as {winner.id!r}"]


@dataclass(frozen=True)
class Plan:
    register: tuple[Service, ...] = ()
    deregister: tuple[RegisteredService, ...] = ()
    # Desired services whose ID (or key) is held by a record that is not ours.
    blocked: tuple[tuple[Service, RegisteredService], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.register or self.deregister)


@dataclass
class ApplyResult:
    registered: list[Service] = field(default_factory=list)
    deregistered: list[RegisteredService] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (service id, message)
    unavailable: str = ""  # set when the registry could not be reached: stop and retry later
    scripts_refused: bool = False  # a check that runs a command was refused by the registry


def registrator_leftover_pattern(hostname: str) -> re.Pattern[str]:
    """IDs registrator gave on this host: <hostname>:<container-name>:<port>[:udp]."""
    return re.compile(rf"^{re.escape(hostname)}:[^:\n]+:[0-9]+(:udp)?\Z")  # \Z: `$` passes a final newline


def plan(
    desired: Mapping[str, Service],
    actual: Mapping[str, RegisteredService],
    hostname: Owner | str,
    *,
    scope: Collection[str] | None = None,
    kept_containers: Collection[str] = frozenset(),
    adopt_leftovers: bool = False,
    skip_register: Mapping[str, str] | None = None,
    key_of: Callable[[Service], str] = lambda service: service.id,
    digest_of: Callable[[Service], str] = lambda service: service.digest,
) -> Plan:
    """The fewest operations that turn `actual` into `desired`.

    `scope` limits the plan to these service IDs (a pass over a few containers);
    None plans everything (a full pass, which also removes orphans).
    Only records owned by this daemon on this host are ever written over or
    removed, except registrator leftovers when `adopt_leftovers` (-cleanup).
    Keys compare case-folded (`fold_id`): a key held under another spelling by
    someone else blocks the service, ours under another spelling is removed.
    `skip_register` maps service IDs to digests known to fail right now.
    A mirror keys its records its own way (`key_of`, e.g. a KV path) and
    compares what it stores (`digest_of`).
    """
    skip_register = skip_register or {}
    hostname = as_owner(hostname)
    leftover = registrator_leftover_pattern(hostname.host) if adopt_leftovers else None

    def ours(key: str, current: RegisteredService) -> bool:
        return current.owned_by(hostname) or (
            leftover is not None and bool(leftover.match(key)) and not current.from_consul_reg)

    register: list[Service] = []
    blocked: list[tuple[Service, RegisteredService]] = []
    deregister: list[RegisteredService] = []
    wanted_keys: set[str] = set()
    spellings = actual.spellings if isinstance(actual, AgentRecords) else _spellings(actual)
    ids = desired.keys() if scope is None else [sid for sid in scope if sid in desired]
    for service_id in ids:
        service = desired[service_id]
        key = key_of(service)
        wanted_keys.add(key)
        current = actual.get(key)
        digest = digest_of(service)
        # Another spelling of the key that is not ours: one record in Consul's catalog.
        other = next((actual[k] for k in spellings(fold_id(key)) if k != key and not ours(k, actual[k])),
                     None)
        if other is not None:
            blocked.append((service, other))
            continue
        if current is not None and not ours(key, current):
            blocked.append((service, current))
            continue
        if current is not None and current.owned_by(hostname) and current.digest == digest:
            continue
        if skip_register.get(service_id) == digest:
            continue
        register.append(service)

    # Our records under another spelling of a wanted key go, kept or not: the guard
    # removes them before it registers the new spelling (see OwnershipGuard.register).
    wanted_folds = {fold_id(key) for key in wanted_keys}
    if scope is None:
        candidates: Mapping[str, RegisteredService] = actual
    else:
        candidates = {key: actual[key] for key in scope if key in actual and key not in desired}
        candidates.update((k, actual[k]) for folded in wanted_folds for k in spellings(folded))
    for key, current in candidates.items():
        if key in wanted_keys:
            continue
        if current.owned_by(hostname):
            if current.container_id not in kept_containers or fold_id(key) in wanted_folds:
                deregister.append(current)
        elif leftover is not None and scope is None and leftover.match(key) and not current.from_consul_reg:
            deregister.append(current)
    return Plan(register=tuple(register), deregister=tuple(deregister), blocked=tuple(blocked))


def _spellings(actual: Mapping[str, RegisteredService]) -> Callable[[str], tuple[str, ...]]:
    """Folded key -> the keys of `actual` with that fold: one pass over the listing per
    plan, so that each lookup after it is a dict read (AgentRecords keeps this index)."""
    found: dict[str, list[str]] = {}
    for key in actual:
        found.setdefault(fold_id(key), []).append(key)
    return lambda folded: tuple(found.get(folded, ()))


def apply(plan_to_apply: Plan, registry: RegistryWrites, where: str = "", run: Runner = one_by_one) -> ApplyResult:
    """Register first, then deregister (a renamed service never has a gap).
    One failing service is logged and skipped; an unreachable registry stops it.
    With an overlapping `run` (a registry that is thread-safe) each phase's calls overlap;
    results are taken and logged here, in the plan's order."""
    result = ApplyResult()
    suffix = f" in {where}" if where else ""
    registering = Calls(registry.register, (RegistryError,), RegistryUnavailable)
    for service, outcome in run(registering, plan_to_apply.register):
        log = logger.bind(action="register", service_id=service.id, container=service.container_name)
        error = outcome.error
        if not outcome.tried:
            continue
        if isinstance(error, RegistryUnavailable):
            result.unavailable = str(error)
            continue  # calls already made may have succeeded: their outcomes are still taken
        if isinstance(error, RegistryScriptsRefused):
            result.scripts_refused = True
            result.failed.append((service.id, str(error)))
            continue
        if isinstance(error, RegistryRefused):  # one record: its caller warns, once per record and cause
            result.failed.append((service.id, str(error)))
            continue
        if isinstance(error, RegistryNotOurs):
            log.warning("not registering {}{}: {}", service.id, suffix, error)
            result.failed.append((service.id, str(error)))
            continue
        if error is not None:
            log.error("could not register {} for container {}{}: {}", service.id, service.container_name, suffix,
                      error)
            result.failed.append((service.id, str(error)))
            continue
        result.registered.append(service)
        log.info("registered {} name={} at {} (container {}){}", service.id, service.name, service.endpoint,
                 service.container_name, suffix)
    if result.unavailable:
        return result
    deregistering = Calls(registry.deregister, (RegistryError,), RegistryUnavailable)
    for current, outcome in run(deregistering, plan_to_apply.deregister):
        log = logger.bind(action="deregister", service_id=current.id)
        error = outcome.error
        if not outcome.tried:
            continue
        if isinstance(error, RegistryUnavailable):
            result.unavailable = str(error)
            continue
        if isinstance(error, RegistryRefused):
            result.failed.append((current.id, str(error)))
            continue
        if error is not None:
            log.error("could not deregister {}{}: {}", current.id, suffix, error)
            result.failed.append((current.id, str(error)))
            continue
        result.deregistered.append(current)
        log.info("deregistered {} name={}{}{}", current.id, current.name,
                 f" at {current.endpoint}" if current.endpoint else "", suffix)
    return result
