"""Writes to the agent that look before they leap: each register and
deregister first reads the agent's records of that service ID, and goes ahead
only when they are absent or this daemon's own (its host and --instance).

The primary plans against the agent's listing of its last full pass, and with
`-resync 0` that listing can be old: another daemon on the same agent (an
`--instance` with another `--filter`) or an operator may have registered the
same ID since. Without this read, a container of ours declaring that ID would
overwrite their record, and its death would remove it. Two writers within the
same few milliseconds can still race: Consul's agent API has no compare-and-set
for services.

The read is one filtered listing (`ID matches "(?i)^(...)$"`) rather than a
GET of the ID: the agent keys services by their exact ID, but Consul's catalog
folds case, so an operator's `payments` and a container's `Payments` would be
one catalog row, each replacing the other at every anti-entropy sync. The
filtered listing sees every spelling as of the moment of the write (the same
window as a GET of the exact ID; the planner's listing, older, only narrows the
work), for the price of one request: the ID, its sidecar's ID and all their
spellings at once. None for an in-sync pass. The agent answers it in time
linear in the services it holds (Consul 1.8.7, p50: 0.57 ms with 30 services,
1.2 ms with 300, against 0.32 and 0.39 ms for a GET of the exact ID, which
would leave a spelling registered since the planner's listing unseen: with
`-resync 0`, for as long as the daemon runs).

The read may be made ahead (issue 24; `checked_against`): when the loop takes a
batch of container events it lists the agent's records and checks once, beside
Docker's inspects, and the batch's writes are checked against that listing,
matched as the filter matches. The window is then "a record present when the
loop took the event" instead of "present just before the write": a few
milliseconds earlier (the inspect and the mapping), never older. An ID the
batch has already written is read again before its next write.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from loguru import logger

from consul_reg.core.calls import Later
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.core.plan import registrator_leftover_pattern
from consul_reg.core.protocols import RegistryWrites
from consul_reg.core.records import (
    MARKER_SOURCE_KEY,
    MARKER_SOURCE_VALUE,
    SIDECAR_FOR_KEY,
    AgentInfo,
    Holdings,
    Owner,
    ReadScope,
    RegisteredService,
    Service,
    as_owner,
    filter_fold,
    fold_id,
)
from consul_reg.mapping.check_fields import origin_key
from consul_reg.mapping.default_ids import SIDECAR_ID_SUFFIX

SIDECAR_SUFFIX = SIDECAR_ID_SUFFIX  # the ID the agent gives the sidecar of <id>: <id>-sidecar-proxy


class OwnershipGuard:
    """The agent as the primary, with every write checked against its current records.
    `registry` is a ConsulRegistry (or a fake with the same reads, in tests)."""

    def __init__(self, registry: Any, owner: Owner | str, adopt_leftovers: bool = False) -> None:
        self.registry = registry
        self.owner = as_owner(owner)
        self.description = registry.description
        self._leftover = registrator_leftover_pattern(self.owner.host) if adopt_leftovers else None

    def agent_info(self) -> AgentInfo:
        return self.registry.agent_info()

    def services(self) -> dict[str, RegisteredService]:
        return self.registry.services()

    def check_owners(self) -> dict[str, str]:
        return self.registry.check_owners()

    def services_in_later(self, scope: ReadScope, wait: bool = True) -> Later[dict[str, RegisteredService]]:
        return self.registry.services_in_later(scope, wait)

    def checked_against(self, held: Holdings | None) -> RegistryWrites:
        """Writes checked against `held` (the agent's records and checks read once, when
        the loop took the batch's events, beside Docker's inspects) instead of a read
        each; with None, each write reads the agent first."""
        return self if held is None else _CheckedAgainst(self, held)

    def register(self, service: Service) -> None:
        self._register(service, self.registry.services_matching, self.registry.check_owners)

    def _register(self, service: Service, services_matching: Any, check_owners: Any) -> None:
        sidecar = sidecar_id(service)
        held = services_matching([service.id, sidecar] if sidecar else [service.id])
        ours_elsewhere: list[RegisteredService] = []  # our records under another spelling of the ID
        # The exact ID first (its message is the usual one), then its other spellings.
        for record in sorted(held.values(), key=lambda r: (r.id != service.id, r.id)):
            if sidecar and fold_id(record.id) == fold_id(sidecar):
                continue
            if self._may_write(record):
                if record.id != service.id:
                    ours_elsewhere.append(record)
            elif record.id == service.id:
                raise RegistryNotOurs(f"{self.description}: {service.id} was registered meanwhile by "
                                      f"{_holder(record)}; left as it is")
            else:
                raise RegistryNotOurs(
                    f"container {service.container_name}: service ID {service.id!r} differs only in case from "
                    f"{record.id!r}, registered by {_holder(record)}: Consul's catalog holds them as one "
                    f"service, so {service.id} is not registered")
        if sidecar:
            ours_elsewhere += self._refuse_taken_sidecar(service, sidecar, held.values(), ours_elsewhere)
        for record in ours_elsewhere:
            # Removed first: the catalog deletes by folded ID, so removing the old spelling
            # after the new one was synced would delete the new one's row.
            self.registry.deregister(record)  # a sidecar the agent removed with its service: a no-op 200
            logger.bind(service_id=record.id, action="deregister").info(
                "deregistered {}: replaced by {} (IDs that differ only in case are one in Consul's catalog)",
                record.id, service.id)
        self._refuse_taken_checks(service, check_owners)
        self.registry.register(service)

    def _refuse_taken_sidecar(self, service: Service, sidecar: str, held: Collection[RegisteredService],
                              ours_elsewhere: list[RegisteredService]) -> list[RegisteredService]:
        """The agent writes `<id>-sidecar-proxy` with `<id>` (replacing whatever holds that
        ID) and removes it with `<id>`: only a sidecar of ours for this `<id>` (or for a
        spelling of it being replaced) may be there. Returns ours under another spelling
        of the sidecar's ID, to be removed with their service."""
        parents = {service.id} | {record.id for record in ours_elsewhere}
        replaced: list[RegisteredService] = []
        for record in held:
            if fold_id(record.id) != fold_id(sidecar):
                continue
            if record.meta.get(MARKER_SOURCE_KEY) == MARKER_SOURCE_VALUE and \
                    record.meta.get(SIDECAR_FOR_KEY) in parents:
                if record.id != sidecar:
                    replaced.append(record)
                continue
            spelling = "" if record.id == sidecar else f" (as {record.id!r}, one ID in Consul's catalog)"
            raise RegistryNotOurs(
                f"container {service.container_name}: the sidecar proxy ID {sidecar!r} of {service.id} is already "
                f"registered{spelling} by {_holder(record, sidecar_of=record.meta.get(SIDECAR_FOR_KEY))}; "
                f"{service.id} is not registered, so as never to replace it")
        return replaced

    def _refuse_taken_checks(self, service: Service, check_owners: Any) -> None:
        """Check IDs are agent-wide: registering a check whose ID another service holds
        would move that check to this service (and removing this service would delete
        it); one that differs only in case would share its catalog row. Such a
        registration is refused as a whole: the service never runs without the check it
        declared."""
        if not service.checks:
            return
        held = check_owners([check.check_id for check in service.checks])
        holders: dict[str, list[tuple[str, str]]] = {}
        for check_id, holder in held.items():
            holders.setdefault(fold_id(check_id), []).append((check_id, holder))
        for check in service.checks:
            for check_id, holder in sorted(holders.get(fold_id(check.check_id), ())):
                if holder == service.id:
                    continue
                whose = f"service {holder!r}" if holder else "a node check"
                held_as = "" if check_id == check.check_id else f" (as {check_id}, one ID in Consul's catalog)"
                raise RegistryNotOurs(
                    f"container {service.container_name}: check {check.check_id} (from "
                    f"{check_origin(service.id, check.check_id)}) is already the check of {whose}{held_as}; "
                    f"{service.id} is not registered, so as never to take it over")

    def deregister(self, service: RegisteredService) -> None:
        self._deregister(service, self.registry.services_matching)

    def _deregister(self, service: RegisteredService, services_matching: Any) -> None:
        held = services_matching([service.id])
        current = held.get(service.id)
        if current is None:
            return  # already gone (removed by hand, or reaped)
        if not self._may_write(current):
            raise RegistryNotOurs(f"{self.description}: {service.id} is now registered by {_holder(current)}; "
                                  "not removed")
        self.registry.deregister(service)
        others = sorted(record.id for record in held.values() if record.id != service.id)
        if others:
            logger.bind(service_id=service.id).warning(
                "deregistered {}; the agent also holds {} (one ID in Consul's catalog, which may miss it until "
                "the agent's next full sync)", service.id, ", ".join(repr(o) for o in others))

    def current(self, service_id: str) -> RegisteredService | None:
        """The agent's record of exactly `service_id` now, or None."""
        return self.registry.services_matching([service_id]).get(service_id)

    def ours_now(self, service_ids: Collection[str], container_id: str) -> set[str]:
        """Which of `service_ids` the agent holds now as this daemon's records of this
        container (one read for all): a drain touches nothing else."""
        held = self.registry.services_matching(service_ids)
        return {service_id for service_id in service_ids if (record := held.get(service_id)) is not None
                and record.owned_by(self.owner) and record.container_id == container_id}

    def enable_maintenance(self, service_id: str, reason: str) -> None:
        self.registry.enable_maintenance(service_id, reason)

    def disable_maintenance(self, service_id: str) -> None:
        self.registry.disable_maintenance(service_id)

    def maintenance_reasons(self, service_ids: Collection[str]) -> dict[str, str]:
        return self.registry.maintenance_reasons(service_ids)

    def _may_write(self, current: RegisteredService) -> bool:
        if current.owned_by(self.owner):
            return True
        # -cleanup: registrator's leftovers of this host are adopted (never another consul-reg's records).
        return self._leftover is not None and not current.from_consul_reg and bool(self._leftover.match(current.id))

    def close(self) -> None:
        self.registry.close()


class _CheckedAgainst:
    """The guard's writes, each checked against one read made for the whole batch
    (`Holdings`) rather than a read of its own: the same rules, the same messages,
    matched as the agent's filter would. An ID this batch already wrote (any
    spelling) is read again before its next write: the read ahead no longer
    describes it. The batch's writes may run on several threads: the read is never
    changed, and an ID is written once per phase of a plan."""

    def __init__(self, guard: OwnershipGuard, held: Holdings) -> None:
        self._guard = guard
        self._held = held
        self._written: set[str] = set()  # filter_fold of every service ID this batch wrote
        self._written_checks: set[str] = set()  # ... and of every check ID it registered

    def _services_matching(self, service_ids: Collection[str]) -> dict[str, RegisteredService]:
        if any(filter_fold(i) in self._written for i in service_ids) or not self._held.covers(service_ids):
            return self._guard.registry.services_matching(service_ids)
        return self._held.services_matching(service_ids)

    def _check_owners(self, check_ids: Collection[str]) -> dict[str, str]:
        if self._held.check_owners is None or any(filter_fold(i) in self._written_checks for i in check_ids):
            return self._guard.registry.check_owners(check_ids)
        return self._held.check_owners_matching(check_ids)

    def register(self, service: Service) -> None:
        sidecar = sidecar_id(service)
        try:
            self._guard._register(service, self._services_matching, self._check_owners)
        finally:  # whatever it wrote before it failed
            self._written.update(filter_fold(i) for i in (service.id, sidecar) if i)
            self._written_checks.update(filter_fold(check.check_id) for check in service.checks)

    def deregister(self, service: RegisteredService) -> None:
        try:
            self._guard._deregister(service, self._services_matching)
        finally:
            self._written.add(filter_fold(service.id))


def sidecar_id(service: Service) -> str:
    """The ID of the sidecar proxy the agent registers with `service`, or ""."""
    return service.id + SIDECAR_SUFFIX if service.connect is not None and not service.connect.native else ""


def check_origin(service_id: str, check_id: str) -> str:
    """The key a check of ours came from, for a message."""
    key = origin_key(service_id, check_id)
    return f"SERVICE_{key.upper()}" if key else f"the daemon's own {check_id.rsplit(':', 1)[-1]} check"


def _holder(record: RegisteredService, sidecar_of: str | None = None) -> str:
    host = record.meta.get("consul_reg_host")
    if sidecar_of and record.meta.get(MARKER_SOURCE_KEY) == MARKER_SOURCE_VALUE:
        return f"consul-reg as the sidecar of {sidecar_of!r}"
    if not host:
        return "someone else (by hand or another tool)"
    instance = record.meta.get("consul_reg_instance")
    return f"consul-reg of host {host!r}" + (f" instance {instance!r}" if instance else "")
