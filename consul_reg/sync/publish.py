"""The immutable view the loop publishes after each batch (a numbered
Snapshot): read by the status endpoint, offered to every mirror worker. The
loop's own dictionaries are never shared: each snapshot holds frozen copies.
It also numbers the full passes, as they begin and once each is done."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

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
                last_full_pass: float | None, primary_error: str, changed: bool, full_pass: bool,
                draining: frozenset[str] = frozenset(), restart_candidates: frozenset[str] = frozenset()) -> bool:
        """A new snapshot when something changed (or the agent's reachability did, or which containers
        are being stopped); False: none. full_pass: one just made its writes and drains: it is counted
        done, and the subscribers relist."""
        last = self.snapshot
        if (not changed and not full_pass and last.generation and (actual is None) == (last.actual is None)
                and primary_error == last.primary_error and draining == last.draining):
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
            full_passes_started=last.full_passes_started,
            full_pass_done=last.full_passes_started if full_pass else last.full_pass_done,
            draining=draining,
            restart_candidates=restart_candidates,
        )
        for subscriber in self.subscribers:
            subscriber.offer(self.snapshot, relist=full_pass)
        return True

    def full_pass_begins(self) -> None:
        """Number a full pass before it lists Docker or the agent, and show that number at
        once (the rest of the view stays the last batch's, and no subscriber is offered it)."""
        self.snapshot = replace(self.snapshot, full_passes_started=self.snapshot.full_passes_started + 1)
