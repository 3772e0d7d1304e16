"""The immutable view the loop publishes after each batch (a numbered
Snapshot): read by the status endpoint, offered to every mirror worker. The
loop's own dictionaries are never shared: each snapshot holds frozen copies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from consul_reg.core.protocols import SnapshotSubscriber
from consul_reg.core.records import ContainerDesire, RegisteredService, Service
from consul_reg.core.snapshot import Snapshot, freeze


class Publisher:
    def __init__(self, subscribers: Sequence[SnapshotSubscriber]) -> None:
        self.subscribers = tuple(subscribers)
        self.snapshot = Snapshot()
        self._frozen_actual: Mapping[str, RegisteredService] | None = None

    def publish(self, *, desires: Mapping[str, ContainerDesire], desired: Mapping[str, Service],
                actual: Mapping[str, RegisteredService] | None, kept: tuple[Service, ...],
                last_full_pass: float | None, primary_error: str, changed: bool, relist: bool) -> bool:
        """A new snapshot when something changed (or the agent's reachability did); False: none."""
        last = self.snapshot
        if (not changed and last.generation and (actual is None) == (last.actual is None)
                and primary_error == last.primary_error):
            return False
        if actual is None:
            self._frozen_actual = None
        elif changed or self._frozen_actual is None:
            self._frozen_actual = freeze(actual)
        self.snapshot = Snapshot(
            generation=last.generation + 1,
            desires=freeze(desires),
            desired=freeze(desired),
            actual=self._frozen_actual,
            kept=kept,
            last_full_pass=last_full_pass,
            primary_error=primary_error,
        )
        for subscriber in self.subscribers:
            subscriber.offer(self.snapshot, relist=relist)
        return True
