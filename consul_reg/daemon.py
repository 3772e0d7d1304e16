"""Wiring: one sync loop fed by Docker event hints and a resync timer.

Level-triggered, as a Kubernetes controller: events only say which
container to look at again; each pass compares the desired services of
every known container with what the registry holds, and applies the
difference. Nothing here depends on seeing every event.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from dataclasses import replace
from typing import Any

from loguru import logger

from consul_reg import logs
from consul_reg.addresses import primary_host_address
from consul_reg.config import Config, TokenError, read_token
from consul_reg.docker_source import DockerSource, DockerUnavailable, Hint
from consul_reg.drain import Drainer
from consul_reg.desires import DesireBuilder
from consul_reg.heartbeat import ProbeScheduler
from consul_reg.mirrors import MirrorWorker
from consul_reg.reaps import ReapTracker
from consul_reg.status import Metrics, StatusServer
from consul_reg.model import ContainerStatus, RegisteredService, Service, registered_form
from consul_reg.reconcile import ContainerDesire, apply, desired_services, plan
from consul_reg.registries import registries_from_uris
from consul_reg.registries.base import RegistryError
from consul_reg.registries.consul import AgentInfo, ConsulRegistry

MAX_BACKOFF_SECONDS = 30.0
STOP = Hint("", "stop")


class Daemon:
    def __init__(self, config: Config, docker: DockerSource, registry: ConsulRegistry,
                 mirrors: list[MirrorWorker] | None = None) -> None:
        self.config = config
        self.mirrors = mirrors or []
        self.docker = docker
        self.registry = registry
        self.hints: queue.Queue[Hint] = queue.Queue()
        self.stopping = threading.Event()
        self.settings = config.mapping_settings("127.0.0.1", "default")
        self.agent: AgentInfo | None = None
        self.desires: dict[str, ContainerDesire] = {}
        self.actual: dict[str, RegisteredService] | None = None  # None: unknown, list it again
        self._last_known_actual: dict[str, RegisteredService] = {}
        self.failing: dict[str, str] = {}  # service ID -> digest Consul refused; retried at resync
        self.builder = DesireBuilder(config, docker, self.settings)
        self._next_env_poll = 0.0
        self._registry_backoff = config.retry_interval_ms / 1000
        self._registry_retry_at = 0.0
        self.docker_ok = True
        self.last_full_sync = 0.0
        self._force_register: set[str] = set()  # services whose checks the agent lost
        self.reaped = ReapTracker()
        self.metrics = Metrics()
        self.probes = ProbeScheduler(registry, docker, self._check_missing, on_sent=self.metrics.heartbeat)
        self.drainer = Drainer(registry, config.drain_timeout)

    # -- start and stop ---------------------------------------------------

    def connect(self) -> bool:
        """Reach Docker and the agent, retrying as -retry-attempts says."""
        attempts = 0
        wait = self.config.retry_interval_ms / 1000
        while not self.stopping.is_set():
            attempts += 1
            try:
                self.docker.ping()
                info = self.registry.agent_info()
                self.agent = info
                self.settings = self.config.mapping_settings(*self._default_address(info.advertise_address),
                                                             info.version, info.runs_remote_scripts)
                self.builder.settings = self.settings
                if not info.runs_remote_scripts:
                    logger.info("the agent has script checks disabled: SERVICE_CHECK_DOCKER commands are run by "
                                "this daemon through docker exec, SERVICE_CHECK_SCRIPT checks are dropped")
                logger.info("connected: docker {}, {} (Consul {}, node {})", self.docker.description,
                            self.registry.description, info.version, info.node_name)
                return True
            except (DockerUnavailable, RegistryError) as error:
                limit = self.config.retry_attempts
                if limit != -1 and attempts >= max(limit, 1):
                    logger.error("giving up after {} tries: {}", attempts, error)
                    return False
                logger.warning("try {} failed: {}; retrying in {:.1f}s", attempts, error, wait)
                self.stopping.wait(wait)
                wait = min(wait * 2, MAX_BACKOFF_SECONDS)
        return False

    def _default_address(self, advertise_address: str) -> tuple[str, str]:
        if self.registry.endpoint.is_local and advertise_address:
            return advertise_address, "the local Consul agent's advertise address"
        address = primary_host_address()
        logger.warning("the Consul agent is not local; registering services at this host's primary address {} "
                       "(set -ip to choose)", address)
        return address, "this host's primary address (the agent is not local; set -ip to choose)"

    def request_reload(self, *_: Any) -> None:
        """SIGHUP: re-read the token file and reconcile everything."""
        self.hints.put(Hint("", "reload"))

    def _reload_token(self) -> None:
        if not self.config.token_file:
            logger.info("SIGHUP: full reconcile (no CONSUL_HTTP_TOKEN_FILE to re-read)")
            return
        try:
            token, _ = read_token({"CONSUL_HTTP_TOKEN_FILE": self.config.token_file})
        except TokenError as error:
            logger.error("SIGHUP: {}; keeping the current token", error)
            return
        logs.add_secret(token or "")
        self.registry.set_token(token)
        logger.info("SIGHUP: token re-read from {}; full reconcile", self.config.token_file)

    def request_stop(self, *_: Any) -> None:
        self.stopping.set()
        self.hints.put(STOP)

    # -- the loop ---------------------------------------------------------

    def run(self) -> int:
        if not self.connect():
            return 0 if self.stopping.is_set() else 1
        self.docker.follow_events(self.hints, self.stopping, retry_interval=self.config.retry_interval_ms / 1000)
        self.probes.start()
        for mirror in self.mirrors:
            mirror.start()
        self.hints.put(Hint("", "start"))
        while not self.stopping.is_set():
            batch = self._next_hints(self._seconds_until_due())
            if self.stopping.is_set():
                break
            try:
                self.handle(batch)
            except Exception:  # a bug must cost one pass, never the daemon
                logger.exception("unexpected error; everything is relisted at the next pass")
                self.actual = None
                self._schedule_retry("recovering from an unexpected error")
        self.shutdown()
        return 0

    def handle(self, batch: list[Hint]) -> None:
        self.drainer.expire()
        self._poll_env_files()
        stamped = [h.time_nano for h in batch if h.time_nano]
        if stamped:
            self.metrics.event_lag.set(max(0.0, time.time() - max(stamped) / 1e9))
        if any(h.action == "reload" for h in batch):
            self._reload_token()
        for hint in batch:
            if hint.action == "check missing":
                self._force_register.add(dict(hint.attributes)["service_id"])
        if self._due() or any(h.full_resync for h in batch):
            self.full_sync()
        elif batch:
            for hint in batch:
                if hint.action == "kill" and hint.container_id in self.desires:
                    known = self.desires[hint.container_id]
                    self.drainer.on_kill(known.container_name, known.container_id,
                                         tuple(s.id for s in known.services),
                                         dict(hint.attributes).get("signal", ""), known.stop_signal)
                elif hint.action == "die":
                    self.drainer.on_die(hint.container_id)
            latest = {h.container_id: h for h in batch if h.action != "kill"}
            before = {cid: self.desires[cid].status for cid in latest if cid in self.desires}
            for container_id, hint in latest.items():
                if hint.action in ("start", "restart"):
                    self.reaped.container_restarted(container_id)
                if hint.action == "die" and container_id in self.desires:
                    self._mark_dead(container_id, dict(hint.attributes).get("exitCode", ""))
                else:
                    self.refresh_container(container_id)
            for container_id, old_status in before.items():
                desire = self.desires.get(container_id)
                if desire is not None and desire.status != old_status:
                    self.probes.report_container_now(container_id, desire.status)  # health_status, pause
            self.sync()

    def _poll_env_files(self) -> None:
        """Re-map containers whose env file changed (between full passes, which read them all)."""
        if time.monotonic() < self._next_env_poll:
            return
        self._next_env_poll = time.monotonic() + self.config.env_file_interval
        changed = [d.container_id for d in list(self.desires.values())
                   if d.env_file and d.status.running and self.builder.env_file_changed(d.container_id, d.env_file)]
        for container_id in changed:
            self.refresh_container(container_id)
        if changed:
            self.sync()

    def _next_hints(self, timeout: float) -> list[Hint]:
        try:
            batch = [self.hints.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while True:  # take everything already queued: one pass handles a burst
            try:
                batch.append(self.hints.get_nowait())
            except queue.Empty:
                return batch

    def _full_sync_deadline(self) -> float | None:
        """When the next full pass is due: the resync period, or a retry after a failure."""
        deadlines = []
        if self.config.resync_seconds > 0:
            deadlines.append(self.last_full_sync + self.config.resync_seconds)
        if self.actual is None or not self.docker_ok:
            deadlines.append(self._registry_retry_at)
        return min(deadlines, default=None)

    def _seconds_until_due(self) -> float:
        """Until the loop must wake: a full pass, a drain timeout, an env file poll."""
        deadlines = [d for d in (self._full_sync_deadline(), self.drainer.next_deadline()) if d is not None]
        if any(d.env_file for d in self.desires.values()):
            deadlines.append(self._next_env_poll)
        return min(deadlines) - time.monotonic() if deadlines else 3600.0

    def _due(self) -> bool:
        deadline = self._full_sync_deadline()
        return deadline is not None and deadline <= time.monotonic()

    def _check_missing(self, service_id: str, check_id: str) -> None:
        """From the heartbeat thread: the agent lost a check we report (agent restarted?)."""
        logger.warning("the agent does not know check {}; re-registering {}", check_id, service_id)
        self.hints.put(Hint("", "check missing", attributes=(("service_id", service_id),)))

    def shutdown(self) -> None:
        self.probes.stop()
        for mirror in self.mirrors:
            mirror.stop()
        if self.config.deregister_on_exit:
            try:
                owned = [s for s in self.registry.services().values() if s.owned_by(self.config.hostname)]
                for service in owned:
                    self.registry.deregister(service)
                    logger.info("deregistered {} on exit", service.id)
            except RegistryError as error:
                logger.error("could not deregister on exit: {}", error)
        logger.info("stopped")

    # -- level-triggered sync ---------------------------------------------

    def full_sync(self) -> None:
        """Relist every container and the registry, then sync."""
        with self.metrics.reconcile_seconds.time():
            self._full_sync()

    def _full_sync(self) -> None:
        self.last_full_sync = time.monotonic()
        self.failing.clear()
        try:
            summaries = self.docker.list_containers()
            desires = {}
            for summary in summaries:
                inspected = self.docker.inspect_listed(summary)
                if inspected is not None:
                    desires[inspected["Id"]] = self.builder.desire_for(inspected)
        except DockerUnavailable as error:
            # Never read "Docker is down" as "no containers": keep what we know.
            self.docker_ok = False
            self._schedule_retry(f"{error}")
            return
        self.docker_ok = True
        self.builder.forget_all_but(set(desires))
        self.desires = desires
        previous, self.actual = self.actual, None
        if not self._agent_is_the_same():
            previous = None
        self.sync(previous, relist_mirrors=True)
        logger.debug("full sync done: {} containers, {} services registered", len(desires),
                     "unknown" if self.actual is None else len(self._owned()))

    def refresh_container(self, container_id: str) -> None:
        try:
            inspected = self.docker.inspect(container_id)
        except DockerUnavailable as error:
            self.docker_ok = False
            self._schedule_retry(str(error))
            return
        if inspected is None:
            self.desires.pop(container_id, None)
            self.builder.forget(container_id)
        else:
            self.desires[container_id] = self.builder.desire_for(inspected)

    def _mark_dead(self, container_id: str, exit_code: str) -> None:
        """A `die` event is itself proof the process ended. Inspecting now would
        wait ~100 ms on dockerd's lock while it tears the network down."""
        known = self.desires[container_id]
        keep = self.config.deregister == "on-success" and exit_code.isdigit() and 0 < int(exit_code) < 128
        self.desires[container_id] = ContainerDesire(known.container_id, known.container_name, known.created,
                                                     (), keep_existing=keep,
                                                     status=ContainerStatus(running=False))

    def _agent_is_the_same(self) -> bool:
        """False when the agent restarted (a new node ID): it lost everything, re-register all."""
        try:
            info = self.registry.agent_info()
        except RegistryError:
            return False  # sync() reports the failure
        same = self.agent is not None and info.node_id == self.agent.node_id
        if self.agent is not None and not same:
            logger.warning("the Consul agent restarted (node ID {} -> {}); re-registering everything",
                           self.agent.node_id, info.node_id)
            self.reaped.clear()
        self.agent = info
        return same

    def sync(self, previous: dict[str, RegisteredService] | None = None, relist_mirrors: bool = False) -> None:
        desired, conflicts = desired_services(self.desires.values())
        for warning in conflicts:
            logger.warning(warning)
        primary_ready = self._refresh_actual(previous)
        self.metrics.services_managed.set(len(desired))
        if self.mirrors:
            kept = self._kept_services(self.actual if self.actual is not None else self._last_known_actual)
            for mirror in self.mirrors:  # each on its own thread: never waits for the primary, nor it for them
                mirror.offer(desired, relist=relist_mirrors, kept=kept)
        if not primary_ready:
            return
        assert self.actual is not None
        for service_id in self._force_register:
            self.actual.pop(service_id, None)
        self._force_register.clear()
        self.probes.set_services([s for s in desired.values() if s.id not in self.reaped],
                                 {d.container_id: d.status for d in self.desires.values()})
        kept = frozenset(d.container_id for d in self.desires.values() if d.keep_existing)
        todo = plan(desired, self.actual, self.config.hostname, kept, self.config.cleanup,
                    {**self.failing, **self.reaped.digests()})
        if not todo:
            return
        result = apply(todo, self.registry)
        self.metrics.applied("consul", len(result.registered), len(result.deregistered), len(result.failed))
        self.probes.report_now({service.id for service in result.registered})
        for service in result.registered:
            self.actual[service.id] = registered_form(service)
        for gone in result.deregistered:
            self.actual.pop(gone.id, None)
        for service_id, _ in result.failed:
            if service_id in desired:
                self.failing[service_id] = desired[service_id].digest
        if result.scripts_refused and self.settings.checks.agent_runs_scripts:
            logger.warning("the agent refused a check that runs a command (script checks disabled): from now on "
                           "SERVICE_CHECK_DOCKER commands are run by this daemon, SERVICE_CHECK_SCRIPT is dropped")
            self.settings = replace(self.settings, checks=replace(self.settings.checks, agent_runs_scripts=False))
            self.builder.settings = self.settings
            self.builder.reset_reports()
            self.failing.clear()
            self.hints.put(Hint("", "scripts refused"))
        if result.unavailable:
            self.actual = None
            self._schedule_retry(result.unavailable)
        else:
            self._registry_backoff = self.config.retry_interval_ms / 1000

    def _refresh_actual(self, previous: dict[str, RegisteredService] | None) -> bool:
        """List the primary when its state is unknown; False while it cannot be reached."""
        if self.actual is not None:
            return True
        if time.monotonic() < self._registry_retry_at:
            return False
        try:
            self.actual = self.registry.services()
        except RegistryError as error:
            self._schedule_retry(str(error))
            return False
        self._last_known_actual = self.actual
        if previous:
            self.reaped.notice(self.desires.values(), previous, self.actual)
        return True

    def _kept_services(self, registered: dict[str, RegisteredService]) -> tuple[Service, ...]:
        """What -deregister on-success keeps for failed containers, as the primary holds it,
        so the mirrors keep it too."""
        kept = {d.container_id for d in self.desires.values() if d.keep_existing}
        return tuple(Service(id=s.id, name=s.name, address=s.address, port=s.port, container_id=s.container_id)
                     for s in registered.values()
                     if s.owned_by(self.config.hostname) and s.container_id in kept)

    def _owned(self) -> list[RegisteredService]:
        return [s for s in (self.actual or {}).values() if s.owned_by(self.config.hostname)]

    def _schedule_retry(self, reason: str) -> None:
        logger.warning("{}; retrying in {:.1f}s", reason, self._registry_backoff)
        self._registry_retry_at = time.monotonic() + self._registry_backoff
        self._registry_backoff = min(self._registry_backoff * 2, MAX_BACKOFF_SECONDS)


def run(config: Config) -> int:
    logs.setup(config.log_level, config.log_format, secrets=(config.token or "",))
    primary, mirror_registries = registries_from_uris(config)
    try:
        docker = DockerSource()
    except DockerUnavailable as error:
        logger.error("{}", error)
        return 1
    mirrors = [MirrorWorker(m, config.hostname, config.retry_interval_ms / 1000) for m in mirror_registries]
    daemon = Daemon(config, docker, primary, mirrors)
    for mirror in mirrors:
        mirror.metrics = daemon.metrics
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
    status = StatusServer(config.status_addr, daemon) if config.status_addr else None
    if status is not None:
        status.start()
    logger.info("consul-reg starting: host {}, registry {}{}", config.hostname, primary.description,
                "".join(f", mirror {m.description}" for m in mirror_registries))
    try:
        return daemon.run()
    finally:
        if status is not None:
            status.stop()
        primary.close()
        docker.close()
