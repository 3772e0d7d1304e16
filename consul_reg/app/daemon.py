"""Wiring only: build the parts, reach Docker and the agent, start the
threads, hand signals to the loop as messages, and stop in order.

Signals are put on a queue by their handlers (nothing else: a handler runs on
the loop's thread, between two of its bytecodes) and taken by the signal
thread, which re-reads the token file on SIGHUP before telling the loop.
"""

from __future__ import annotations

import queue
import signal
import threading
from typing import TYPE_CHECKING, Any

from loguru import logger

from consul_reg.app import logs
from consul_reg.app.config import Config, TokenError, read_token
from consul_reg.app.host import default_address
from consul_reg.app.metrics import Metrics, PrometheusMetrics
from consul_reg.app.uris import Registries, registries_from_uris, token_transport_problem
from consul_reg.consul.watch import AgentAlarm, AgentWatch
from consul_reg.core.backoff import Backoff
from consul_reg.core.errors import DockerUnavailable, RegistryError
from consul_reg.core.liveness import Liveness
from consul_reg.core.messages import CheckMissing, Message, Reload, Stop
from consul_reg.core.records import AgentInfo
from consul_reg.core.snapshot import Snapshot
from consul_reg.docker.client import DockerSource
from consul_reg.docker.env_files import EnvFileReader
from consul_reg.docker.reads import LoopReads
from consul_reg.docker.swarm import SwarmEndpoints
from consul_reg.mapping.services import MappingSettings
from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.sync.desires import DesireBuilder
from consul_reg.sync.loop import Loop, LoopSettings

if TYPE_CHECKING:
    from consul_reg.mirrors.worker import MirrorWorker
    from consul_reg.restarts.watcher import RestartWatcher

USAGE_EXIT = 2


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.agent_liveness = Liveness("consul")
        self.alarm = AgentAlarm(self.agent_liveness)
        self.registries: Registries = registries_from_uris(config, on_unreachable=self.alarm)
        self.registry = self.registries.primary
        self.docker = DockerSource(filters=config.docker_filters())
        self.metrics: Metrics = PrometheusMetrics() if config.status_addr else Metrics()
        self.stopping = threading.Event()
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()  # from the handlers, for the signal thread
        self.early_inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()  # what came before the loop ran
        self.loop: Loop | None = None
        self.watch: AgentWatch | None = None
        self.mirrors: list[MirrorWorker] = []
        self.env_reader: EnvFileReader | None = None
        self.probes: ProbeScheduler | None = None
        self.restarts: RestartWatcher | None = None
        self._announced_remote = False
        threading.Thread(target=self._take_signals, name="signals", daemon=True).start()

    # -- signals: the handler queues them, the signal thread acts -----------------------

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.put(signum)

    def _take_signals(self) -> None:
        while True:
            signum = self.signals.get()
            if signum == signal.SIGHUP:
                self.reload_token()
                self._post(Reload())
            else:
                self._post(Stop())

    def _post(self, message: Message) -> None:
        """To the loop, or kept for it while the daemon is still starting."""
        loop = self.loop
        (loop.post if loop is not None else self.early_inbox.put)(message)

    # -- start --------------------------------------------------------------------

    def connect(self) -> AgentInfo | None:
        """Reach Docker and the agent, retrying as -retry-attempts says."""
        backoff = Backoff(self.config.retry_interval_ms / 1000)
        attempts = 0
        while True:
            attempts += 1
            try:
                self.docker.ping()
                info = self.registry.agent_info()
                self.agent_liveness.ok()
                logger.info("connected: docker {}, {} (Consul {}, node {})", self.docker.description,
                            self.registry.description, info.version or "-", info.node_name or "-")
                return info
            except (DockerUnavailable, RegistryError) as error:
                limit = self.config.retry_attempts
                if limit != -1 and attempts >= max(limit, 1):
                    logger.error("giving up after {} tries: {}", attempts, error)
                    return None
                wait = backoff.failed()
                logger.warning("try {} failed: {}; retrying in {:.1f}s", attempts, error, wait)
                if self._wait_before_retry(wait, backoff):
                    return None

    def _wait_before_retry(self, wait: float, backoff: Backoff) -> bool:
        """Sleep until the next try, woken by a signal. True: stop asked. A SIGHUP
        (its token re-read by the signal thread) tries again at once: a rotated token
        is the usual way out of a start refused with 403."""
        try:
            message = self.early_inbox.get(timeout=wait)
        except queue.Empty:
            return False
        if isinstance(message, Stop):
            return True
        if isinstance(message, Reload):
            backoff.succeeded()
        return False

    def settings_for(self, info: AgentInfo) -> MappingSettings:
        address = default_address(self.registry.endpoint.is_local, info.advertise_address)
        if not self.registry.endpoint.is_local and not self._announced_remote and not self.config.host_ip:
            logger.warning("the Consul agent is not local; registering services at this host's primary "
                           "address {} (set -ip to choose)", address[0])
            self._announced_remote = True
        if not info.runs_remote_scripts:
            logger.info("the agent has script checks disabled: SERVICE_CHECK_DOCKER commands are run by this "
                        "daemon through docker exec, SERVICE_CHECK_SCRIPT checks are dropped")
        policy = self.config.check_policy(
            agent_addresses=tuple(a for a in (info.advertise_address, *info.listen_addresses) if a),
            agent_ports=info.listen_ports)
        return self.config.mapping_settings(*address, info.version, info.runs_remote_scripts, policy=policy)

    def build(self, info: AgentInfo) -> Loop:
        config = self.config
        builder = DesireBuilder(config.container_rules(), self.docker, self.settings_for(info),
                                settings_for=self.settings_for,
                                swarm=SwarmEndpoints(self.docker))
        probes = ProbeScheduler(self.registry, self.docker, self._check_missing, on_sent=self.metrics.heartbeat,
                                on_load=self.metrics.heartbeat_load)
        env_reader = EnvFileReader(self.docker.read_file, self._post,
                                   is_docker_down=lambda error: isinstance(error, DockerUnavailable))
        if self.registries.mirrors:  # the workers' module is loaded only when there is a mirror
            from consul_reg.mirrors.worker import MirrorWorker

            self.mirrors = [MirrorWorker(m, config.owner, config.retry_interval_ms / 1000, metrics=self.metrics)
                            for m in self.registries.mirrors]
        if self.registries.is_agent:
            self.watch = AgentWatch(self.registry, self.alarm, self._post, identity=info)
        if self.registries.is_agent and config.check_restart:  # only an agent runs checks
            from consul_reg.restarts.watcher import RestartWatcher

            self.restarts = RestartWatcher(self.registry, self.docker, config.owner, self.metrics,
                                           config.check_restart_backoff, config.check_restart_backoff_max)
        settings = LoopSettings(owner=config.owner, deregister_mode=config.deregister,
                                resync_seconds=config.resync_seconds, env_file_interval=config.env_file_interval,
                                retry_interval=config.retry_interval_ms / 1000, drain_timeout=config.drain_timeout,
                                adopt_leftovers=config.cleanup)
        loop = Loop(settings, LoopReads(self.docker, env_reader), self.registries.agent, builder, probes,
                    subscribers=[*self.mirrors, *([self.restarts] if self.restarts else [])], metrics=self.metrics)
        self.env_reader, self.probes = env_reader, probes
        return loop

    def _check_missing(self, service_id: str, check_id: str) -> None:
        """From a heartbeat sender: the agent does not know a check we report."""
        logger.warning("the agent does not know check {}; looking at {} again", check_id, service_id)
        self._post(CheckMissing(service_id, check_id))

    def reload_token(self) -> None:
        """SIGHUP, on the signal thread: re-read the token file for every client of Consul."""
        if not self.config.token_file:
            logger.info("SIGHUP: full reconcile (no CONSUL_HTTP_TOKEN_FILE to re-read)")
            return
        try:
            token, _ = read_token({"CONSUL_HTTP_TOKEN_FILE": self.config.token_file})
        except TokenError as error:
            logger.error("SIGHUP: {}; keeping the current token", error)
            return
        logs.add_secret(token or "")
        for user in self.registries.token_users:
            user.set_token(token)
        logger.info("SIGHUP: token re-read from {}; full reconcile", self.config.token_file)

    # -- run and stop ---------------------------------------------------------------

    def run(self) -> int:
        info = self.connect()
        if info is None:
            return 0 if self._stop_asked() else 1
        loop = self.loop = self.build(info)
        while True:  # signals that came during start (nothing else posts yet)
            try:
                loop.post(self.early_inbox.get_nowait())
            except queue.Empty:
                break
        self.docker.follow_events(self._post, self.stopping, retry_interval=self.config.retry_interval_ms / 1000)
        assert self.probes is not None
        self.probes.start()
        for mirror in self.mirrors:
            mirror.start()
        if self.restarts is not None:
            self.restarts.start()
        if self.watch is not None:
            self.watch.start()
        try:
            loop.run(identity=info)
        finally:
            self.shutdown()
        return 0

    def _stop_asked(self) -> bool:
        while True:
            try:
                if isinstance(self.early_inbox.get_nowait(), Stop):
                    return True
            except queue.Empty:
                return False

    def shutdown(self) -> None:
        assert self.loop is not None
        self.stopping.set()
        if self.watch is not None:
            self.watch.stop()
        if self.probes is not None:
            self.probes.stop()
        if self.restarts is not None:
            self.restarts.stop()
        if self.env_reader is not None:
            self.env_reader.stop()
        if self.config.deregister_on_exit:
            self._deregister_everything()
        for mirror in self.mirrors:
            mirror.stop(remove_all=self.config.deregister_on_exit)
        logger.info("stopped")

    def _deregister_everything(self) -> None:
        try:
            owned = [s for s in self.registry.services().values() if s.owned_by(self.config.owner)]
            for service in owned:
                self.registry.deregister(service)
                logger.bind(action="deregister", service_id=service.id).info("deregistered {} on exit", service.id)
        except RegistryError as error:
            logger.error("could not deregister on exit: {}", error)


def run(config: Config) -> int:
    logs.setup(config.log_level, config.log_format, secrets=(config.token or "",))
    problem = token_transport_problem(config.registry_uris, config.token)
    if problem:
        logger.error("{}", problem)
        return USAGE_EXIT
    try:
        daemon = Daemon(config)
    except DockerUnavailable as error:
        logger.error("{}", error)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, daemon.on_signal)
    logger.info("consul-reg starting: host {}, registry {}{}", config.hostname, daemon.registry.description,
                "".join(f", mirror {m.description}" for m in daemon.registries.mirrors))
    status = None
    if config.status_addr:
        from consul_reg.app.status import StatusServer, StatusSources

        status = StatusServer(config.status_addr, StatusSources(
            snapshot=lambda: daemon.loop.snapshot if daemon.loop is not None else Snapshot(),
            docker=daemon.docker.liveness, agent=daemon.agent_liveness,
            mirrors=lambda: {m.registry.description: m.state for m in daemon.mirrors},
            metrics=daemon.metrics, hostname=config.owner))
        status.start()
    try:
        return daemon.run()
    finally:
        if status is not None:
            status.stop()
        daemon.registry.close()
        daemon.docker.close()
