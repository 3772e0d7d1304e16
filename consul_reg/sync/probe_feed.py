"""What the loop hands the heartbeat scheduler: each container's daemon-owned
checks, only for the services that container won and the agent holds, after
the primary's writes (a check is reported once its service is registered).
Owned by the loop's thread: it notes which containers changed and hands over
just those, or everything after a relist."""

from __future__ import annotations

from collections.abc import Iterable

from consul_reg.core.protocols import ProbeSink
from consul_reg.core.records import ContainerStatus, Service
from consul_reg.sync.primary import Primary
from consul_reg.sync.state import Containers


class ProbeFeed:
    def __init__(self, probes: ProbeSink) -> None:
        self.probes = probes
        self._dirty: set[str] = set()  # containers whose daemon-owned checks changed
        self._stale = False  # hand the scheduler everything (after a full pass or a relist)

    def changed(self, container_ids: Iterable[str]) -> None:
        self._dirty.update(container_ids)

    def everything_changed(self) -> None:
        self._stale = True

    def hand_over(self, containers: Containers, primary: Primary) -> None:
        """After the primary's writes: the changed containers, or everything."""
        desires = containers.desires
        if self._stale:
            self.probes.replace_all({cid: self._probed(d.services, cid, containers, primary)
                                     for cid, d in desires.items()},
                                    {cid: d.status for cid, d in desires.items()})
        else:
            for container_id in self._dirty:
                known = desires.get(container_id)
                if known is None:
                    self.probes.set_container(container_id, (), ContainerStatus(running=False))
                else:
                    self.probes.set_container(container_id,
                                              self._probed(known.services, container_id, containers, primary),
                                              known.status)
        self._stale = False
        self._dirty.clear()

    @staticmethod
    def _probed(services: Iterable[Service], container_id: str, containers: Containers,
                primary: Primary) -> list[Service]:
        """Services whose daemon-owned checks are reported: only those the container
        won (a losing claimant never drives the winner's checks), not the reaped
        ones, nor the ones the agent refused (it has no such checks)."""
        return [s for s in services if s.id not in primary.reaps and s.id not in primary.refused
                and containers.desired.holds(container_id, s.id)]
