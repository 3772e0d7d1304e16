"""The restart watcher: one thread that restarts a container whose checks keep
failing, as its SERVICE_CHECK_RESTART_* keys ask (the counting is tracker.py's).

It is offered each snapshot the loop publishes (a SnapshotSubscriber: it keeps
the latest, never queues) and reads the agent's check results itself, one
filtered read per round of due samples (with the maintenance of their services),
rounds at least a second apart. Only what the snapshot shows as this
daemon's is watched: a container of Docker's filtered listing, running, and
its services that the agent holds with this daemon's marker for that very
container; a check counts only when the agent holds it for that service. So a
container can only ever cause its own restart. A service in maintenance gives
no result: `docker stop` of a container whose app stops answering at SIGTERM
puts it in maintenance (the daemon's drain) before its check fails, and an
operator's maintenance is theirs. Each restart runs on a thread of its own,
bounded by the container's stop timeout, one per container at most, and reads
the agent once more just before it: the services still this daemon's for that
container, and not in maintenance, or no restart.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from loguru import logger

from consul_reg.core.errors import DockerUnavailable, RegistryError
from consul_reg.core.protocols import CheckStatuses, ContainerRestarts, RestartMetrics
from consul_reg.core.records import Owner
from consul_reg.core.snapshot import Snapshot
from consul_reg.core.text import printable
from consul_reg.restarts.tracker import Decision, Tracker, Watched

IDLE_SECONDS = 30.0  # the longest sleep when no sample is due
START_SECONDS = 60.0  # allowed for a container's start, beyond its stop timeout
OUTPUT_SHOWN = 300  # characters of a check's output in the log line


def watched(snapshot: Snapshot, owner: Owner) -> dict[str, Watched]:
    """The containers of `snapshot` whose restarts are watched (see the module's docstring)."""
    actual = snapshot.actual
    if actual is None:  # the agent's records are not known now: nothing is known to be ours
        return {}
    found: dict[str, Watched] = {}
    for container_id in snapshot.restart_candidates:
        desire = snapshot.desires.get(container_id)
        if desire is None:
            continue
        status = desire.status
        if container_id in snapshot.draining:  # being stopped: its failing checks are its shutdown
            continue
        if not status.running or status.paused or status.started_at <= 0:
            continue
        policies = tuple((service.id, service.restart) for service in desire.services
                         if service.restart is not None and service.id in actual
                         and actual[service.id].owned_by(owner) and actual[service.id].container_id == container_id)
        if policies:
            found[container_id] = Watched(container_id, desire.container_name, status.started_at,
                                          status.ran_before, status.stop_timeout, policies, status.health)
    return found


class RestartWatcher:
    def __init__(self, agent: CheckStatuses, docker: ContainerRestarts, owner: Owner, metrics: RestartMetrics,
                 backoff: float, backoff_max: float, clock: Callable[[], float] = time.time) -> None:
        self._agent = agent
        self._docker = docker
        self._owner = owner
        self._metrics = metrics
        self._clock = clock
        self.tracker = Tracker(backoff, backoff_max)
        self._latest: Snapshot | None = None
        self._offered_candidates = False  # the last snapshot offered named a container with a policy
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._viewed_snapshot: Snapshot | None = None  # the snapshot _view was scanned from
        self._view: dict[str, Watched] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: frozenset[str] = frozenset()  # for the debug line when it changes
        # restarts over: (ID, when, whether one was asked of Docker)
        self._done: queue.SimpleQueue[tuple[str, float, bool]] = queue.SimpleQueue()

    # -- SnapshotSubscriber -------------------------------------------------------

    def offer(self, snapshot: Snapshot, relist: bool = False) -> None:
        """Woken only when this snapshot or the one before names a container with a restart
        policy: the one after the last such still wakes it, to let go of what it watched."""
        with self._lock:
            self._latest = snapshot
            wake = bool(snapshot.restart_candidates) or self._offered_candidates
            self._offered_candidates = bool(snapshot.restart_candidates)
        if wake:
            self._wake.set()

    # -- the thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="check-restarts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before the round: a snapshot offered during it wakes the next at once
            try:
                wait = self.step()
            except Exception:  # never the end of the watcher: said, and tried again later
                logger.exception("check restarts: a round failed; trying again in {:g}s", IDLE_SECONDS)
                wait = IDLE_SECONDS
            self._wake.wait(wait)

    def step(self) -> float:
        """One round: take the latest snapshot, read the due samples, restart what must be.
        The seconds until the next round."""
        with self._lock:
            snapshot = self._latest
        now = self._clock()
        while not self._done.empty():
            self.tracker.restarted(*self._done.get_nowait())
        if snapshot is not None:
            if snapshot is not self._viewed_snapshot:  # a wake by the clock reuses the last scan
                self._viewed_snapshot, self._view = snapshot, watched(snapshot, self._owner)
            view = self._view
            if frozenset(view) != self._watched:
                self._watched = frozenset(view)
                logger.debug("check restarts: watching {} containers", len(view))
            self.tracker.watch(view, now)
        due = self.tracker.due(now)
        if due:
            try:
                read = self._agent.check_statuses(due, self.tracker.services(due))
            except RegistryError as error:
                logger.debug("check restarts: could not read the agent's checks: {}", error)
                self.tracker.read_failed(now)
                return min(IDLE_SECONDS, 5.0)
            for decision in self.tracker.results(read.checks, due, now, read.maintenance):
                try:  # each on its own: one that fails leaves the others made
                    self._act(decision)
                except Exception:
                    logger.exception("check restarts: could not act on container {}",
                                     decision.container.container_id[:12])
        return self.tracker.wake_in(self._clock(), IDLE_SECONDS)

    def _act(self, decision: Decision) -> None:
        container = decision.container
        what = (f"check {printable(decision.check_id, 120)} of {printable(decision.service_id, 120)} failed "
                f"{decision.failures} times in a row ({decision.status}: "
                f"{printable(decision.output, OUTPUT_SHOWN, one_line=True) or 'no output'})")
        name = f"{printable(container.name, 120)} ({container.container_id[:12]})"
        if decision.kind == "held":
            logger.warning("not restarting container {} yet: {}; the backoff holds it {:.0f}s more",
                           name, what, decision.next_delay)
            return
        logger.bind(action="check-restart", container_id=container.container_id).warning(
            "restarting container {}: {}; restart {} in a row, the next no sooner than {:g}s after it",
            name, what, decision.in_a_row, decision.next_delay)
        try:
            threading.Thread(target=self._restart, args=(container,), name="check-restart", daemon=True).start()
        except Exception as error:  # no thread (the host's limit): no restart, and never in flight forever
            logger.error("could not restart container {}: {}", name, printable(error, 300))
            self._metrics.check_restart("failed")
            self._done.put((container.container_id, self._clock(), False))

    def _restart(self, container: Watched) -> None:
        asked = False
        try:
            if self._still_ours(container):
                asked = True
                self._docker.restart(container.container_id, container.stop_timeout,
                                     container.stop_timeout + START_SECONDS)
                self._metrics.check_restart("restarted")
        except DockerUnavailable as error:
            logger.error("could not restart container {}: {}", printable(container.name, 120), error)
            self._metrics.check_restart("failed")
        except RegistryError as error:
            logger.warning("not restarting container {}: could not read the agent just before: {}",
                           printable(container.name, 120), error)
            self._metrics.check_restart("failed")
        except Exception as error:  # a bug here must not keep the container marked in flight
            logger.exception("could not restart container {}: {}", printable(container.name, 120),
                             printable(error, 300))
            self._metrics.check_restart("failed")
        finally:  # the tracker is the watcher thread's alone: it is told on its next round
            self._done.put((container.container_id, self._clock(), asked))
            self._wake.set()

    def _still_ours(self, container: Watched) -> bool:
        """One live read of the agent just before a restart (the snapshot may be older than a
        `docker stop`'s drain or another writer's registration): its services still this
        daemon's records of that container, and none of them in maintenance."""
        service_ids = [service_id for service_id, _ in container.policies]
        held = self._agent.services_matching(service_ids)
        ours = [s for s in service_ids if (record := held.get(s)) is not None
                and record.owned_by(self._owner) and record.container_id == container.container_id]
        name = f"{printable(container.name, 120)} ({container.container_id[:12]})"
        if not ours:
            logger.info("not restarting container {}: the agent no longer holds its services as this "
                        "daemon's for it", name)
            return False
        maintenance = self._agent.check_statuses((), ours).maintenance
        if maintenance:
            logger.info("not restarting container {}: {} in maintenance (being stopped, or an operator's)",
                        name, ", ".join(sorted(printable(s, 120) for s in maintenance)))
            return False
        return True
