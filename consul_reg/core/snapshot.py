"""The immutable view the sync loop publishes after each pass. Other threads
(the status endpoint, mirror workers) only ever read a Snapshot: they never
touch the loop's own dictionaries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from consul_reg.core.records import ContainerDesire, RegisteredService, Service


@dataclass(frozen=True)
class Snapshot:
    generation: int = 0
    desires: Mapping[str, ContainerDesire] = field(default_factory=lambda: MappingProxyType({}))  # by container ID
    desired: Mapping[str, Service] = field(default_factory=lambda: MappingProxyType({}))  # by service ID
    actual: Mapping[str, RegisteredService] | None = None  # the primary's records; None: unknown now
    kept: tuple[Service, ...] = ()  # records -deregister on-success keeps for failed containers
    last_full_pass: float | None = None  # monotonic seconds
    primary_error: str = ""
    # Full passes are numbered as they begin: `full_passes_started` is published (without a new
    # generation) before a pass lists Docker or the agent; `full_pass_done` is the number of the
    # latest one whose sync, drains and publication are over (a pass Docker cut short is never
    # done: its number is skipped). A pass numbered above a `full_passes_started` read at T began
    # after T, so "full_pass_done > that number" means such a pass has made its writes.
    full_passes_started: int = 0
    full_pass_done: int = 0
    # Containers being stopped (a terminating kill seen, its death not yet, within the drain timeout):
    # the restart watcher counts none of their checks.
    draining: frozenset[str] = frozenset()
    # Containers whose desire names a restart policy (SERVICE_CHECK_RESTART_*): the restart
    # watcher looks at these alone, and is not woken while there are none.
    restart_candidates: frozenset[str] = frozenset()


def freeze(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping.items()))
