"""One scheduler for every TTL check the daemon owns.

A single thread keeps a heap of due times (no thread per check). Heartbeats
and Docker-health reports are computed from the container state the sync
loop last handed over; `exec` probes (CHECK_DOCKER run by the daemon) go to
a small worker pool, at most one in flight per check and `exec_per_container`
per container, because a command in a container can take seconds. Reports
go out on a few sender threads through the one Consul client. An update the
agent refuses because it does not know the check asks the sync loop to
re-register. Nothing here grows with uptime: state is per check, and
lateness goes to a callback (a fixed-size histogram).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from consul_reg.core.backoff import Clock
from consul_reg.core.errors import RegistryUnavailable
from consul_reg.core.records import ContainerStatus, DaemonProbe, Service
from consul_reg.probes.exec_slots import ExecSlots
from consul_reg.probes.load import LoadWatch

HEALTH_TO_STATUS = {
    # Docker health -> Consul status, for port-less workers' heartbeat...
    "heartbeat": {"healthy": "passing", "starting": "warning", "unhealthy": "critical"},
    # ...and for services with ports, where a starting container must get no traffic.
    "docker-health": {"healthy": "passing", "starting": "critical", "unhealthy": "critical"},
}
EXIT_CODE_TO_STATUS = {0: "passing", 1: "warning"}
MAX_OUTPUT = 4096
BUSY_RETRY_SECONDS = 0.2


class CheckReporter(Protocol):
    def update_check(self, check_id: str, status: str, output: str) -> None: ...


class CommandRunner(Protocol):
    def exec_in_container(self, container_id: str, command: str, timeout_seconds: float) -> tuple[int, str]: ...


@dataclass(frozen=True)
class _Task:
    check_id: str
    service_id: str
    probe: DaemonProbe


def _tasks_of(services: Iterable[Service]) -> dict[str, _Task]:
    return {check.check_id: _Task(check.check_id, service.id, check.daemon_probe)
            for service in services for check in service.checks if check.daemon_probe is not None}


class ProbeScheduler:
    def __init__(self, reporter: CheckReporter, runner: CommandRunner,
                 on_check_missing: Callable[[str, str], None], exec_workers: int = 4, senders: int = 8,
                 on_sent: Callable[[float | None], None] = lambda lateness: None,
                 exec_per_container: int = 2, clock: Clock = time.monotonic,
                 on_load: Callable[[float, float, bool], None] = lambda asked, served, overloaded: None) -> None:
        self._on_sent = on_sent
        self.load = LoadWatch(clock, on_load)
        self._reporter = reporter
        self._runner = runner
        self._on_check_missing = on_check_missing
        self._clock = clock
        self._tasks: dict[str, _Task] = {}
        self._by_container: dict[str, set[str]] = {}  # container ID -> its check IDs
        self._holder: dict[str, str] = {}  # check ID -> the one container whose task it is
        self._status: dict[str, ContainerStatus] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._due_at: dict[str, float] = {}  # the one live heap entry per check; older ones are stale
        self._sequence = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=exec_workers, thread_name_prefix="exec-probe")
        self._execs = ExecSlots(exec_workers, exec_per_container)  # per container, and long ones' share
        # Reports go out on 8 kept-alive connections (a Consul 1.8.7 agent served the most
        # TTL updates to 8 clients, BENCHMARKS.md; the client's pool holds 16): one slow answer from
        # the agent must not hold back every other check.
        self._outbox: queue.SimpleQueue[tuple[_Task, str, str, float | None] | None] = queue.SimpleQueue()
        self._senders = [threading.Thread(target=self._send_loop, name=f"ttl-sender-{n}", daemon=True)
                         for n in range(senders)]
        self._in_flight: set[str] = set()
        self._last_status: dict[str, str] = {}
        self._fresh: set[str] = set()  # checks not reported yet since they were added
        self._first: set[str] = set()  # their first report is on its way; the next is scheduled once it is sent
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def start(self) -> None:
        self._thread.start()
        for sender in self._senders:
            sender.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for _ in self._senders:
            self._outbox.put(None)

    # -- what the sync loop hands over -------------------------------------

    def set_container(self, container_id: str, services: Iterable[Service], status: ContainerStatus) -> None:
        """One container's daemon-owned checks and state. A check new to the
        scheduler reports at once (its state may have changed while nobody
        reported it), then at a random phase of its interval, so that many checks
        started together (a daemon restart) never stay in step as a herd."""
        wanted = _tasks_of(services)
        with self._wake:
            self._status[container_id] = status
            old = self._by_container.get(container_id, set())
            for check_id in old - set(wanted):
                self._drop(check_id)
            self._add(container_id, wanted)
            if wanted:
                self._by_container[container_id] = set(wanted)
            else:
                self._by_container.pop(container_id, None)
                self._status.pop(container_id, None)

    def replace_all(self, services_by_container: dict[str, list[Service]],
                    statuses: dict[str, ContainerStatus]) -> None:
        """Every container's checks at once (a full pass)."""
        with self._wake:
            for container_id in set(self._by_container) - set(services_by_container):
                for check_id in self._by_container.pop(container_id):
                    self._drop(check_id)
                self._status.pop(container_id, None)
        for container_id, services in services_by_container.items():
            if container_id in self._by_container or any(check.daemon_probe is not None
                                                         for service in services for check in service.checks):
                self.set_container(container_id, services, statuses.get(container_id, ContainerStatus()))
            # else: no check of the daemon's, before or now: nothing to hand over

    def report_now(self, service_ids: set[str]) -> None:
        """Just (re-)registered: the agent reset these services' TTL checks, report them again."""
        if not service_ids:
            return
        with self._wake:
            now = self._clock()
            due = [task.check_id for task in self._tasks.values()
                   if task.service_id in service_ids and task.probe.kind != "exec"]
            for check_id in due:
                self._schedule(check_id, now)
            if due:  # else the scheduler thread is not woken for nothing
                self._wake.notify()

    def report_container_now(self, container_id: str, status: ContainerStatus) -> None:
        """A health_status / pause event: report that container's checks right away. A container
        with none is not kept (set_container brings its state with its checks): a status kept for it
        would outlive it when its destroy event is lost, as no full pass drops it."""
        with self._wake:
            if container_id not in self._by_container:
                return
            self._status[container_id] = status
            now = self._clock()
            scheduled = False
            for check_id in self._by_container[container_id]:
                task = self._tasks.get(check_id)
                if task is not None and task.probe.kind != "exec":
                    self._schedule(check_id, now)
                    scheduled = True
            # Nothing due sooner: the thread's sleep stays right, and no start pays a wake
            # (one per start was ~6% of a burst's CPU).
            if scheduled:
                self._wake.notify()

    def check_count(self) -> int:
        return len(self._tasks)

    # -- internals (lock held) -----------------------------------------------

    def _add(self, container_id: str, wanted: dict[str, _Task]) -> None:
        now = self._clock()
        added = False
        for check_id, task in wanted.items():
            previous = self._holder.get(check_id)
            if previous is not None and previous != container_id:
                self._release(previous, check_id)  # the check moved: the other container no longer drops it
            self._holder[check_id] = container_id
            if self._tasks.get(check_id) == task:
                continue
            self._tasks[check_id] = task
            self._fresh.add(check_id)
            self._schedule(check_id, now)
            added = True
        if added:
            self._wake.notify()

    def _release(self, container_id: str, check_id: str) -> None:
        checks = self._by_container.get(container_id)
        if checks is not None:
            checks.discard(check_id)
            if not checks:
                del self._by_container[container_id]
                self._status.pop(container_id, None)

    def _drop(self, check_id: str) -> None:
        self._holder.pop(check_id, None)
        self._tasks.pop(check_id, None)
        self._fresh.discard(check_id)
        self._first.discard(check_id)
        self._due_at.pop(check_id, None)
        self._last_status.pop(check_id, None)

    def _schedule(self, check_id: str, when: float) -> None:
        self._due_at[check_id] = when
        heapq.heappush(self._heap, (when, next(self._sequence), check_id))
        if len(self._heap) > 4 * len(self._due_at) + 64:  # stale entries: rebuild, so the heap never grows
            self._heap = [(due, next(self._sequence), cid) for cid, due in self._due_at.items()]
            heapq.heapify(self._heap)

    # -- the scheduler thread --------------------------------------------------

    def asked_rate(self) -> float:
        """TTL updates per second the checks ask for."""
        with self._wake:
            return sum(1.0 / task.probe.interval for task in self._tasks.values() if task.probe.interval > 0)

    def _run(self) -> None:
        while True:
            self.load.tick(self.asked_rate, len(self._tasks))
            with self._wake:
                while not self._stopping and (not self._heap or self._heap[0][0] > self._clock()):
                    self._wake.wait(self._heap[0][0] - self._clock() if self._heap else None)
                if self._stopping:
                    return
                job = self._take_due()
            if job is not None:
                task, status, run_exec, due = job
                if run_exec:
                    self._pool.submit(self._run_exec, task)
                else:
                    self._outbox.put((task, *self._status_of(task.probe, status), due))

    def run_due(self) -> int:
        """Everything due now, on the caller's thread (tests drive the scheduler so)."""
        done = 0
        self.load.tick(self.asked_rate, len(self._tasks))
        while True:
            with self._wake:
                if not self._heap or self._heap[0][0] > self._clock():
                    return done
                job = self._take_due()
            if job is not None:
                task, status, run_exec, due = job
                self._run_exec(task) if run_exec else self._send(task, *self._status_of(task.probe, status), due)
                done += 1

    def _take_due(self) -> tuple[_Task, ContainerStatus, bool, float] | None:
        """Pop the earliest entry (lock held): the task to run now, or None when that
        entry was stale or the check is busy (then it is looked at again shortly)."""
        due, _, check_id = heapq.heappop(self._heap)
        task = self._tasks.get(check_id)
        if task is None or self._due_at.get(check_id) != due:
            return None  # removed, or rescheduled since this entry was pushed
        container_id = task.probe.container_id
        status = self._status.get(container_id, ContainerStatus())
        run_exec = task.probe.kind == "exec" and status.running and not status.paused
        if check_id in self._in_flight or (run_exec and not self._execs.available(container_id, task.probe.timeout)):
            # The last report (or exec) has not finished: never pile up, look again shortly.
            self._schedule(check_id, self._clock() + BUSY_RETRY_SECONDS)
            return None
        self._in_flight.add(check_id)
        if run_exec:
            self._execs.take(container_id, task.probe.timeout)
        if check_id in self._fresh:
            # Its first report: the next one at a random phase of the interval, counted once
            # this one is delivered (_send), so that a herd of first reports queued behind a
            # slow agent does not stay a herd.
            self._fresh.discard(check_id)
            self._due_at.pop(check_id, None)
            self._first.add(check_id)
        else:
            self._schedule(check_id, self._next_due(task.probe))
        return task, status, run_exec, due

    def _next_due(self, probe: DaemonProbe) -> float:
        jitter = probe.interval * 0.1 * (random.random() * 2 - 1) if probe.kind == "heartbeat" else 0.0
        return self._clock() + probe.interval + jitter

    @staticmethod
    def _status_of(probe: DaemonProbe, status: ContainerStatus) -> tuple[str, str]:
        # The output stays the same while the status does: the agent syncs a TTL
        # update to the servers only when status or output changed.
        if status.paused:
            return "critical", "container paused"
        if not status.running:
            return "critical", "container not running"
        if probe.kind in HEALTH_TO_STATUS and status.health:
            consul_status = HEALTH_TO_STATUS[probe.kind].get(status.health, "critical")
            return consul_status, f"docker health: {status.health}\n{status.health_output}".strip()
        return "passing", "container running (heartbeat from consul-reg)"

    def _run_exec(self, task: _Task) -> None:
        try:
            exit_code, output = self._runner.exec_in_container(task.probe.container_id, task.probe.command,
                                                               task.probe.timeout)
            status = EXIT_CODE_TO_STATUS.get(exit_code, "critical")
            self._send(task, status, output or f"exit code {exit_code}", None)
        except Exception as error:  # a failing exec is a critical check, never a dead thread
            self._send(task, "critical", f"could not run the check command: {error}", None)
        finally:
            with self._wake:
                self._execs.give_back(task.probe.container_id, task.probe.timeout)

    # -- sender threads ---------------------------------------------------------

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            self._send(*item)

    def _send(self, task: _Task, status: str, output: str, due: float | None) -> None:
        lateness = None if due is None else max(0.0, self._clock() - due)
        try:
            self._reporter.update_check(task.check_id, status, output[-MAX_OUTPUT:])
            self.sent += 1
            self._on_sent(lateness)
            self.load.sent(lateness)
            with self._wake:
                changed = task.check_id in self._tasks and self._last_status.get(task.check_id) != status
                if changed:
                    self._last_status[task.check_id] = status
            if changed:
                logger.bind(service_id=task.service_id, action="check").debug("check {} is {}", task.check_id, status)
        except LookupError:
            self._on_check_missing(task.service_id, task.check_id)
        except RegistryUnavailable as error:  # the agent watch reports the outage, once
            logger.debug("could not report check {}: {}", task.check_id, error)
        except Exception as error:
            logger.warning("could not report check {}: {}", task.check_id, error)
        finally:
            with self._wake:
                self._in_flight.discard(task.check_id)
                if task.check_id in self._first:
                    self._first.discard(task.check_id)
                    if task.check_id in self._tasks and task.check_id not in self._due_at:  # nobody asked sooner
                        self._schedule(task.check_id,
                                       self._clock() + task.probe.interval * (0.1 + 0.9 * random.random()))
                        self._wake.notify()
