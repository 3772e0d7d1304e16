"""The primary registry's state, owned by the sync loop: what the agent holds
(listed, then kept up to date by every write), the definitions it refused,
the services it reaped, its identity, and one backoff for reaching it.

`sync` plans desired against actual and applies the difference through the
one agent client; tested with a fake agent and a fake clock.
"""

from __future__ import annotations

import random as _random
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace

from loguru import logger

from consul_reg.core.agent_records import AgentRecords
from consul_reg.core.backoff import Backoff, Clock, Random
from consul_reg.core.calls import Later
from consul_reg.core.errors import RegistryError
from consul_reg.core.plan import apply, plan
from consul_reg.core.protocols import AgentAPI, RegistryWrites
from consul_reg.core.records import (
    MARKER_DIGEST_KEY,
    AgentInfo,
    ContainerDesire,
    Holdings,
    Owner,
    ReadScope,
    RegisteredService,
    Service,
    as_owner,
    registered_form,
)
from consul_reg.sync.early import FRESH_SECONDS, EarlyRead
from consul_reg.sync.overlap import overlapped
from consul_reg.sync.reaps import ReapTracker


@dataclass
class SyncResult:
    registered: list[Service] = field(default_factory=list)
    deregistered: list[RegisteredService] = field(default_factory=list)
    failed: int = 0
    scripts_refused: bool = False
    reached: bool = True  # False: the agent could not be reached; retried at `retry_at`


class Primary:
    def __init__(self, agent: AgentAPI, hostname: Owner | str, retry_interval: float, clock: Clock,
                 adopt_leftovers: bool = False, io: Executor | None = None,
                 random: Random = _random.random) -> None:
        self.agent = agent
        self.hostname = as_owner(hostname)  # this daemon as the ownership marker names it
        self.adopt_leftovers = adopt_leftovers
        self.clock = clock
        self.backoff = Backoff(retry_interval, clock=clock, random=random)
        self.actual: AgentRecords | None = None  # None: unknown, list it again
        self.identity: AgentInfo | None = None
        self.refused: dict[str, str] = {}  # service ID -> digest the agent refused; retried when it changes
        self.reaps = ReapTracker()
        self.last_error = ""
        self._blocked_warned: dict[str, str] = {}  # service ID -> holder warned about
        self._listed_before: Mapping[str, RegisteredService] | None = None
        self.io = io  # the writes' own pool: a batch's writes overlap on it
        self._writes: RegistryWrites | None = None  # this batch's, checked against its read ahead
        self._writes_read_at: float | None = None  # when the read `_writes` is checked against was sent
        self._writes_listing = False  # that read is a burst's whole listing (made again when it ages)
        self._prefetched: Future[tuple[dict[str, RegisteredService], dict[str, str]]] | None = None
        # Asked for when the batch was taken (what, when): what its writes are checked against.
        self._ahead: tuple[Later[dict[str, RegisteredService]], ReadScope | None, float] | None = None
        # Counts each batch's writes in and out (odd: under way): a read sent before the end of
        # the last writes (an early read, sync/early.py) is older than they are, and not used.
        self.write_epoch = 0

    def agent_changed(self, info: AgentInfo) -> bool:
        """The agent answers (again); True when it is another agent (a new node
        ID: it lost everything, so nothing gone since is a reap)."""
        restarted = self.identity is not None and info.node_id != self.identity.node_id
        if restarted:
            logger.warning("the Consul agent restarted (node ID {} -> {}); re-registering everything",
                           self.identity.node_id if self.identity else "", info.node_id)
            self.reaps.clear()
        self.identity = info
        self.actual = None
        self._listed_before = None  # after an outage, what is missing was not reaped
        self.backoff.retry_now()  # it answered: list and write at once, not after the wait
        return restarted

    def forget(self, service_ids: Collection[str]) -> None:
        """Register these again at the next sync whatever the listing said
        (the agent lost a check of theirs, or their container restarted)."""
        if self.actual is not None:
            for service_id in service_ids:
                current = self.actual.get(service_id)
                if current is not None and current.owned_by(self.hostname):  # someone else's record stays known
                    self.actual.remove(service_id)

    def relist(self) -> None:
        """List the agent again at the next sync (what it lost since, with a
        deregister-after check, was reaped)."""
        if self.actual is not None:
            self._listed_before = self.actual
        self.actual = None

    def new_pass(self) -> None:
        """A full pass: refused definitions get another chance, the agent is listed again."""
        self.refused.clear()
        self.relist()
        self._drop_ahead()  # the pass's listing is what its writes are planned on

    def prefetch(self) -> None:
        """Start listing the agent (its services, its checks' owners) on the I/O pool, for
        the next sync that needs a listing: a full pass reads it beside Docker's listing.
        The loop takes it in the same batch, or drops it (`drop_prefetch`)."""
        if self.io is not None and self._prefetched is None and self.backoff.ready():
            self._prefetched = self.io.submit(self._list_agent)

    def drop_prefetch(self) -> None:
        """Forget a listing (and a read ahead) started but not taken (the pass it was for
        did not happen): it is never used later, when it could be stale. Not waited for: an
        agent that hangs must not hold the loop for a listing nobody will read."""
        self._drop_ahead()
        self.drop_listing()

    def _drop_ahead(self) -> None:
        self._writes, self._writes_read_at = None, None
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[0].cancel()

    def drop_listing(self) -> None:
        """Forget the full listing started for a pass that did not happen; a read ahead
        for the batch's events stays (their targeted pass follows)."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            prefetched.cancel()  # if it has not started; else it ends on its own, unread

    def read_ahead(self, scope: ReadScope | None, begun: Sequence[EarlyRead] = ()) -> None:
        """The batch's events were just taken: ask the agent now for the records `scope`
        names (the batch's containers' default IDs by prefix, the IDs they had; None: all
        of them, for a burst, whose filter of hundreds of alternatives the agent would
        match against every record it holds); its answer is taken when the batch's first
        write needs it (the batch's inspects are answered and mapped meanwhile). `begun`:
        reads Docker's event thread sent for other containers of the batch when it read
        their events (sync/early.py), taken with this one: only those of the current
        `write_epoch` (the loop leaves out any sent before its last writes). The
        batch's writes to IDs in these scopes are checked against these reads (each made
        when its event was read or taken) instead of a read each after the inspect; any
        other ID is read by its write, as before. A scoped read is sent from the loop's
        thread before Docker's inspects (it answers no sooner than they do: sent after
        them, on the writes' pool, it held the register back ~0.5 ms, see BENCHMARKS.md);
        a burst's whole listing goes on the writes' pool."""
        if self._ahead is not None or self.actual is None or not self.backoff.ready() or scope is None:
            for read in begun:
                read.later.cancel()
            if scope is None and self._ahead is None and self.actual is not None and self.backoff.ready() \
                    and self.io is not None:
                self._ahead = (self.io.submit(self.agent.services), None, self.clock())
            return
        reads = list(begun)
        if scope:
            try:
                reads.append(EarlyRead(self.agent.services_in_later(scope), scope, self.clock(), self.write_epoch))
            except RegistryError:
                pass  # each write outside the reads begun reads for itself (and meets the same error, if it lasts)
        if reads:
            self._ahead = (_Merged(tuple(r.later for r in reads)) if len(reads) > 1 else reads[0].later,
                           merged_scope(r.scope for r in reads), min(r.sent_at for r in reads))

    def _batch_writes(self) -> RegistryWrites:
        """The writes of this batch (every sync of it: a burst is synced window by window),
        all checked against its one read ahead; made at the batch's first write. A read older
        than FRESH_SECONDS when a sync writes is not used from then on (the window of
        docs/guarantees-latency.md): after a scoped read (the batch's inspects were slow) each
        write reads for itself; a burst's whole listing is listed again, once per window."""
        if self._writes is None:
            held = self._take_ahead()
            self._writes_read_at = held.read_at if held is not None else None
            self._writes_listing = held is not None and held.scope is None
            self._writes = self.agent.checked_against(held)
        if self._writes_read_at is not None and self.clock() - self._writes_read_at > FRESH_SECONDS:
            again = self._listed_again()
            self._writes = self.agent.checked_against(again)
            self._writes_read_at = again.read_at if again is not None else None
        return self._writes

    def _listed_again(self) -> Holdings | None:
        """A burst's whole listing, made again now (None: after a scoped read, or when the
        agent did not answer, each write reads for itself)."""
        if not self._writes_listing:
            return None
        read_at = self.clock()
        try:
            return Holdings(self.agent.services(), None, read_at, None)
        except RegistryError:
            return None

    def _take_ahead(self) -> Holdings | None:
        """The read made ahead for this batch, if it answered; else None (each write reads)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        later, scope, read_at = ahead
        try:
            # Check owners: read by the writes with checks, just before each.
            return Holdings(later.result(), None, read_at, scope)
        except RegistryError:
            return None  # each write reads for itself (and meets the same error, if it lasts)

    def _list_agent(self) -> tuple[dict[str, RegisteredService], dict[str, str]]:
        return self.agent.services(), self.agent.check_owners()

    def sync(self, desired: Mapping[str, Service], desires: Collection[ContainerDesire], scope: Collection[str] | None,
             kept_containers: Collection[str]) -> SyncResult:
        self._forget_undesired(desired, scope)
        if self.actual is None:
            if not self.backoff.ready():
                return SyncResult(reached=False)
            prefetched, self._prefetched = self._prefetched, None
            try:
                listed, held = self._list_agent() if prefetched is None else prefetched.result()
                self.actual = AgentRecords(listed)
            except RegistryError as error:
                self._unreachable(str(error))
                return SyncResult(reached=False)
            if self._listed_before is not None:
                self.reaps.notice(desires, self._listed_before, self.actual)
            self._listed_before = None
            self._forget_lost_checks(desired, held)
            scope = None  # a fresh listing: plan everything
        todo = plan(desired, self.actual, self.hostname, scope=scope, kept_containers=kept_containers,
                    adopt_leftovers=self.adopt_leftovers, skip_register={**self.refused, **self.reaps.digests()})
        self._warn_blocked(todo.blocked, full=scope is None)
        result = SyncResult()
        if todo:
            writes = self._batch_writes()
            self.write_epoch += 1  # odd: an early read sent from now on is older than these writes
            try:
                applied = apply(todo, writes, run=overlapped(self.io))
            finally:
                self.write_epoch += 1
            for service in applied.registered:
                self.actual.put(service.id, registered_form(service))
                self.refused.pop(service.id, None)
            for gone in applied.deregistered:
                self.actual.remove(gone.id)
            for service_id, _ in applied.failed:
                if service_id in desired:
                    self.refused[service_id] = desired[service_id].digest
            result = SyncResult(applied.registered, applied.deregistered, len(applied.failed),
                                applied.scripts_refused)
            if applied.unavailable:
                self._unreachable(applied.unavailable)
                result.reached = False
                return result
        if self.backoff.failing:
            logger.info("{} answers again", self.agent.description)
        self.backoff.succeeded()
        self.last_error = ""
        return result

    def _forget_undesired(self, desired: Mapping[str, Service], scope: Collection[str] | None) -> None:
        """What is kept per service ID (a refused definition, a reap, a warning) leaves with
        the last desire for that ID, so that no table outlives its containers."""
        ids = set(self.refused) | self.reaps.service_ids() | set(self._blocked_warned) if scope is None else scope
        for service_id in ids:
            if service_id not in desired:
                self.refused.pop(service_id, None)
                self.reaps.forget(service_id)
                self._blocked_warned.pop(service_id, None)

    def _forget_lost_checks(self, desired: Mapping[str, Service], held: Mapping[str, str]) -> None:
        """Our services the agent holds as desired, but without all their checks (lost
        by the agent, removed or taken over from outside): the digest cannot tell, so
        they are registered again (the guard refuses one whose check another service holds)."""
        assert self.actual is not None
        for service_id, service in desired.items():
            current = self.actual.get(service_id)
            if current is None or current.digest != service.digest or not current.owned_by(self.hostname):
                continue
            lost = [check.check_id for check in service.checks if held.get(check.check_id) != service_id]
            if lost:
                logger.info("{} lost its checks {}: registering it again", service_id, ", ".join(lost))
                # Still ours and still there: a stale digest makes the plan register it again,
                # and if that fails it is still deregistered (or drained) with its container.
                self.actual.put(service_id, replace(current, meta={**current.meta, MARKER_DIGEST_KEY: ""}))

    def owned(self) -> list[RegisteredService]:
        return [s for s in (self.actual or {}).values() if s.owned_by(self.hostname)]

    def registered_ids(self, desire: ContainerDesire) -> tuple[str, ...]:
        """The container's services whose records in the agent are this daemon's, for
        this container: a drain never touches a record someone else holds."""
        actual: Mapping[str, RegisteredService] = self.actual or {}
        return tuple(s.id for s in desire.services if (record := actual.get(s.id)) is not None
                     and record.owned_by(self.hostname) and record.container_id == desire.container_id)

    def kept_records(self, kept_containers: Collection[str]) -> tuple[Service, ...]:
        """This daemon's records kept for containers that died (-deregister on-success), as services."""
        return tuple(Service(id=s.id, name=s.name, address=s.address, port=s.port, container_id=s.container_id)
                     for s in ((self.actual or {}).values() if kept_containers else ())
                     if s.container_id in kept_containers and s.owned_by(self.hostname))

    def records_of(self, container_id: str) -> set[str]:
        """The IDs of this daemon's records for one container, as last known."""
        return {s.id for s in self.owned() if s.container_id == container_id}

    def _unreachable(self, reason: str) -> None:
        self.actual = None
        self.last_error = reason
        delay = self.backoff.failed()
        logger.warning("{}; retrying in {:.1f}s", reason, delay)

    def _warn_blocked(self, blocked: tuple[tuple[Service, RegisteredService], ...], full: bool) -> None:
        """Once per service and holder; a full plan forgets the ones no longer blocked."""
        if full:
            still = {service.id for service, _ in blocked}
            self._blocked_warned = {k: v for k, v in self._blocked_warned.items() if k in still}
        for service, holder in blocked:
            holder_text = f"host {holder.meta.get('consul_reg_host', '?')}" if holder.meta.get("consul_reg_host") \
                else "nobody (registered by hand or by another tool)"
            if self._blocked_warned.get(service.id) == f"{holder_text} as {holder.id}":
                continue
            self._blocked_warned[service.id] = f"{holder_text} as {holder.id}"
            log = logger.bind(service_id=service.id, container=service.container_name)
            if holder.id == service.id:
                log.warning("container {}: service ID {!r} is already registered by {}, not by this daemon: "
                            "left as it is, not registered", service.container_name, service.id, holder_text)
            else:  # another spelling: one service in Consul's catalog
                log.warning("container {}: service ID {!r} differs only in case from {!r}, registered by {}: "
                            "Consul's catalog holds them as one service, so {} is not registered",
                            service.container_name, service.id, holder.id, holder_text, service.id)


def merged_scope(scopes: Iterable[ReadScope]) -> ReadScope:
    prefixes: set[str] = set()
    ids: set[str] = set()
    for scope in scopes:
        prefixes |= scope.prefixes
        ids |= scope.ids
    return ReadScope(frozenset(prefixes), frozenset(ids))


class _Merged:
    """Several scoped reads of one batch as one: the union of their answers (their scopes
    are disjoint or agree: each answer is the agent's records by ID)."""

    def __init__(self, laters: tuple[Later[dict[str, RegisteredService]], ...]) -> None:
        self._laters = laters

    def result(self) -> dict[str, RegisteredService]:
        merged: dict[str, RegisteredService] = {}
        try:
            for later in self._laters:
                merged.update(later.result())
        finally:
            self.cancel()  # the ones not read when one failed
        return merged

    def cancel(self) -> None:
        for later in self._laters:
            later.cancel()


def batch_scope(host: str, names: Mapping[str, str],
                containers: Iterable[tuple[str, ContainerDesire | None]]) -> ReadScope:
    """The agent's records a batch's writes will touch, as far as its events tell: each
    container's default IDs (`<host>:<name>` and every `<host>:<name>:...`, by the name
    its event or its last desire gave) and every ID its last desire had. A write to an
    ID outside this reads the agent itself, so a wrong name costs a read, never a check."""
    prefixes: set[str] = set()
    ids: set[str] = set()
    for container_id, known in containers:
        name = names.get(container_id) or (known.container_name if known is not None else "")
        if name:
            ids.add(f"{host}:{name}")
            prefixes.add(f"{host}:{name}:")
        if known is not None:
            ids.update(service.id for service in known.services)
    return ReadScope(frozenset(prefixes), frozenset(ids))

