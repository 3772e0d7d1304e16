"""Graceful drain: a container being stopped leaves rotation before it dies.

`docker stop` sends the stop signal (a `kill` event), then `die` once the
process exited. On a terminating signal the container's services go into
Consul maintenance at once, so routing stops while the process shuts down;
`die` then deregisters as usual. If no `die` follows within the drain
timeout (a process that traps SIGTERM and keeps running), the maintenance
is cleared again, and so it is at once when the container starts again (a
`docker restart` whose death and start came in one batch: its unchanged
records are not registered again, which would have cleared it). Only
maintenance this daemon set is ever cleared.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from consul_reg.backoff import Clock
from consul_reg.registries.base import RegistryError

REASON_PREFIX = "consul-reg: draining"
TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL}


class MaintenanceRegistry(Protocol):
    def enable_maintenance(self, service_id: str, reason: str) -> None: ...

    def maintenance_reason(self, service_id: str) -> str | None: ...

    def disable_maintenance(self, service_id: str) -> None: ...


def signal_number(value: str) -> int | None:
    """'15', 'SIGTERM', 'TERM' -> 15; None when it names no signal."""
    value = value.strip().upper()
    if value.isdigit():
        return int(value)
    name = value if value.startswith("SIG") else "SIG" + value
    member = getattr(signal.Signals, name, None) if name.isidentifier() else None
    return int(member) if member is not None else None


def is_terminating(sent: str, stop_signal: str) -> bool:
    number = signal_number(sent)
    if number is None:
        return False
    return number in {int(s) for s in TERMINATING} or number == signal_number(stop_signal or "SIGTERM")


@dataclass
class _Drain:
    service_ids: tuple[str, ...]
    deadline: float


class Drainer:
    def __init__(self, registry: MaintenanceRegistry, timeout: float, clock: Clock = time.monotonic) -> None:
        self._registry = registry
        self._timeout = timeout
        self._clock = clock
        self._draining: dict[str, _Drain] = {}

    def on_kill(self, container_name: str, container_id: str, service_ids: tuple[str, ...], sent: str,
                stop_signal: str) -> None:
        if not service_ids or not is_terminating(sent, stop_signal) or container_id in self._draining:
            return
        reason = f"{REASON_PREFIX} container {container_name} (signal {sent})"
        for service_id in service_ids:
            try:
                self._registry.enable_maintenance(service_id, reason)
                logger.bind(service_id=service_id, container=container_name, action="drain").info(
                    "draining {}: maintenance on while container {} stops", service_id, container_name)
            except RegistryError as error:
                logger.warning("could not put {} in maintenance: {}", service_id, error)
        self._draining[container_id] = _Drain(service_ids, self._clock() + self._timeout)

    def on_die(self, container_id: str) -> None:
        """The process ended: deregistration follows, which removes the maintenance too
        (and so does the registration of records kept by -deregister on-success when
        the container starts again: it replaces the service's checks)."""
        self._draining.pop(container_id, None)

    def on_start(self, container_id: str) -> None:
        """The container runs again (a restart): its drain is over, now."""
        drain = self._draining.pop(container_id, None)
        if drain is not None:
            self._clear(drain.service_ids, "its container started again")

    def next_deadline(self) -> float | None:
        return min((d.deadline for d in self._draining.values()), default=None)

    def expire(self) -> None:
        """Give back rotation to containers that did not die within the drain timeout."""
        now = self._clock()
        for container_id, drain in list(self._draining.items()):
            if drain.deadline > now:
                continue
            del self._draining[container_id]
            self._clear(drain.service_ids, "it did not stop within the drain timeout")

    def _clear(self, service_ids: tuple[str, ...], why: str) -> None:
        for service_id in service_ids:
            try:
                reason = self._registry.maintenance_reason(service_id)
                if reason is not None and reason.startswith(REASON_PREFIX):
                    self._registry.disable_maintenance(service_id)
                    logger.bind(service_id=service_id, action="undrain").info(
                        "{}: {}: maintenance cleared", service_id, why)
                elif reason is not None:
                    logger.bind(service_id=service_id).info(
                        "{}; someone else's maintenance left as is: {} ({})", why, service_id, reason)
            except RegistryError as error:
                logger.warning("could not clear maintenance of {}: {}", service_id, error)
