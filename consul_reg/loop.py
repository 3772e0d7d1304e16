"""The sync loop: the one owner of the daemon's mutable state.

Other threads (Docker's event reader, the agent watch, heartbeat senders,
env-file readers, signal handlers) only put messages in `inbox`. The loop
takes everything queued at once, lets the router turn it into actions, runs
every per-event action, then at most one pass: "full" (relist Docker and the
agent) when asked or due, else one over the containers the batch touched.
After each batch it publishes an immutable Snapshot (status endpoint,
mirrors). Level-triggered, as a Kubernetes controller: events are hints,
what Docker and the agent hold is the truth.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Iterable, Protocol, Union

from loguru import logger

from consul_reg.backoff import Backoff, Clock
from consul_reg.desires import DesireBuilder, DesireUnavailable
from consul_reg.docker_source import DockerUnavailable, DockerUnreachable, listing_key
from consul_reg.drain import Drainer
from consul_reg.env_files import EnvFileRead, EnvFileReader, EnvFileState, fold
from consul_reg.heartbeat import ProbeScheduler
from consul_reg.labels import printable
from consul_reg.metrics import Metrics
from consul_reg.mirrors import MirrorWorker
from consul_reg.reading import NOT_FETCHED, Reader
from consul_reg.model import ContainerDesire, ContainerStatus, Service, keeps_records
from consul_reg.primary import Primary, SyncResult
from consul_reg.reconcile import DesiredServices
from consul_reg.router import AGENT_BACK, SCRIPTS_REFUSED, START, Hint, route
from consul_reg.snapshot import Snapshot, freeze

Message = Union[Hint, EnvFileRead]
IDLE_WAIT_SECONDS = 3600.0
HEALTH_RECHECK_SECONDS = 0.5
# A container whose health flaps is read again at most once in this long (besides the read at
# each of its events): the recheck only corrects a status read too early.
HEALTH_RECHECK_MIN_INTERVAL = 2.0
IO_WORKERS = 4  # Docker inspects and agent writes of one batch in flight at once


class DockerAPI(Protocol):
    def list_containers(self) -> list[dict[str, Any]]: ...
    def inspect(self, container_id: str) -> dict[str, Any] | None: ...


class Loop:
    def __init__(self, *, deregister_mode: str, resync_seconds: float, env_file_interval: float,
                 retry_interval: float, docker: DockerAPI, primary: Primary, builder: DesireBuilder,
                 probes: ProbeScheduler, drainer: Drainer, mirrors: list[MirrorWorker],
                 env_reader: EnvFileReader | None, metrics: Metrics, clock: Clock = time.monotonic,
                 reload_token: Callable[[], None] = lambda: None,
                 agent_identity: Callable[[], Any] = lambda: None,
                 on_agent_changed: Callable[[Any], None] = lambda info: None, io_workers: int = IO_WORKERS) -> None:
        self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.deregister_mode = deregister_mode
        self.resync_seconds = resync_seconds
        self.env_file_interval = env_file_interval
        self.docker = docker
        self.primary = primary
        self.builder = builder
        self.probes = probes
        self.drainer = drainer
        self.mirrors = mirrors
        self.env_reader = env_reader
        self.metrics = metrics
        self.clock = clock
        self._reload_token = reload_token
        self._agent_identity = agent_identity
        self._on_agent_changed = on_agent_changed
        self.desires: dict[str, ContainerDesire] = {}
        self.desired = DesiredServices()
        self.env_states: dict[str, EnvFileState] = {}
        self.docker_backoff = Backoff(retry_interval, clock=clock)
        self.full_pending = ""  # a full pass was asked but Docker failed: retried on its backoff
        # Podman sends health_status before the new status can be read (an inspect at the event
        # saw the old one about 1 time in 12): such a container is read once more, shortly after.
        self.health_rechecks: dict[str, float] = {}  # container ID -> when (one pending per container)
        self._rechecked: dict[str, float] = {}  # container ID -> when it was last read again (recent ones)
        self.last_full_pass: float | None = None
        self.snapshot = Snapshot()
        self._generation = 0
        self._next_env_poll = 0.0
        self._frozen_actual: Any = None
        self._dirty = False  # desires changed since the last snapshot
        self._probe_dirty: set[str] = set()  # containers whose daemon-owned checks changed
        self._probes_stale = False  # hand the scheduler everything (after a full pass or a relist)
        # Kept up to date with `desires`, so that no batch walks every container.
        self._kept: set[str] = set()  # containers whose records stay after their death (-deregister on-success)
        self._with_env_file: set[str] = set()
        # The only other threads that serve the loop: they make the Docker and agent calls of
        # a batch overlap, and only return answers; the loop applies them itself, in order.
        self.io = ThreadPoolExecutor(io_workers, thread_name_prefix="loop-io") if io_workers > 1 else None
        self.primary.io = self.io
        self.reader = Reader(lambda container_id: self.docker.inspect(container_id), self.io, retry_interval, clock)

    @property
    def retry_containers(self) -> set[str]:
        """Containers that could not be read: looked at again on the reader's backoff."""
        return self.reader.retry

    @retry_containers.setter
    def retry_containers(self, containers: set[str]) -> None:
        self.reader.retry = containers

    # -- any thread ---------------------------------------------------------------

    def post(self, message: Message) -> None:
        """Queue a message for the loop. Safe from any thread and from signal
        handlers (SimpleQueue.put is reentrant)."""
        self.inbox.put(message)

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        self.post(Hint("", START))
        while True:
            batch = self._next_batch(self.seconds_until_due())
            try:
                if not self.handle(batch):
                    if self.io is not None:
                        self.io.shutdown(wait=False, cancel_futures=True)
                    return
            except Exception:  # a bug must cost one pass, never the daemon
                self.primary.drop_prefetch()
                logger.exception("unexpected error; everything is relisted at the next pass")
                self.full_pending = "recovering from an unexpected error"
                self.docker_backoff.failed()

    def _next_batch(self, timeout: float) -> list[Message]:
        try:
            batch = [self.inbox.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while True:  # take everything already queued: one pass handles a burst
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                return batch

    def seconds_until_due(self) -> float:
        """Until the loop must wake: a full pass, a retry, a drain timeout, an env-file poll, a health recheck."""
        deadlines = [d for d in (self._full_pass_due_at(), self.drainer.next_deadline()) if d is not None]
        if self.primary.backoff.retry_at is not None:
            deadlines.append(self.primary.backoff.retry_at)
        if self.full_pending and self.docker_backoff.retry_at is not None:
            deadlines.append(self.docker_backoff.retry_at)
        if self.reader.due_at() is not None:
            deadlines.append(self.reader.due_at())  # type: ignore[arg-type]
        if self.env_reader is not None and self._with_env_file:
            deadlines.append(self._next_env_poll)
        if self.health_rechecks:
            deadlines.append(min(self.health_rechecks.values()))
        return min(deadlines) - self.clock() if deadlines else IDLE_WAIT_SECONDS

    def _full_pass_due_at(self) -> float | None:
        if self.resync_seconds > 0 and self.last_full_pass is not None:
            return self.last_full_pass + self.resync_seconds
        return None

    def handle(self, batch: list[Message]) -> bool:
        """One batch: every action it asks for, then at most one pass. False: stop."""
        actions = route([m for m in batch if isinstance(m, Hint)])
        if actions.stop:
            return False
        started = self.clock()
        if actions.event_times:
            self.metrics.event_lag(max(0.0, time.time() - max(actions.event_times) / 1e9))
        if actions.reload_token:
            self._reload_token()
        if any(h.action == AGENT_BACK for h in batch if isinstance(h, Hint) and not h.container_id):
            self._agent_back()
        self.drainer.expire()
        for container_id in actions.restarted:
            self.primary.reaps.container_restarted(container_id)
        self.drainer.on_start(*actions.restarted)  # one read of the agent for all of them
        drains_left = self._drain(actions.drains)
        affected: set[str] = set()
        for container_id, exit_code in actions.deaths:
            self.drainer.on_die(container_id)
            affected |= self._mark_dead(container_id, exit_code)
        rechecks = self._due_rechecks(started, actions.health_changed)
        refresh = set(actions.refresh) | rechecks | self._fold_env_reads(m for m in batch if isinstance(m, EnvFileRead))
        if actions.missing_checks:
            logger.info("the agent lost checks of {}: listing it again", ", ".join(sorted(actions.missing_checks)))
            self.primary.relist()
        # A container that (re)starts after being seen dead: its records are verified,
        # whatever the cache says (the agent may have reaped or lost them meanwhile).
        verify = {cid for cid in actions.restarted
                  if cid not in self.desires or not self.desires[cid].status.running}
        full_reason = actions.full_reason or self._full_reason_due()
        if self.reader.ready() and not full_reason:
            refresh |= self.retry_containers
        kind = "full" if full_reason else "targeted"
        if full_reason and self._full_pass(full_reason):
            affected = set()  # a full pass plans everything
        else:
            kind = "targeted"
            unread: list[tuple[str, DockerUnavailable]] = []
            for container_id, inspected in self.reader.answers(sorted(refresh)):
                affected |= self._refresh(container_id, inspected, unread)
            self.reader.retry_later(unread)
        for container_id in verify:
            known = self.desires.get(container_id)
            if known is not None:
                self.primary.forget([s.id for s in known.services])
                affected |= {s.id for s in known.services}
        for container_id in actions.report_status | rechecks:
            known = self.desires.get(container_id)
            if known is not None:
                self.probes.report_container_now(container_id, known.status)
        self._poll_env_files(force=kind == "full")
        result = self._sync_primary(None if kind == "full" else affected)
        self.primary.drop_prefetch()  # taken by the sync, unless it needed no listing
        self._drain(drains_left)
        self._publish(relist_mirrors=kind == "full", changed=self._dirty or kind == "full" or bool(
            result.registered or result.deregistered))
        if kind == "full" or affected:
            self.metrics.reconcile(kind, self.clock() - started)
        if kind == "full":  # its writes are made and its snapshot published (the mirrors take it on their threads)
            logger.debug("full pass done ({}): {} containers", full_reason, len(self.desires))
        return True

    def _due_rechecks(self, now: float, health_changed: Iterable[str]) -> set[str]:
        """The health rechecks due now; each health_status event asks for one, at least
        HEALTH_RECHECK_SECONDS after it and HEALTH_RECHECK_MIN_INTERVAL after the
        container's last (a pending one moves later, never earlier: one per container)."""
        due = {cid for cid, at in self.health_rechecks.items() if at <= now}
        for container_id in due:
            del self.health_rechecks[container_id]
            self._rechecked[container_id] = now
        self._rechecked = {cid: at for cid, at in self._rechecked.items() if at + HEALTH_RECHECK_MIN_INTERVAL > now}
        for container_id in health_changed:
            at = max(now + HEALTH_RECHECK_SECONDS, self._rechecked.get(container_id, -HEALTH_RECHECK_MIN_INTERVAL)
                     + HEALTH_RECHECK_MIN_INTERVAL)
            self.health_rechecks[container_id] = max(at, self.health_rechecks.get(container_id, at))
        return due

    def _full_reason_due(self) -> str:
        if self.full_pending and self.docker_backoff.ready():
            return self.full_pending
        due_at = self._full_pass_due_at()
        if due_at is not None and self.clock() >= due_at:
            return "resync"
        return ""

    # -- per-event actions ------------------------------------------------------------

    def _agent_back(self) -> None:
        info = self._agent_identity()
        if info is None:
            return
        self.primary.agent_changed(info)
        self._on_agent_changed(info)

    def _drain(self, drains: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """Maintenance on for the containers being stopped. The ones left when the agent's
        records are not known (it is listed again: it came back) are done after the sync."""
        if self.primary.actual is None:
            return drains
        for container_id, signal in drains:
            known = self.desires.get(container_id)
            if known is not None:
                self.drainer.on_kill(known.container_name, container_id, self._registered_ids(known), signal,
                                     known.stop_signal)
        return ()

    def _registered_ids(self, desire: ContainerDesire) -> tuple[str, ...]:
        """The container's services whose records in the agent are this daemon's, for
        this container: a drain never touches a record someone else holds."""
        actual = self.primary.actual or {}
        return tuple(s.id for s in desire.services if (record := actual.get(s.id)) is not None
                     and record.owned_by(self.primary.hostname) and record.container_id == desire.container_id)

    def _mark_dead(self, container_id: str, exit_code: str) -> set[str]:
        """A `die` event is itself proof the process ended. Inspecting now would
        wait ~100 ms on dockerd's lock while it tears the network down."""
        known = self.desires.get(container_id)
        if known is None:
            return set()
        dead = replace(known, services=(), status=ContainerStatus(running=False), listing_key="",
                       keep_existing=keeps_records(self.deregister_mode, exit_code))
        return self._set_desire(container_id, dead)

    def _fold_env_reads(self, reads: Iterable[EnvFileRead]) -> set[str]:
        """Env-file answers into the containers' states; the containers whose values changed."""
        changed: set[str] = set()
        unread: list[tuple[str, DockerUnavailable]] = []
        for read in reads:
            state = self.env_states.get(read.container_id)
            if state is None or state.path != read.path:
                continue  # the container went, or now names another file
            if read.docker_down and not state.read:
                # Nothing asks for a file never read (the poll follows desires): the container is
                # looked at again on Docker's backoff, and that look asks for the file again.
                del self.env_states[read.container_id]
                unread.append((read.container_id, DockerUnavailable(f"env file {printable(read.path)}: {read.error}")))
                continue
            new_state, values_changed, warnings = fold(state, read)
            self.env_states[read.container_id] = new_state
            name = new_state.container_name or read.container_id[:12]
            for warning in warnings:
                logger.bind(container=name).warning("container {}: {}", name, warning)
            if values_changed:
                changed.add(read.container_id)
        self.reader.retry_later(unread)
        return changed

    def _poll_env_files(self, force: bool = False) -> None:
        if self.env_reader is None or (not force and self.clock() < self._next_env_poll):
            return
        self._next_env_poll = self.clock() + self.env_file_interval
        for container_id, desire in self.desires.items():
            if desire.env_file and desire.status.running:
                self.env_reader.request(container_id, desire.env_file)

    # -- passes ------------------------------------------------------------------------

    def _full_pass(self, reason: str) -> bool:
        """Relist Docker (reusing what an unchanged listing allows) and the agent.
        False when Docker could not be listed: what is known stays."""
        if not self.full_pending:  # not while Docker fails: its retries would list the agent for nothing
            self.primary.prefetch()  # the agent is listed beside Docker (taken by this batch's sync)
        try:
            summaries = self.docker.list_containers()
        except DockerUnavailable as error:
            self.primary.drop_prefetch()
            self.full_pending = reason
            logger.warning("{}; full pass retried in {:.1f}s", error, self.docker_backoff.failed())
            return False
        entries: list[tuple[str, str, ContainerDesire | None, bool]] = []  # (ID, key, known, reusable)
        for summary in summaries:
            container_id = str(summary.get("Id") or "")
            if not container_id:
                continue
            key = listing_key(summary)
            known = self.desires.get(container_id)
            # Podman's listing never shows health: a container with a healthcheck is read again.
            blind = known is not None and known.status.health and "(" not in str(summary.get("Status") or "")
            entries.append((container_id, key, known,
                            known is not None and bool(known.listing_key) and known.listing_key == key and not blind))
        answers = self.reader.answers([cid for cid, _, _, reusable in entries if not reusable])
        desires: dict[str, ContainerDesire] = {}
        unread: list[tuple[str, DockerUnavailable]] = []
        for container_id, key, known, reusable in entries:
            if reusable:
                desires[container_id] = known  # type: ignore[assignment]
                continue
            answered_for, inspected = next(answers)  # the answers come in the entries' order
            assert answered_for == container_id
            try:
                built = self._build(container_id, key, inspected)
            except DockerUnreachable as error:
                self.primary.drop_prefetch()
                self.full_pending = reason
                logger.warning("{}; full pass retried in {:.1f}s", error, self.docker_backoff.failed())
                return False
            except DockerUnavailable as error:  # about this container only: the others carry on
                unread.append((container_id, error))
                built = True
            if built is True:
                built = known
            if built is not None:
                desires[container_id] = built
        listed = {str(summary.get("Id") or "") for summary in summaries}
        self.docker_backoff.succeeded()
        self.full_pending = ""
        self.retry_containers &= set(desires)
        self.reader.retry_later(unread)
        self.desires = desires
        self._reindex()
        self.builder.forget_all_but(set(desires))
        self.env_states = {cid: s for cid, s in self.env_states.items() if cid in listed}
        for warning in self.desired.replace_all(desires.values()):
            logger.warning(warning)
        self.primary.new_pass()
        self.last_full_pass = self.clock()
        self._probes_stale = True
        return True

    def _refresh(self, container_id: str, inspected: Any, unread: list[tuple[str, DockerUnavailable]]) -> set[str]:
        """Look at one container again; the service IDs that may have changed."""
        try:
            built = self._build(container_id, inspected=inspected)
        except DockerUnavailable as error:
            unread.append((container_id, error))
            return set()
        self.retry_containers.discard(container_id)
        if built is True:
            return set()  # keep its last desire
        return self._set_desire(container_id, built)

    def _build(self, container_id: str, key: str = "", inspected: Any = NOT_FETCHED) -> ContainerDesire | None | bool:
        """The container's new desire; None when it is gone; True to keep its last one."""
        if inspected is NOT_FETCHED:
            inspected = self.docker.inspect(container_id)
        elif isinstance(inspected, DockerUnavailable):
            raise inspected
        if inspected is None:
            return None
        self.docker_backoff.succeeded()
        state = inspected.get("State") if isinstance(inspected.get("State"), dict) else {}
        path = self.builder.env_file_path(inspected) if state.get("Running") else ""
        env = self.env_states.get(container_id)
        if path and self.env_reader is not None and (env is None or env.path != path):
            name = str(inspected.get("Name") or "").lstrip("/")
            env = self.env_states[container_id] = EnvFileState(path, name)
            self.env_reader.request(container_id, path)
        try:
            return self.builder.build(inspected, env, key)
        except DesireUnavailable as error:
            logger.debug("container {}: {}; its last known services stay", container_id[:12], error)
            return True

    def _set_desire(self, container_id: str, new: ContainerDesire | None) -> set[str]:
        old = self.desires.get(container_id)
        self._dirty = self._dirty or old != new
        if new is None:
            self.desires.pop(container_id, None)
            self.env_states.pop(container_id, None)
            self.builder.forget(container_id)
        else:
            self.desires[container_id] = new
        self._index(container_id, new)
        affected, warnings = self.desired.update(old, new)
        if old is not None and old.keep_existing and (new is None or not new.keep_existing):
            affected |= self.primary.records_of(container_id)  # kept on its death; they go now
        for warning in warnings:
            logger.warning(warning)
        self._probe_dirty.add(container_id)
        self._probe_dirty |= self.desired.claimants(affected)  # an ID that changed hands moves its checks
        return affected

    def _index(self, container_id: str, desire: ContainerDesire | None) -> None:
        for members, member in ((self._kept, desire is not None and desire.keep_existing),
                                (self._with_env_file, desire is not None and bool(desire.env_file))):
            if member:
                members.add(container_id)
            else:
                members.discard(container_id)

    def _reindex(self) -> None:
        """After `desires` was replaced as a whole."""
        self._kept = {cid for cid, d in self.desires.items() if d.keep_existing}
        self._with_env_file = {cid for cid, d in self.desires.items() if d.env_file}

    def _probed(self, services: Iterable[Service], container_id: str) -> list[Service]:
        """Services whose daemon-owned checks are reported: only those the container
        won (a losing claimant never drives the winner's checks), not the reaped
        ones, nor the ones the agent refused (it has no such checks)."""
        return [s for s in services if s.id not in self.primary.reaps and s.id not in self.primary.refused
                and self.desired.holds(container_id, s.id)]

    def _update_probes(self) -> None:
        """After the primary's writes (a check is reported once its service is
        registered): the changed containers, or everything after a relist."""
        if self._probes_stale:
            self.probes.replace_all({cid: self._probed(d.services, cid) for cid, d in self.desires.items()},
                                    {cid: d.status for cid, d in self.desires.items()})
        else:
            for container_id in self._probe_dirty:
                known = self.desires.get(container_id)
                if known is None:
                    self.probes.set_container(container_id, (), ContainerStatus(running=False))
                else:
                    self.probes.set_container(container_id, self._probed(known.services, container_id),
                                              known.status)
        self._probes_stale = False
        self._probe_dirty.clear()

    def _sync_primary(self, scope: set[str] | None) -> SyncResult:
        relisting = self.primary.actual is None
        result = self.primary.sync(self.desired.by_id, self.desires.values(), scope, self._kept)
        if not result.reached:
            return result
        self.metrics.applied("consul", len(result.registered), len(result.deregistered), result.failed)
        self._probes_stale = self._probes_stale or relisting  # reaps may have been noticed
        self._update_probes()
        self.probes.report_now({s.id for s in result.registered})
        if result.scripts_refused:
            self._scripts_refused()
        return result

    def _scripts_refused(self) -> None:
        checks = self.builder.settings.checks
        if not checks.agent_runs_scripts:
            return
        logger.warning("the agent refused a check that runs a command (script checks disabled): from now on "
                       "SERVICE_CHECK_DOCKER commands are run by this daemon, SERVICE_CHECK_SCRIPT is dropped")
        self.builder.settings = replace(self.builder.settings, checks=replace(checks, agent_runs_scripts=False))
        self.remap_everything()
        self.post(Hint("", SCRIPTS_REFUSED))

    def remap_everything(self) -> None:
        """The mapping's settings changed: the next full pass maps every container again."""
        self.builder.reset_reports()
        self.primary.refused.clear()
        self.desires = {cid: replace(d, listing_key="") for cid, d in self.desires.items()}
        self._reindex()

    # -- what others read ------------------------------------------------------------------

    def _publish(self, relist_mirrors: bool, changed: bool) -> None:
        unchanged = (not changed and self.snapshot.generation
                     and (self.primary.actual is None) == (self.snapshot.actual is None)
                     and self.primary.last_error == self.snapshot.primary_error)
        if unchanged:
            return
        self._generation += 1
        self._dirty = False
        actual = self.primary.actual
        if actual is None:
            self._frozen_actual = None
        elif changed or self._frozen_actual is None:
            self._frozen_actual = freeze(actual)
        kept_ids = self._kept
        kept = tuple(Service(id=s.id, name=s.name, address=s.address, port=s.port, container_id=s.container_id)
                     for s in ((actual or {}).values() if kept_ids else ())
                     if s.container_id in kept_ids and s.owned_by(self.primary.hostname))
        self.snapshot = Snapshot(
            generation=self._generation,
            desires=freeze(self.desires),
            desired=freeze(self.desired.by_id),
            actual=self._frozen_actual,
            kept=kept,
            last_full_pass=self.last_full_pass,
            primary_error=self.primary.last_error,
        )
        self.metrics.services_managed(len(self.desired.by_id))
        for mirror in self.mirrors:
            mirror.offer(self.snapshot, relist=relist_mirrors)
