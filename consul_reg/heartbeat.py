"""One scheduler for every TTL check the daemon owns.

A single thread keeps a heap of due times (no thread per check). Heartbeats
and Docker-health reports are computed from the container state the sync
loop last saw; `exec` probes (CHECK_DOCKER run by the daemon) go to a small
worker pool, because a command in a container can take seconds. Reports go
out through the Consul client's lean TTL path. An update the agent refuses
(the check is gone, say after an agent restart) asks the sync loop to
re-register.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

from loguru import logger

from consul_reg.model import ContainerStatus, DaemonProbe, Service

HEALTH_TO_STATUS = {
    # Docker health -> Consul status, for port-less workers' heartbeat...
    "heartbeat": {"healthy": "passing", "starting": "warning", "unhealthy": "critical"},
    # ...and for services with ports, where a starting container must get no traffic.
    "docker-health": {"healthy": "passing", "starting": "critical", "unhealthy": "critical"},
}
EXIT_CODE_TO_STATUS = {0: "passing", 1: "warning"}
MAX_OUTPUT = 4096


class CheckReporter(Protocol):
    def update_check(self, check_id: str, status: str, output: str) -> None: ...


class CommandRunner(Protocol):
    def exec_in_container(self, container_id: str, command: str, timeout: float) -> tuple[int, str]: ...


@dataclass(frozen=True)
class _Task:
    check_id: str
    service_id: str
    probe: DaemonProbe


class ProbeScheduler:
    def __init__(self, reporter: CheckReporter, runner: CommandRunner,
                 on_check_missing: Callable[[str, str], None], exec_workers: int = 4, senders: int = 4,
                 on_sent: Callable[[float | None], None] = lambda lateness: None) -> None:
        self._on_sent = on_sent
        self._reporter = reporter
        self._runner = runner
        self._on_check_missing = on_check_missing
        self._tasks: dict[str, _Task] = {}
        self._status: dict[str, ContainerStatus] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._due_at: dict[str, float] = {}  # the one live heap entry per check; older ones are stale
        self._sequence = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=exec_workers, thread_name_prefix="exec-probe")
        # Reports go out on a few keep-alive connections: one slow answer from
        # the agent must not hold back every other check.
        self._outbox: queue.SimpleQueue[tuple[_Task, str, str, float] | None] = queue.SimpleQueue()
        self._senders = [threading.Thread(target=self._send_loop, name=f"ttl-sender-{n}", daemon=True)
                         for n in range(senders)]
        self._in_flight: set[str] = set()
        self._last_sent: dict[str, tuple[str, str]] = {}
        self.sent = 0
        self.lateness: list[float] = []  # seconds between due and sent, per report, for the benchmark
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def start(self) -> None:
        self._thread.start()
        for sender in self._senders:
            sender.start()

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            self._send(*item)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for _ in self._senders:
            self._outbox.put(None)

    def set_services(self, services: list[Service], statuses: dict[str, ContainerStatus]) -> None:
        """The daemon-owned checks of the desired services; new ones report at once."""
        wanted = {
            check.check_id: _Task(check.check_id, service.id, check.daemon_probe)
            for service in services for check in service.checks if check.daemon_probe is not None
        }
        with self._wake:
            self._status = dict(statuses)
            new = [check_id for check_id, task in wanted.items() if self._tasks.get(check_id) != task]
            self._tasks = wanted
            for check_id in list(self._last_sent):
                if check_id not in wanted:
                    del self._last_sent[check_id]
            for check_id in set(self._due_at) - set(wanted):
                del self._due_at[check_id]
            now = time.monotonic()
            for check_id in new:
                self._schedule(check_id, now)
            if new:
                self._wake.notify()

    def report_now(self, service_ids: set[str]) -> None:
        """Just (re-)registered: the agent reset these services' TTL checks, report them again."""
        with self._wake:
            now = time.monotonic()
            for task in self._tasks.values():
                if task.service_id in service_ids and task.probe.kind != "exec":
                    self._schedule(task.check_id, now)
            self._wake.notify()

    def report_container_now(self, container_id: str, status: ContainerStatus) -> None:
        """A health_status / pause event: report that container's checks right away."""
        with self._wake:
            self._status[container_id] = status
            now = time.monotonic()
            for task in self._tasks.values():
                if task.probe.container_id == container_id and task.probe.kind != "exec":
                    self._schedule(task.check_id, now)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                if self._stopping:
                    return
                due, _, check_id = heapq.heappop(self._heap)
                task = self._tasks.get(check_id)
                if task is None or self._due_at.get(check_id) != due:
                    continue  # removed, or rescheduled since this entry was pushed
                if check_id in self._in_flight:
                    # The agent has not answered the last report yet: never pile up, look again shortly.
                    self._schedule(check_id, time.monotonic() + 0.2)
                    continue
                self._in_flight.add(check_id)
                status = self._status.get(task.probe.container_id, ContainerStatus())
                self._schedule(check_id, self._next_due(task.probe))
            if task.probe.kind == "exec" and status.running and not status.paused:
                self._pool.submit(self._run_exec, task, due)
            else:
                self._outbox.put((task, *self._status_of(task.probe, status), due))

    def _schedule(self, check_id: str, when: float) -> None:
        """Call with the lock held."""
        self._due_at[check_id] = when
        heapq.heappush(self._heap, (when, next(self._sequence), check_id))

    def _next_due(self, probe: DaemonProbe) -> float:
        jitter = probe.interval * 0.1 * (random.random() * 2 - 1) if probe.kind == "heartbeat" else 0.0
        return time.monotonic() + probe.interval + jitter

    @staticmethod
    def _status_of(probe: DaemonProbe, status: ContainerStatus) -> tuple[str, str]:
        if status.paused:
            return "critical", "container paused"
        if not status.running:
            return "critical", "container not running"
        if probe.kind in HEALTH_TO_STATUS and status.health:
            consul_status = HEALTH_TO_STATUS[probe.kind].get(status.health, "critical")
            return consul_status, f"docker health: {status.health}\n{status.health_output}".strip()
        return "passing", "container running (heartbeat from consul-reg)"

    def _run_exec(self, task: _Task, due: float) -> None:
        try:
            exit_code, output = self._runner.exec_in_container(task.probe.container_id, task.probe.command,
                                                               task.probe.timeout)
            status = EXIT_CODE_TO_STATUS.get(exit_code, "critical")
            self._send(task, status, output or f"exit code {exit_code}", None)
        except Exception as error:  # a failing exec is a critical check, never a dead thread
            self._send(task, "critical", f"could not run the check command: {error}", None)

    def _send(self, task: _Task, status: str, output: str, due: float | None) -> None:
        lateness = None if due is None else max(0.0, time.monotonic() - due)
        if lateness is not None:
            self.lateness.append(lateness)
        output = output[-MAX_OUTPUT:]
        try:
            self._reporter.update_check(task.check_id, status, output)
            self.sent += 1
            self._on_sent(lateness)
            if self._last_sent.get(task.check_id, ("", ""))[0] != status:
                logger.bind(service_id=task.service_id, action="check").debug(
                    "check {} is {}", task.check_id, status)
            self._last_sent[task.check_id] = (status, output)
        except LookupError:
            self._on_check_missing(task.service_id, task.check_id)
        except Exception as error:
            logger.warning("could not report check {}: {}", task.check_id, error)
        finally:
            self._in_flight.discard(task.check_id)
