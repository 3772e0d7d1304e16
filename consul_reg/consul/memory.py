"""The primary when no Consul agent is named (`consul-reg etcd://...`, as
registrator allows): an in-memory ledger, so the sync loop stays the same
and the mirrors receive every service."""

from __future__ import annotations

from collections.abc import Collection

from consul_reg.consul.agent import ConsulEndpoint
from consul_reg.core.calls import Later, Ready
from consul_reg.core.protocols import RegistryWrites
from consul_reg.core.records import (
    AgentInfo,
    CheckRead,
    Holdings,
    ReadScope,
    RegisteredService,
    Service,
    registered_form,
)


class MemoryRegistry:
    def __init__(self) -> None:
        self.endpoint = ConsulEndpoint(scheme="http", host="", port=0)  # not local: address from the host
        self.description = "no Consul agent (mirrors only)"
        self._services: dict[str, RegisteredService] = {}
        self._checks: dict[str, str] = {}  # check ID -> its service's ID
        self._checks_of: dict[str, tuple[str, ...]] = {}  # service ID -> its check IDs

    def agent_info(self) -> AgentInfo:
        return AgentInfo(version="", node_name="", node_id="memory", advertise_address="",
                         runs_remote_scripts=False)

    def services(self) -> dict[str, RegisteredService]:
        return dict(self._services)

    def check_owners(self) -> dict[str, str]:
        return dict(self._checks)

    def check_statuses(self, check_ids: Collection[str], service_ids: Collection[str] = ()) -> CheckRead:
        return CheckRead()  # no agent runs a check here: none has a result

    def services_in_later(self, scope: ReadScope, wait: bool = True) -> Later[dict[str, RegisteredService]]:
        return Ready({service_id: record for service_id, record in self._services.items() if scope.covers(service_id)})

    def services_matching(self, service_ids: Collection[str]) -> dict[str, RegisteredService]:
        return {service_id: self._services[service_id] for service_id in service_ids if service_id in self._services}

    def register(self, service: Service) -> None:
        self._services[service.id] = registered_form(service)
        self._drop_checks(service.id)
        self._checks_of[service.id] = tuple(check.check_id for check in service.checks)
        self._checks.update((check_id, service.id) for check_id in self._checks_of[service.id])

    def deregister(self, service: RegisteredService) -> None:
        self._services.pop(service.id, None)
        self._drop_checks(service.id)

    def _drop_checks(self, service_id: str) -> None:
        for check_id in self._checks_of.pop(service_id, ()):
            if self._checks.get(check_id) == service_id:
                del self._checks[check_id]

    def update_check(self, check_id: str, status: str, output: str) -> None:
        pass

    def enable_maintenance(self, service_id: str, reason: str) -> None:
        pass

    def disable_maintenance(self, service_id: str) -> None:
        pass

    def maintenance_reasons(self, service_ids: Collection[str]) -> dict[str, str]:
        return {}

    def checked_against(self, held: Holdings | None) -> RegistryWrites:
        return self  # no one else writes here: nothing to check

    def ours_now(self, service_ids: Collection[str], container_id: str) -> set[str]:
        return {s for s in service_ids if s in self._services and self._services[s].container_id == container_id}

    def set_token(self, token: str | None) -> None:
        pass

    def close(self) -> None:
        pass
