"""What the loop knows of the containers: each one's desire as last built, its
env file's state, the desired services merged by ID, and the indexes that
spare a batch from walking every container. Owned by the loop's thread;
nothing else reads it (others read the Snapshot it publishes)."""

from __future__ import annotations

from dataclasses import replace

from consul_reg.core.plan import DesiredServices
from consul_reg.core.records import ContainerDesire
from consul_reg.sync.env_files import EnvFileState


class Containers:
    def __init__(self) -> None:
        self.desires: dict[str, ContainerDesire] = {}  # by container ID
        self.env_states: dict[str, EnvFileState] = {}  # by container ID
        self.desired = DesiredServices()  # by service ID: the newest claimant wins
        # Kept up to date with `desires`, so that no batch walks every container.
        self.kept: set[str] = set()  # containers whose records stay after their death (-deregister on-success)
        self.with_env_file: set[str] = set()
        self.with_restart: set[str] = set()  # containers with a SERVICE_CHECK_RESTART_* policy (the restart watcher's)

    def get(self, container_id: str) -> ContainerDesire | None:
        return self.desires.get(container_id)

    def put(self, container_id: str, new: ContainerDesire | None) -> ContainerDesire | None:
        """Replace one container's desire (None: it is gone); returns the old one."""
        old = self.desires.get(container_id)
        if new is None:
            self.desires.pop(container_id, None)
            self.env_states.pop(container_id, None)
        else:
            self.desires[container_id] = new
        for members, member in ((self.kept, new is not None and new.keep_existing),
                                (self.with_env_file, new is not None and bool(new.env_file)),
                                (self.with_restart, new is not None and _restarts(new))):
            if member:
                members.add(container_id)
            else:
                members.discard(container_id)
        return old

    def replace_all(self, desires: dict[str, ContainerDesire], listed: set[str]) -> list[str]:
        """After a full pass: every container's desire at once; env-file states of the
        containers Docker no longer lists go. Returns the election's warnings."""
        self.desires = desires
        self._reindex()
        self.env_states = {cid: s for cid, s in self.env_states.items() if cid in listed}
        return self.desired.replace_all(desires.values())

    def forget_listing_keys(self) -> None:
        """Every container is mapped again at the next full pass (the settings changed)."""
        self.desires = {cid: replace(d, listing_key="") for cid, d in self.desires.items()}
        self._reindex()

    def _reindex(self) -> None:
        self.kept = {cid for cid, d in self.desires.items() if d.keep_existing}
        self.with_env_file = {cid for cid, d in self.desires.items() if d.env_file}
        self.with_restart = {cid for cid, d in self.desires.items() if _restarts(d)}


def _restarts(desire: ContainerDesire) -> bool:
    return any(service.restart is not None for service in desire.services)
