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

Maintenance goes on only on the records the ownership guard reads, at that
moment, as this daemon's for the stopping container (one read per stop: the
loop's listing may be older than an operator's registration of the same ID),
and clearing reads the agent's maintenance checks once for all the services
whose drains end together.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass

from loguru import logger

from consul_reg.core.backoff import Clock
from consul_reg.core.errors import RegistryError
from consul_reg.core.protocols import AgentAPI

REASON_PREFIX = "consul-reg: draining"
TERMINATING = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL}
_SIGNAL_NUMBER = re.compile(r"[0-9]{1,4}")  # ASCII digits only
MAX_SIGNAL_TEXT = 32


def signal_number(value: object) -> int | None:
    """'15', 'SIGTERM', 'TERM' -> 15; None when it names no signal. Total: a container's
    StopSignal is any text ('²' is a digit to str.isdigit and no number to int())."""
    if not isinstance(value, str) or len(value) > MAX_SIGNAL_TEXT:
        return None
    value = value.strip().upper()
    if _SIGNAL_NUMBER.fullmatch(value):
        return int(value)
    name = value if value.startswith("SIG") else "SIG" + value
    member = signal.Signals.__members__.get(name)
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
    def __init__(self, registry: AgentAPI, timeout: float, clock: Clock = time.monotonic) -> None:
        self._registry = registry
        self._timeout = timeout
        self._clock = clock
        self._draining: dict[str, _Drain] = {}

    def on_kill(self, container_name: str, container_id: str, service_ids: tuple[str, ...], sent: str,
                stop_signal: str) -> None:
        if not service_ids or not is_terminating(sent, stop_signal) or container_id in self._draining:
            return
        reason = f"{REASON_PREFIX} container {container_name} (signal {sent})"
        try:
            ours = self._registry.ours_now(service_ids, container_id)
        except RegistryError as error:
            logger.warning("could not drain container {}: {}", container_name, error)
            return
        for service_id in service_ids:
            if service_id not in ours:
                logger.bind(service_id=service_id, container=container_name).info(
                    "not draining {}: the agent's record is no longer this daemon's for container {}",
                    service_id, container_name)
                continue
            try:
                self._registry.enable_maintenance(service_id, reason)
                logger.bind(service_id=service_id, container=container_name, action="drain").info(
                    "draining {}: maintenance on while container {} stops", service_id, container_name)
            except RegistryError as error:
                logger.warning("could not put {} in maintenance: {}", service_id, error)
        drained = tuple(service_id for service_id in service_ids if service_id in ours)
        self._draining[container_id] = _Drain(drained, self._clock() + self._timeout)

    def on_die(self, container_id: str) -> None:
        """The process ended: deregistration follows, which removes the maintenance too
        (and so does the registration of records kept by -deregister on-success when
        the container starts again: it replaces the service's checks)."""
        self._draining.pop(container_id, None)

    def on_start(self, *container_ids: str) -> None:
        """These containers run again (a restart): their drains are over, now."""
        ended = [drain for cid in container_ids if (drain := self._draining.pop(cid, None)) is not None]
        self._clear([s for drain in ended for s in drain.service_ids], "its container started again")

    def draining(self) -> frozenset[str]:
        """The containers being stopped now (their kill seen, their death or drain timeout not yet)."""
        return frozenset(self._draining)

    def next_deadline(self) -> float | None:
        return min((d.deadline for d in self._draining.values()), default=None)

    def expire(self) -> None:
        """Give back rotation to containers that did not die within the drain timeout."""
        now = self._clock()
        ended = [cid for cid, drain in self._draining.items() if drain.deadline <= now]
        self._clear([s for cid in ended for s in self._draining.pop(cid).service_ids],
                    "it did not stop within the drain timeout")

    def _clear(self, service_ids: list[str], why: str) -> None:
        """Clear the maintenance this daemon set on these services: one read of the
        agent's maintenance checks for all of them, then one write per service."""
        if not service_ids:
            return
        try:
            reasons = self._registry.maintenance_reasons(service_ids)
        except RegistryError as error:
            logger.warning("could not clear maintenance of {}: {}", ", ".join(service_ids), error)
            return
        for service_id in service_ids:
            reason = reasons.get(service_id)
            try:
                if reason is not None and reason.startswith(REASON_PREFIX):
                    self._registry.disable_maintenance(service_id)
                    logger.bind(service_id=service_id, action="undrain").info(
                        "{}: {}: maintenance cleared", service_id, why)
                elif reason is not None:
                    logger.bind(service_id=service_id).info(
                        "{}; someone else's maintenance left as is: {} ({})", why, service_id, reason)
            except RegistryError as error:
                logger.warning("could not clear maintenance of {}: {}", service_id, error)
