"""Wiring only: build the parts, reach Docker and the agent, start the
threads, hand signals to the loop as messages, and stop in order."""

from __future__ import annotations

import queue
import signal
import threading
import time
from typing import Any

from loguru import logger

from consul_reg.app import logs
from consul_reg.mapping.addresses import default_address
from consul_reg.consul.watch import AgentWatch
from consul_reg.core.backoff import Backoff
from consul_reg.app.config import Config, TokenError, read_token
from consul_reg.sync.desires import DesireBuilder
from consul_reg.docker.client import DockerSource, DockerUnavailable
from consul_reg.sync.drain import Drainer
from consul_reg.docker.env_files import EnvFileReader
from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.core.liveness import Liveness
from consul_reg.sync.loop import Loop
from consul_reg.mapping.services import MappingSettings
from consul_reg.app.metrics import Metrics, PrometheusMetrics
from consul_reg.mirrors.worker import MirrorWorker
from consul_reg.sync.primary import Primary
from consul_reg.app.uris import registries_from_uris, token_transport_problem
from consul_reg.core.registry import RegistryError
from consul_reg.consul.agent import AgentInfo, ConsulRegistry
from consul_reg.consul.guard import guarded
from consul_reg.sync.router import CHECK_MISSING, RELOAD, STOP, Hint
from consul_reg.core.snapshot import Snapshot

USAGE_EXIT = 2


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry, self.mirror_registries = registries_from_uris(config)
        self.docker = DockerSource(filters=config.docker_filters())
        self.metrics: Metrics = PrometheusMetrics() if config.status_addr else Metrics()
        self.agent_liveness = Liveness("consul")
        self.stopping = threading.Event()
        self.early_inbox: queue.SimpleQueue[Hint] = queue.SimpleQueue()  # signals before the loop runs
        self.loop: Loop | None = None
        self.watch: AgentWatch | None = None
        self._announced_remote = False

    # -- signals: only a message, nothing else ------------------------------------

    def on_signal(self, signum: int, _frame: Any) -> None:
        hint = Hint("", RELOAD if signum == signal.SIGHUP else STOP)
        (self.loop.post if self.loop is not None else self.early_inbox.put)(hint)

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
        re-reads the token at once and tries again (a rotated token is the usual
        way out of a start refused with 403)."""
        try:
            hint = self.early_inbox.get(timeout=wait)
        except queue.Empty:
            return False
        if hint.action == STOP:
            return True
        if hint.action == RELOAD:
            self.reload_token()
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
        primary = Primary(guarded(self.registry, config.owner, config.cleanup), config.owner,
                          config.retry_interval_ms / 1000, time.monotonic, adopt_leftovers=config.cleanup)
        primary.identity = info
        builder = DesireBuilder(config, self.docker, self.settings_for(info))
        probes = ProbeScheduler(self.registry, self.docker, self._check_missing, on_sent=self.metrics.heartbeat,
                                on_load=self.metrics.heartbeat_load)
        env_reader = EnvFileReader(self.docker.read_file, self._post,
                                   is_docker_down=lambda error: isinstance(error, DockerUnavailable))
        mirrors = [MirrorWorker(m, config.owner, config.retry_interval_ms / 1000, metrics=self.metrics)
                   for m in self.mirror_registries]
        if isinstance(self.registry, ConsulRegistry):
            self.watch = AgentWatch(self.registry, self.agent_liveness, self._post, identity=info)
            self.registry.client.on_unreachable = self.watch.unreachable
        loop = Loop(deregister_mode=config.deregister, resync_seconds=config.resync_seconds,
                    env_file_interval=config.env_file_interval, retry_interval=config.retry_interval_ms / 1000,
                    docker=self.docker, primary=primary, builder=builder, probes=probes,
                    drainer=Drainer(primary.agent, config.drain_timeout), mirrors=mirrors, env_reader=env_reader,
                    metrics=self.metrics, reload_token=self.reload_token,
                    agent_identity=lambda: self.watch.identity if self.watch else None,
                    on_agent_changed=self._agent_changed)
        while True:  # signals that came during start
            try:
                loop.post(self.early_inbox.get_nowait())
            except queue.Empty:
                break
        return loop

    def _post(self, message: Any) -> None:
        assert self.loop is not None
        self.loop.post(message)

    def _check_missing(self, service_id: str, check_id: str) -> None:
        """From a heartbeat sender: the agent does not know a check we report."""
        logger.warning("the agent does not know check {}; looking at {} again", check_id, service_id)
        self._post(Hint("", CHECK_MISSING, attributes=(("service_id", service_id),)))

    def _agent_changed(self, info: AgentInfo) -> None:
        """On the loop's thread: the agent answers again, maybe another one."""
        assert self.loop is not None
        settings = self.settings_for(info)
        if settings != self.loop.builder.settings:
            self.loop.builder.settings = settings
            self.loop.remap_everything()

    def reload_token(self) -> None:
        """SIGHUP, on the loop's thread: re-read the token file for every client of Consul."""
        if not self.config.token_file:
            logger.info("SIGHUP: full reconcile (no CONSUL_HTTP_TOKEN_FILE to re-read)")
            return
        try:
            token, _ = read_token({"CONSUL_HTTP_TOKEN_FILE": self.config.token_file})
        except TokenError as error:
            logger.error("SIGHUP: {}; keeping the current token", error)
            return
        logs.add_secret(token or "")
        for registry in (self.registry, *self.mirror_registries):
            if hasattr(registry, "set_token"):
                registry.set_token(token)
        logger.info("SIGHUP: token re-read from {}; full reconcile", self.config.token_file)

    # -- run and stop ---------------------------------------------------------------

    def run(self) -> int:
        info = self.connect()
        if info is None:
            return 0 if self._stop_asked() else 1
        self.loop = self.build(info)
        self.docker.follow_events(self._post, self.stopping, retry_interval=self.config.retry_interval_ms / 1000)
        self.loop.probes.start()
        for mirror in self.loop.mirrors:
            mirror.start()
        if self.watch is not None:
            self.watch.start()
        try:
            self.loop.run()
        finally:
            self.shutdown()
        return 0

    def _stop_asked(self) -> bool:
        while True:
            try:
                if self.early_inbox.get_nowait().action == STOP:
                    return True
            except queue.Empty:
                return False

    def shutdown(self) -> None:
        assert self.loop is not None
        self.stopping.set()
        if self.watch is not None:
            self.watch.stop()
        self.loop.probes.stop()
        if self.loop.env_reader is not None:
            self.loop.env_reader.stop()
        if self.config.deregister_on_exit:
            self._deregister_everything()
        for mirror in self.loop.mirrors:
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
                "".join(f", mirror {m.description}" for m in daemon.mirror_registries))
    status = None
    if config.status_addr:
        from consul_reg.app.status import StatusServer, StatusSources

        status = StatusServer(config.status_addr, StatusSources(
            snapshot=lambda: daemon.loop.snapshot if daemon.loop is not None else Snapshot(),
            docker=daemon.docker.liveness, agent=daemon.agent_liveness,
            mirrors=lambda: {m.registry.description: m.state for m in (daemon.loop.mirrors if daemon.loop else [])},
            metrics=daemon.metrics, hostname=config.owner))
        status.start()
    try:
        return daemon.run()
    finally:
        if status is not None:
            status.stop()
        daemon.registry.close()
        daemon.docker.close()

