"""The immutable view the sync loop publishes after each pass. Other threads
(the status endpoint, mirror workers) only ever read a Snapshot: they never
touch the loop's own dictionaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

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


def freeze(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))
