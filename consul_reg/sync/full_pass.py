"""A full pass's reading of Docker, for the sync loop and on its thread: list the
containers (reusing each desire an unchanged listing entry allows), inspect and
build the others, and give the loop every container's desire. Applying them
(the containers' state, the agent's relisting) stays the loop's.

A resync (`yielding`) gives way to container events: its listing is asked
beside the loop (listing.py), its inspects run on the pass's own threads, and
when an event arrives it stops; the next attempt reuses the listing and every
desire built meanwhile that its container's entry still matches. A container
the loop looked at since the listing was asked (`touch`) keeps what its
events said.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from consul_reg.core.errors import DockerUnavailable, DockerUnreachable
from consul_reg.core.records import ContainerDesire
from consul_reg.sync.inbox import Inbox
from consul_reg.sync.listing import BackgroundListing
from consul_reg.sync.overlap import Interrupted
from consul_reg.sync.reading import Reader, listing_key
from consul_reg.sync.state import Containers

# A container's new desire: None when it is gone, True to keep its last one.
Build = Callable[[str, str, Any], ContainerDesire | None | bool]


@dataclass(frozen=True)
class PassRead:
    """What a full pass read: the desire of every container Docker listed (or the
    loop saw start since), the IDs listed, the containers Docker could not answer for."""

    desires: dict[str, ContainerDesire]
    listed: set[str]
    unread: list[tuple[str, DockerUnavailable]]


class FullPassReader:
    def __init__(self, list_containers: Callable[[], list[dict[str, Any]]], reader: Reader,
                 containers: Containers, inbox: Inbox, pass_io: Executor | None, build: Build) -> None:
        self._list = list_containers
        self._reader = reader
        self._containers = containers
        self._inbox = inbox
        self._pass_io = pass_io
        self._build = build
        self.listing = BackgroundListing(list_containers, pass_io, inbox)
        # Desires a resync built before it gave way to events (container ID -> (listing key, desire)).
        self._built: dict[str, tuple[str, ContainerDesire]] = {}

    def touch(self, container_id: str) -> None:
        """An event changed this container's desire: a resumed pass reads it again,
        and keeps what the event said over a listing asked before it."""
        self._built.pop(container_id, None)
        self.listing.touch(container_id)

    def read(self, yielding: bool) -> PassRead | None:
        """Every container's desire; None when, `yielding`, a container event arrived
        first. Raises DockerUnavailable when Docker could not be listed and
        DockerUnreachable when it stopped answering meanwhile (what is known stays)."""
        touched: set[str] = set()  # looked at by events since the listing was asked: they keep that
        if yielding:
            listed_now = self.listing.take()
            if listed_now is None:
                return None
            summaries, touched = listed_now, self.listing.touched
        else:
            self.listing.drop()
            summaries = self._list()
        entries: list[tuple[str, str, ContainerDesire | None, ContainerDesire | None]] = []  # ID, key, known, reused
        for summary in summaries:
            container_id = str(summary.get("Id") or "")
            if not container_id:
                continue
            key = listing_key(summary)
            known = self._containers.get(container_id)
            if container_id in touched:
                entries.append((container_id, key, known, known))
                continue
            # Podman's listing never shows health: a container with a healthcheck is read again.
            blind = known is not None and known.status.health and "(" not in str(summary.get("Status") or "")
            reused = known if known is not None and known.listing_key == key and key and not blind else None
            if reused is None and (built_before := self._built.get(container_id)) and built_before[0] == key:
                reused = built_before[1]  # built by a pass that gave way to events; unchanged since
            entries.append((container_id, key, known, reused))
        answers = self._reader.answers([cid for cid, _, _, reused in entries if reused is None],
                                       *((self._pass_io, self._inbox.events_waiting) if yielding else ()))
        desires: dict[str, ContainerDesire] = {}
        unread: list[tuple[str, DockerUnavailable]] = []
        for container_id, key, known, reused in entries:
            if reused is not None:
                desires[container_id] = reused
                continue
            if yielding and self._inbox.events_waiting():
                answers.close()  # the inspects in flight end; none is started
                return None
            try:
                answered_for, inspected = next(answers)  # the answers come in the entries' order
            except Interrupted:  # an event came while dockerd answered
                return None
            assert answered_for == container_id
            try:
                built = self._build(container_id, key, inspected)
            except DockerUnreachable:
                raise
            except DockerUnavailable as error:  # about this container only: the others carry on
                unread.append((container_id, error))
                built = True
            if built is True:
                built = known
            if isinstance(built, ContainerDesire):
                desires[container_id] = built
                self._built[container_id] = (key, built)
        self._built.clear()
        listed = {str(summary.get("Id") or "") for summary in summaries}
        for container_id in touched - listed:  # started since the listing: as its events said
            if (known := self._containers.get(container_id)) is not None:
                desires[container_id] = known
                listed.add(container_id)
        return PassRead(desires, listed, unread)
