"""The sync loop: the one owner of the sync state.

Other threads (Docker's event reader, the agent watch, heartbeat senders,
env-file readers, the daemon's signal thread) only put typed messages
(core/messages.py) in `inbox`. The loop takes everything queued at once,
lets the router turn the batch into actions, runs every per-event action,
then at most one pass: "full" (relist Docker and the agent) when asked or
due, else one over the containers the batch touched. After each batch it
publishes an immutable Snapshot (status endpoint, mirrors). Level-triggered,
as a Kubernetes controller: events are hints, what Docker and the agent hold
is the truth.

What it owns: the containers' desires and env-file states (state.py), the
agent's records as known (primary.py), drains (drain.py), its timers
(timers.py) and reads (reading.py). It talks to Docker and the agent only
through core's protocols.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from loguru import logger

from consul_reg.core.backoff import Clock
from consul_reg.core.errors import DockerUnavailable
from consul_reg.core.messages import DockerEvent, EnvFileRead, Message, ScriptsRefused, Start
from consul_reg.core.protocols import AgentAPI, DockerReads, LoopMetrics, NoMetrics, ProbeSink, SnapshotSubscriber
from consul_reg.core.records import (
    AgentInfo,
    ContainerDesire,
    ContainerStatus,
    ReadScope,
    keeps_records,
    section,
)
from consul_reg.core.snapshot import Snapshot
from consul_reg.mapping.default_ids import default_id_host
from consul_reg.sync.desires import DesireBuilder, DesireUnavailable
from consul_reg.sync.drain import Drainer
from consul_reg.sync.early import EarlyReads, Taken
from consul_reg.sync.env_files import EnvFileState, fold_reads
from consul_reg.sync.full_pass import FullPassReader
from consul_reg.sync.inbox import Inbox
from consul_reg.sync.primary import Primary, SyncResult, batch_scope
from consul_reg.sync.probe_feed import ProbeFeed
from consul_reg.sync.publish import Publisher
from consul_reg.sync.reading import NOT_FETCHED, Reader
from consul_reg.sync.reading import WINDOW as READ_WINDOW
from consul_reg.sync.router import Actions, route
from consul_reg.sync.state import Containers
from consul_reg.sync.timers import Timers

IDLE_WAIT_SECONDS = 3600.0
IO_WORKERS = 4  # Docker inspects and agent writes of one batch in flight at once
PASS_IO_WORKERS = 2  # a resync's Docker calls, beside the events'


@dataclass(frozen=True)
class LoopSettings:
    owner: str  # this daemon's ownership marker (core.records.Owner): host name and --instance
    deregister_mode: str = "always"  # -deregister
    resync_seconds: float = 30.0  # -resync; 0: no periodic full pass
    env_file_interval: float = 10.0
    retry_interval: float = 2.0  # first wait before retrying Docker or the agent
    drain_timeout: float = 30.0
    adopt_leftovers: bool = False  # -cleanup
    io_workers: int = IO_WORKERS


class Loop:
    def __init__(self, settings: LoopSettings, docker: DockerReads, agent: AgentAPI, builder: DesireBuilder,
                 probes: ProbeSink, subscribers: Sequence[SnapshotSubscriber] = (),
                 metrics: LoopMetrics = NoMetrics(), clock: Clock = time.monotonic) -> None:
        self.inbox = Inbox()
        self.settings = settings
        self.docker = docker
        self.builder = builder
        builder.hold_reports()  # its log lines and first digests wait until a batch's writes are made
        self.probes = probes
        self.metrics = metrics
        self.clock = clock
        # The only other threads that serve the loop: they make the Docker and agent calls of
        # a batch overlap, and only return answers; the loop applies them itself, in order.
        self.io = ThreadPoolExecutor(settings.io_workers, thread_name_prefix="loop-io") \
            if settings.io_workers > 1 else None
        # A resync's listing and inspects, on threads of their own: one of a dying container
        # can wait seconds on dockerd, and must never hold a worker the events' calls need.
        self.pass_io = ThreadPoolExecutor(PASS_IO_WORKERS, thread_name_prefix="pass-io") \
            if self.io is not None else None
        # The agent's writes on a pool of their own: a burst's registrations go out while
        # the inspects of its next containers are still under way (`_targeted`).
        self.primary = Primary(agent, settings.owner, settings.retry_interval, clock,
                               adopt_leftovers=settings.adopt_leftovers,
                               io=ThreadPoolExecutor(settings.io_workers, thread_name_prefix="loop-write")
                               if self.io is not None else None)
        self.drainer = Drainer(agent, settings.drain_timeout, clock)
        self.reader = Reader(lambda container_id: self.docker.inspect(container_id), self.io,
                             settings.retry_interval, clock)
        self.containers = Containers()
        self.timers = Timers(settings.resync_seconds, settings.env_file_interval, settings.retry_interval, clock)
        self.publisher = Publisher(subscribers)
        self._dirty = False  # desires changed since the last snapshot
        self.pass_reader = FullPassReader(lambda: self.docker.list_containers(), self.reader, self.containers,
                                          self.inbox, self.pass_io, self._build)
        self.probe_feed = ProbeFeed(probes)
        # Reads begun on Docker's event thread as it reads each event (`post`), taken by `handle`.
        self.early = EarlyReads(lambda container_id: self.docker.inspect_later(container_id),
                                lambda scope: agent.services_in_later(scope, wait=False),
                                self._early_scope, clock, lambda: self.primary.write_epoch, self.io) \
            if self.io is not None else None

    @property
    def snapshot(self) -> Snapshot:
        """The last published view (any thread may read it)."""
        return self.publisher.snapshot

    # -- any thread ---------------------------------------------------------------

    def post(self, message: Message) -> None:
        """Queue a message for the loop. Safe from any thread and from signal
        handlers (SimpleQueue.put is reentrant). A container event's reads are
        begun first, on the poster's thread (Docker's event reader: sync/early.py)."""
        if self.early is not None and isinstance(message, DockerEvent):
            self.early.noticed(message)
        self.inbox.put(message)

    def _early_scope(self, container_id: str, name: str) -> ReadScope:
        """What an early read for the container asks for (Docker's event thread): as
        `batch_scope`, from the last snapshot published."""
        return batch_scope(self.primary.hostname.host, {container_id: name} if name else {},
                           [(container_id, self.publisher.snapshot.desires.get(container_id))])

    # -- the loop -------------------------------------------------------------------

    def run(self, identity: AgentInfo | None = None) -> None:
        """Until a Stop message. `identity`: the agent reached at start."""
        self.post(Start(identity))
        while True:
            batch = self.inbox.next_batch(self.seconds_until_due())
            try:
                if not self.handle(batch):
                    for pool in (self.io, self.pass_io, self.primary.io):
                        if pool is not None:
                            pool.shutdown(wait=False, cancel_futures=True)
                    if self.early is not None:
                        self.early.drop_all()
                    return
            except Exception:  # a bug must cost one pass, never the daemon
                self.primary.drop_prefetch()
                logger.exception("unexpected error; everything is relisted at the next pass")
                self.timers.docker_failed("recovering from an unexpected error")

    def seconds_until_due(self) -> float:
        """Until the loop must wake: a full pass, a retry, a drain timeout, an env-file poll, a health recheck."""
        deadlines = self.timers.deadlines(polling_env_files=bool(self.containers.with_env_file))
        for deadline in (self.drainer.next_deadline(), self.primary.backoff.retry_at, self.reader.due_at()):
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines) - self.clock() if deadlines else IDLE_WAIT_SECONDS

    def handle(self, batch: Sequence[Message]) -> bool:
        """One batch: merge what it asks for, then sync once, for a reason. False: stop."""
        actions = route(batch)
        if actions.stop:
            return False
        ids = (*actions.refresh, *(cid for cid, _ in actions.deaths))
        taken = self.early.take(ids) if self.early is not None else Taken()
        try:
            self._handle(actions, ids, taken)
        finally:
            taken.drop_all()  # those not answered (a full pass, an error): their connections go back
            self.builder.settle()  # the first mappings' digests (and any line a batch that wrote nothing held)
            if self.early is not None:
                self.early.reads_wanted = self.primary.actual is not None and self.primary.backoff.ready()
        return True

    def _handle(self, actions: Actions, ids: tuple[str, ...], taken: Taken) -> None:
        started = self.clock()
        if actions.event_times:
            self.metrics.event_lag(max(0.0, time.time() - max(actions.event_times) / 1e9))
        if actions.identity is not None:
            self._agent_seen(actions.identity, actions.agent_back)
        if ids:  # first: the read runs beside everything below (with those begun when the events were read)
            # A read sent before the loop's last writes is older than they are: the loop reads those
            # containers itself (the read is cancelled with the batch).
            begun = {cid: read for cid, read in taken.reads.items() if read.epoch == self.primary.write_epoch}
            scope = batch_scope(self.primary.hostname.host, dict(actions.names),
                                [(cid, self.containers.get(cid)) for cid in ids if cid not in begun]) \
                if len(ids) <= READ_WINDOW else None
            self.primary.read_ahead(scope, tuple(begun.values()))
        affected, drains_left, rechecks = self._per_event(actions, started)
        refresh = set(actions.refresh) | rechecks | self._fold_env_reads(actions.env_reads)
        if actions.missing_checks:
            logger.info("the agent lost checks of {}: listing it again", ", ".join(sorted(actions.missing_checks)))
            self.primary.relist()
        # A container that (re)starts after being seen dead: its records are verified,
        # whatever the cache says (the agent may have reaped or lost them meanwhile).
        verify = {cid for cid in actions.restarted
                  if (known := self.containers.get(cid)) is None or not known.status.running}
        if actions.refresh or actions.deaths or actions.drains:
            self.timers.events_seen()
        # A due resync (the safety net) never holds an event: it waits while container events
        # flow, and one under way gives way to the events that arrive meanwhile (`_full_pass`).
        full_reason = actions.full_reason or self.timers.full_reason_due()
        yielding = full_reason == "resync" and self.timers.resync_may_wait()
        kind = "full" if full_reason and self._full_pass(full_reason, yielding) else "targeted"
        if kind == "full":
            affected = set()  # a full pass plans everything
        else:
            affected |= self._targeted(refresh, retries=self.reader.ready() and not full_reason, pending=affected,
                                       verify=verify, early=taken.inspects)
        for container_id in verify:  # those no targeted pass looked at (a full pass), or not yet
            affected |= self._verify(container_id)
        for container_id in actions.report_status | rechecks:
            known = self.containers.get(container_id)
            if known is not None:
                self.probes.report_container_now(container_id, known.status)
        self._poll_env_files(force=kind == "full")
        result = self._sync_primary(None if kind == "full" else affected)
        self.primary.drop_prefetch()  # taken by the sync, unless it needed no listing
        self._drain(drains_left)
        self._publish(full_pass=kind == "full", changed=self._dirty or kind == "full" or bool(
            result.registered or result.deregistered))
        if kind == "full" or affected:
            self.metrics.reconcile(kind, self.clock() - started)
        if kind == "full":  # its writes are made and its snapshot published (the mirrors take it on their threads)
            logger.debug("full pass done ({}): {} containers", full_reason, len(self.containers.desires))

    # -- per-event actions ------------------------------------------------------------

    def _per_event(self, actions: Actions, now: float) -> tuple[set[str], tuple[tuple[str, str], ...], set[str]]:
        """Every event's own action, whatever pass follows: drains end or begin, deaths
        are marked. Returns (service IDs affected, drains left for after the sync,
        containers due to be read again)."""
        self.drainer.expire()
        for container_id in actions.restarted:
            self.primary.reaps.container_restarted(container_id)
        self.drainer.on_start(*actions.restarted)  # one read of the agent for all of them
        drains_left = self._drain(actions.drains)
        affected: set[str] = set()
        for container_id, exit_code in actions.deaths:
            self.drainer.on_die(container_id)
            affected |= self._mark_dead(container_id, exit_code)
        return affected, drains_left, self.timers.take_rechecks(now, actions.health_changed)

    def _agent_seen(self, info: AgentInfo, back: bool) -> None:
        """The agent's identity, at start or when it answers again (maybe another agent)."""
        if not back:
            self.primary.identity = info
            return
        self.primary.agent_changed(info)
        if self.builder.agent_changed(info):
            self.remap_everything()

    def _drain(self, drains: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """Maintenance on for the containers being stopped. The ones left when the agent's
        records are not known (it is listed again: it came back) are done after the sync."""
        if self.primary.actual is None:
            return drains
        for container_id, signal in drains:
            known = self.containers.get(container_id)
            if known is not None:
                self.drainer.on_kill(known.container_name, container_id, self.primary.registered_ids(known), signal,
                                     known.stop_signal)
        return ()

    def _mark_dead(self, container_id: str, exit_code: str) -> set[str]:
        """A `die` event is itself proof the process ended. Inspecting now would
        wait ~100 ms on dockerd's lock while it tears the network down."""
        known = self.containers.get(container_id)
        if known is None:
            return set()
        dead = replace(known, services=(), status=ContainerStatus(running=False), listing_key="",
                       keep_existing=keeps_records(self.settings.deregister_mode, exit_code))
        return self._set_desire(container_id, dead)

    def _fold_env_reads(self, reads: Iterable[EnvFileRead]) -> set[str]:
        """Env-file answers into the containers' states; the containers whose values changed.
        A first read that met a Docker outage: the container is read again on Docker's backoff."""
        changed, unread = fold_reads(self.containers.env_states, reads)
        self.reader.retry_later(unread)
        return changed

    def _poll_env_files(self, force: bool = False) -> None:
        if not self.timers.env_poll_due(force):
            return
        for container_id, desire in self.containers.desires.items():
            if desire.env_file and desire.status.running:
                self.docker.request_env_file(container_id, desire.env_file)

    # -- passes ------------------------------------------------------------------------

    def _full_pass(self, reason: str, yielding: bool = False) -> bool:
        """Relist Docker (reusing what an unchanged listing allows) and the agent.
        False when Docker could not be listed (what is known stays) or, `yielding`,
        when container events arrived meanwhile: the pass stops for them and is made
        again at the next batch without events, reusing the desires it built."""
        self.publisher.full_pass_begins()  # numbered before anything is listed
        if not self.timers.full_pending:  # not while Docker fails: its retries would list the agent for nothing
            self.primary.prefetch()  # the agent is listed beside Docker (taken by this batch's sync)
        try:
            read = self.pass_reader.read(yielding)
        except DockerUnavailable as error:  # DockerUnreachable too: what is known stays
            return self._full_pass_failed(reason, error)
        if read is None:
            return self._give_way(reason)
        desires, listed, unread = read.desires, read.listed, read.unread
        self.timers.full_pass_done()
        self.reader.retry &= set(desires)
        self.reader.retry_later(unread)
        self.builder.forget_all_but(set(desires))
        for warning in self.containers.replace_all(desires, listed):
            logger.warning(warning)
        self.primary.new_pass()
        self.probe_feed.everything_changed()
        return True

    def _give_way(self, reason: str) -> bool:
        self.primary.drop_listing()
        logger.debug("full pass ({}) gives way to container events", reason)
        return False

    def _full_pass_failed(self, reason: str, error: DockerUnavailable) -> bool:
        self.primary.drop_listing()
        logger.warning("{}; full pass retried in {:.1f}s", error, self.timers.docker_failed(reason))
        return False

    def _verify(self, container_id: str) -> set[str]:
        """Its records are written again whatever the agent was last known to hold."""
        known = self.containers.get(container_id)
        if known is None:
            return set()
        self.primary.forget([s.id for s in known.services])
        return {s.id for s in known.services}

    def _targeted(self, refresh: set[str], retries: bool, pending: Collection[str] = (),
                  verify: set[str] | None = None, early: Mapping[str, Any] | None = None) -> set[str]:
        """A pass over the containers the batch touched (and those due for another read).
        A burst (more containers than one window of inspects) is written window by window:
        when the first answer of a window comes, the IDs changed so far (and `pending`,
        the batch's deaths) that are still desired and are default IDs of this host are
        synced, while that window's other inspects go on. The rest waits for the batch's
        last sync, once every container of it was read: a later one may claim the ID too
        (a container replaced under its name is re-registered, never removed first, as
        `apply` leaves no gap; a custom ID two containers claim goes to the newer one only,
        never first to the one read first; a default ID has one container, by name). Each
        container of `verify` read here is verified (`_verify`) before any sync, and
        taken out of it. `early`: inspects sent when the events were read, by container."""
        if retries:
            refresh |= self.reader.retry
        affected: set[str] = set()
        unsynced = set(pending)
        unread: list[tuple[str, DockerUnavailable]] = []
        pipelined = len(refresh) > READ_WINDOW
        early = {cid: later for cid, later in (early or {}).items() if cid in refresh}
        for n, (container_id, inspected) in enumerate(self.reader.answers(sorted(refresh), early=early)):
            if pipelined and n % READ_WINDOW == 0 and self.primary.actual is not None:
                ready = {i for i in unsynced if i in self.containers.desired.by_id
                         and default_id_host(i) == self.primary.hostname.host}
                if ready:
                    self._sync_primary(ready)
                    self.builder.settle()  # this window's first digests, while the next is inspected
                    unsynced -= ready
            changed = self._refresh(container_id, inspected, unread)
            if verify is not None and container_id in verify:
                verify.discard(container_id)
                changed |= self._verify(container_id)
            affected |= changed
            unsynced |= changed
        self.reader.retry_later(unread)
        return affected

    def _refresh(self, container_id: str, inspected: Any, unread: list[tuple[str, DockerUnavailable]]) -> set[str]:
        """Look at one container again; the service IDs that may have changed."""
        try:
            built = self._build(container_id, inspected=inspected)
        except DockerUnavailable as error:
            unread.append((container_id, error))
            return set()
        self.reader.retry.discard(container_id)
        if built is True:
            return set()  # keep its last desire
        return self._set_desire(container_id, built if isinstance(built, ContainerDesire) else None)

    def _build(self, container_id: str, key: str = "", inspected: Any = NOT_FETCHED) -> ContainerDesire | None | bool:
        """The container's new desire; None when it is gone; True to keep its last one."""
        if inspected is NOT_FETCHED:
            inspected = self.docker.inspect(container_id)
        elif isinstance(inspected, DockerUnavailable):
            raise inspected
        if inspected is None:
            return None
        self.timers.docker_backoff.succeeded()
        state = section(inspected, "State")
        path = self.builder.env_file_path(inspected) if state.get("Running") else ""
        env = self.containers.env_states.get(container_id)
        if path and (env is None or env.path != path):
            name = str(inspected.get("Name") or "").lstrip("/")
            env = self.containers.env_states[container_id] = EnvFileState(path, name)
            self.docker.request_env_file(container_id, path)
        try:
            return self.builder.build(inspected, env, key)
        except DesireUnavailable as error:
            logger.debug("container {}: {}; its last known services stay", container_id[:12], error)
            return True

    def _set_desire(self, container_id: str, new: ContainerDesire | None) -> set[str]:
        self.pass_reader.touch(container_id)  # an event saw it since: a resumed pass reads it again
        old = self.containers.put(container_id, new)
        self._dirty = self._dirty or old != new
        if new is None:
            self.builder.forget(container_id)
        affected, warnings = self.containers.desired.update(old, new)
        if old is not None and old.keep_existing and (new is None or not new.keep_existing):
            affected |= self.primary.records_of(container_id)  # kept on its death; they go now
        for warning in warnings:
            logger.warning(warning)
        # An ID that changed hands moves its checks: every claimant's are handed over again.
        self.probe_feed.changed({container_id, *self.containers.desired.claimants(affected)})
        return affected

    def _sync_primary(self, scope: set[str] | None) -> SyncResult:
        relisting = self.primary.actual is None
        result = self.primary.sync(self.containers.desired.by_id, self.containers.desires.values(), scope,
                                   self.containers.kept)
        self.builder.report_held()  # after the writes: the mappings' log lines
        if not result.reached:
            return result
        self.metrics.applied("consul", len(result.registered), len(result.deregistered), result.failed)
        if relisting:  # reaps may have been noticed
            self.probe_feed.everything_changed()
        self.probe_feed.hand_over(self.containers, self.primary)
        self.probes.report_now({s.id for s in result.registered})
        if result.scripts_refused and self.builder.without_agent_scripts():
            logger.warning("the agent refused a check that runs a command (script checks disabled): from now on "
                           "SERVICE_CHECK_DOCKER commands are run by this daemon, SERVICE_CHECK_SCRIPT is dropped")
            self.remap_everything()
            self.post(ScriptsRefused())
        return result

    def remap_everything(self) -> None:
        """The mapping's settings changed: the next full pass maps every container again."""
        self.builder.reset_reports()
        self.primary.refused.clear()
        self.containers.forget_listing_keys()

    # -- what others read ------------------------------------------------------------------

    def _publish(self, full_pass: bool, changed: bool) -> None:
        """full_pass: one just made its writes and drains (the subscribers relist; its number is done)."""
        published = self.publisher.publish(
            desires=self.containers.desires, desired=self.containers.desired.by_id, actual=self.primary.actual,
            kept=self.primary.kept_records(self.containers.kept),
            last_full_pass=self.timers.last_full_pass, primary_error=self.primary.last_error, changed=changed,
            full_pass=full_pass, draining=self.drainer.draining(),
            restart_candidates=frozenset(self.containers.with_restart))
        if published:
            self._dirty = False
            self.metrics.services_managed(len(self.containers.desired.by_id))
