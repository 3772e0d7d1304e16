"""Services the agent itself removed through CHECK_DEREGISTER_AFTER.

Such a reap (one service gone while the agent stayed up) is on purpose:
re-adding the service at the next reconcile would only make it flap. It
stays removed until its container restarts or its definition changes, or
no container asks for it any more. An agent restart (a new node ID: everything gone) is not a reap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loguru import logger

from consul_reg.core.records import ContainerDesire, RegisteredService


class ReapTracker:
    def __init__(self) -> None:
        self._reaped: dict[str, tuple[str, str]] = {}  # service ID -> (digest, container ID)

    def __contains__(self, service_id: str) -> bool:
        return service_id in self._reaped

    def digests(self) -> dict[str, str]:
        """For plan(): service ID -> the digest not to register again."""
        return {service_id: digest for service_id, (digest, _) in self._reaped.items()}

    def notice(self, desires: Iterable[ContainerDesire], previous: Mapping[str, RegisteredService],
               actual: Mapping[str, RegisteredService]) -> None:
        """Compare two listings of the same agent: desired services with a
        deregister-after check that were registered as desired and are gone now."""
        for desire in desires:
            for service in desire.services:
                was = previous.get(service.id)
                if (service.id not in actual and was is not None and was.digest == service.digest
                        and any("DeregisterCriticalServiceAfter" in c.definition_dict for c in service.checks)
                        and self._reaped.get(service.id, ("", ""))[0] != service.digest):
                    self._reaped[service.id] = (service.digest, desire.container_id)
                    logger.bind(service_id=service.id, action="reaped").warning(
                        "the agent removed {} (critical longer than its deregister-after); it stays removed "
                        "until container {} restarts or its definition changes", service.id, desire.container_name)

    def container_restarted(self, container_id: str) -> None:
        for service_id, (_, reaped_container) in list(self._reaped.items()):
            if reaped_container == container_id:
                del self._reaped[service_id]

    def service_ids(self) -> set[str]:
        return set(self._reaped)

    def forget(self, service_id: str) -> None:
        """No container asks for this service any more."""
        self._reaped.pop(service_id, None)

    def clear(self) -> None:
        self._reaped.clear()
