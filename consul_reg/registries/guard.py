"""Writes to the agent that look before they leap: each register and
deregister first reads the agent's record of that service ID, and goes ahead
only when it is absent or this daemon's own (its host and --instance).

The primary plans against the agent's listing of its last full pass, and with
`-resync 0` that listing can be old: another daemon on the same agent (an
`--instance` with another `--filter`) or an operator may have registered the
same ID since. Without this read, a container of ours declaring that ID would
overwrite their record, and its death would remove it. One GET per write,
none for an in-sync pass. Two writers within the same few milliseconds can
still race: Consul's agent API has no compare-and-set for services.
"""

from __future__ import annotations

from typing import Any

from consul_reg.checks import origin_key
from consul_reg.model import RegisteredService, Service
from consul_reg.reconcile import registrator_leftover_pattern
from consul_reg.registries.base import RegistryNotOurs
from consul_reg.registries.consul import AgentInfo, ConsulRegistry


class OwnershipGuard:
    """The agent as the primary, with every write checked against its current record."""

    def __init__(self, registry: ConsulRegistry, owner: str, adopt_leftovers: bool = False) -> None:
        self.registry = registry
        self.owner = owner
        self.description = registry.description
        self._leftover = registrator_leftover_pattern(str(owner)) if adopt_leftovers else None

    def agent_info(self) -> AgentInfo:
        return self.registry.agent_info()

    def services(self) -> dict[str, RegisteredService]:
        return self.registry.services()

    def register(self, service: Service) -> None:
        current = self.current(service.id)
        if current is not None and not self._may_write(current):
            raise RegistryNotOurs(f"{self.description}: {service.id} was registered meanwhile by "
                                  f"{_holder(current)}; left as it is")
        self._refuse_taken_checks(service)
        self.registry.register(service)

    def check_owners(self) -> dict[str, str]:
        return self.registry.check_owners()

    def _refuse_taken_checks(self, service: Service) -> None:
        """Check IDs are agent-wide: registering a check whose ID another service
        holds would move that check to this service (and removing this service
        would delete it). Such a registration is refused as a whole: the service
        never runs without the check it declared."""
        if not service.checks:
            return
        held = self.registry.check_owners([check.check_id for check in service.checks])
        for check in service.checks:
            holder = held.get(check.check_id)
            if holder is not None and holder != service.id:
                whose = f"service {holder!r}" if holder else "a node check"
                raise RegistryNotOurs(
                    f"container {service.container_name}: check {check.check_id} (from "
                    f"{check_origin(service.id, check.check_id)}) is already the check of {whose}; "
                    f"{service.id} is not registered, so as never to take it over")

    def deregister(self, service: RegisteredService) -> None:
        current = self.current(service.id)
        if current is None:
            return  # already gone (removed by hand, or reaped)
        if not self._may_write(current):
            raise RegistryNotOurs(f"{self.description}: {service.id} is now registered by {_holder(current)}; "
                                  "not removed")
        self.registry.deregister(service)

    def current(self, service_id: str) -> RegisteredService | None:
        """The agent's record of `service_id` now, or None."""
        response = self.registry.client.call("GET", ("agent", "service", service_id), f"read service {service_id}",
                                             not_found_ok=True)
        if response.status_code == 404:
            return None
        try:
            entry: Any = response.json()
        except ValueError:
            entry = None
        meta = entry.get("Meta") if isinstance(entry, dict) else None
        return RegisteredService(id=service_id, name=str(entry.get("Service") or "") if isinstance(entry, dict)
                                 else "", meta=dict(meta) if isinstance(meta, dict) else {})

    def _may_write(self, current: RegisteredService) -> bool:
        if current.owned_by(self.owner):
            return True
        # -cleanup: registrator's leftovers of this host are adopted (never another consul-reg's records).
        return self._leftover is not None and not current.from_consul_reg and bool(self._leftover.match(current.id))

    def close(self) -> None:
        self.registry.close()


def check_origin(service_id: str, check_id: str) -> str:
    """The key a check of ours came from, for a message."""
    key = origin_key(service_id, check_id)
    return f"SERVICE_{key.upper()}" if key else f"the daemon's own {check_id.rsplit(':', 1)[-1]} check"


def _holder(record: RegisteredService) -> str:
    host = record.meta.get("consul_reg_host")
    if not host:
        return "someone else (by hand or another tool)"
    instance = record.meta.get("consul_reg_instance")
    return f"consul-reg of host {host!r}" + (f" instance {instance!r}" if instance else "")


def guarded(registry: Any, owner: str, adopt_leftovers: bool = False) -> Any:
    """The agent behind an OwnershipGuard; any other primary (the in-memory one) as it is."""
    return OwnershipGuard(registry, owner, adopt_leftovers) if isinstance(registry, ConsulRegistry) else registry
