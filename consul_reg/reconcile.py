"""Desired services x registered services -> the minimal plan, and applying it.

Knows nothing of Docker or of a particular registry: it compares records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from loguru import logger

from consul_reg.model import ContainerStatus, RegisteredService, Service
from consul_reg.registries.base import Registry, RegistryError, RegistryScriptsRefused, RegistryUnavailable


@dataclass(frozen=True)
class ContainerDesire:
    """What one container asks for: its services, and whether a stopped
    container's existing records are to be kept (-deregister on-success)."""

    container_id: str
    container_name: str
    created: str  # Docker's Created timestamp; the older container wins an ID
    services: tuple[Service, ...] = ()
    keep_existing: bool = False
    status: ContainerStatus = ContainerStatus()
    stop_signal: str = ""  # Config.StopSignal: this signal also starts a drain
    env_file: str = ""  # path of its env file inside the container, polled for changes


@dataclass(frozen=True)
class Plan:
    register: tuple[Service, ...] = ()
    deregister: tuple[RegisteredService, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.register or self.deregister)


@dataclass
class ApplyResult:
    registered: list[Service] = field(default_factory=list)
    deregistered: list[RegisteredService] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (service id, message)
    unavailable: str = ""  # set when the registry could not be reached: stop and retry later
    scripts_refused: bool = False  # a check that runs a command was refused by the registry


def desired_services(desires: Iterable[ContainerDesire]) -> tuple[dict[str, Service], list[str]]:
    """All services that should exist, by ID. Two containers claiming one ID:
    the older container wins, and the warning names both."""
    desired: dict[str, Service] = {}
    owner: dict[str, ContainerDesire] = {}
    warnings: list[str] = []
    for desire in sorted(desires, key=lambda d: (d.created, d.container_id)):
        for service in desire.services:
            holder = owner.get(service.id)
            if holder is None:
                desired[service.id] = service
                owner[service.id] = desire
            elif holder.container_id != desire.container_id:
                warnings.append(
                    f"service ID {service.id!r} is declared by containers {holder.container_name} and "
                    f"{desire.container_name}: the older, {holder.container_name}, keeps it"
                )
            else:
                warnings.append(f"container {desire.container_name}: two of its ports declare service "
                                f"ID {service.id!r}; the first is registered")
    return desired, warnings


def registrator_leftover_pattern(hostname: str) -> re.Pattern[str]:
    """IDs registrator gave on this host: <hostname>:<container-name>:<port>[:udp]."""
    return re.compile(rf"^{re.escape(hostname)}:[^:]+:\d+(:udp)?$")


def plan(
    desired: Mapping[str, Service],
    actual: Mapping[str, RegisteredService],
    hostname: str,
    kept_containers: frozenset[str] = frozenset(),
    adopt_leftovers: bool = False,
    skip_register: Mapping[str, str] | None = None,
    key_of: Callable[[Service], str] = lambda service: service.id,
    digest_of: Callable[[Service], str] = lambda service: service.digest,
) -> Plan:
    """The fewest operations that turn `actual` into `desired`.

    Only services owned by this daemon on this host are ever removed, except
    registrator leftovers when `adopt_leftovers` (-cleanup) is set.
    `skip_register` maps service IDs to digests known to fail right now.
    A mirror keys its records its own way (`key_of`, e.g. a KV path) and
    compares what it stores (`digest_of`).
    """
    skip_register = skip_register or {}
    register = []
    wanted_keys = set()
    for service_id, service in desired.items():
        key = key_of(service)
        wanted_keys.add(key)
        current = actual.get(key)
        digest = digest_of(service)
        if current is not None and current.owned_by(hostname) and current.digest == digest:
            continue
        if skip_register.get(service_id) == digest:
            continue
        register.append(service)

    leftover = registrator_leftover_pattern(hostname) if adopt_leftovers else None
    deregister = []
    for key, current in actual.items():
        if key in wanted_keys:
            continue
        if current.owned_by(hostname):
            if current.container_id not in kept_containers:
                deregister.append(current)
        elif leftover is not None and leftover.match(key):
            deregister.append(current)
    return Plan(register=tuple(register), deregister=tuple(deregister))


def apply(plan_to_apply: Plan, registry: Registry, where: str = "") -> ApplyResult:
    """Register first, then deregister (a renamed service never has a gap).
    One failing service is logged and skipped; an unreachable registry stops it."""
    result = ApplyResult()
    for service in plan_to_apply.register:
        try:
            registry.register(service)
        except RegistryUnavailable as error:
            result.unavailable = str(error)
            return result
        except RegistryScriptsRefused as error:
            result.scripts_refused = True
            result.failed.append((service.id, str(error)))
            continue
        except RegistryError as error:
            logger.bind(action="register", service_id=service.id, container=service.container_name).error(
                "could not register {} for container {}: {}", service.id, service.container_name, error
            )
            result.failed.append((service.id, str(error)))
            continue
        result.registered.append(service)
        logger.bind(action="register", service_id=service.id, container=service.container_name).info(
            "registered {} name={} at {} (container {}){}",
            service.id, service.name, service.endpoint, service.container_name, f" in {where}" if where else "",
        )
    for current in plan_to_apply.deregister:
        try:
            registry.deregister(current)
        except RegistryUnavailable as error:
            result.unavailable = str(error)
            return result
        except RegistryError as error:
            logger.bind(action="deregister", service_id=current.id).error(
                "could not deregister {}: {}", current.id, error
            )
            result.failed.append((current.id, str(error)))
            continue
        result.deregistered.append(current)
        logger.bind(action="deregister", service_id=current.id).info(
            "deregistered {} name={}{}{}", current.id, current.name,
            f" at {current.endpoint}" if current.endpoint else "", f" in {where}" if where else "",
        )
    return result
