"""Secondary registries (Consul KV, etcd, SkyDNS2, ZooKeeper), one thread each.

The sync loop hands every mirror the latest desired services (a snapshot,
never a queue: a mirror that was down only needs the newest state). Each
mirror reconciles on its own thread, with the same plan as the primary
(desired against what it holds under its prefix, minimal writes, only its
own keys removed), so a mirror that is down or slow never delays the
primary or the other mirrors; it catches up when back.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from loguru import logger

from consul_reg.model import MARKER_DIGEST_KEY, MARKER_HOST_KEY, MARKER_SOURCE_KEY, MARKER_SOURCE_VALUE
from consul_reg.model import RegisteredService, Service
from consul_reg.reconcile import Plan, apply, plan
from consul_reg.registries.base import RegistryError

MAX_BACKOFF_SECONDS = 30.0


class MirrorRegistry(Protocol):
    description: str

    def key_of(self, service: Service) -> str: ...
    def accepts(self, service: Service) -> str: ...
    def digest_of(self, service: Service) -> str: ...
    def maintain(self) -> bool: ...
    def seconds_until_maintenance(self) -> float: ...
    def services(self) -> dict[str, RegisteredService]: ...
    def register(self, service: Service) -> None: ...
    def deregister(self, service: RegisteredService) -> None: ...
    def close(self) -> None: ...


class MirrorWorker:
    def __init__(self, registry: MirrorRegistry, hostname: str, retry_interval: float) -> None:
        self.registry = registry
        self.hostname = hostname
        self.retry_interval = retry_interval
        self.state = "starting"
        self.metrics: Any = None  # status.Metrics, when the daemon has one
        self._desired: dict[str, Service] | None = None
        self._kept: tuple[Service, ...] = ()  # records -deregister on-success keeps for failed containers
        self._relist = True
        self._actual: dict[str, RegisteredService] | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._backoff = retry_interval
        self._retry_at = 0.0
        self._skipped: dict[str, str] = {}  # service ID -> why this mirror cannot hold it (warned once)
        self._thread = threading.Thread(target=self._run, name=f"mirror {registry.description}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, desired: dict[str, Service], relist: bool = False, kept: tuple[Service, ...] = ()) -> None:
        with self._wake:
            self._desired = dict(desired)
            self._kept = kept
            self._relist = self._relist or relist
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.registry.close()

    def _run(self) -> None:
        while True:
            with self._wake:
                timeout = max(0.05, min(self.registry.seconds_until_maintenance(),
                                        max(self._retry_at - time.monotonic(), 0.0) or 3600.0))
                self._wake.wait(timeout)
                if self._stopping:
                    return
                desired, relist, kept = self._desired, self._relist, self._kept
                self._relist = False
            if desired is None or time.monotonic() < self._retry_at:
                continue
            try:
                self._sync(desired, relist, kept)
                if self.state != "up":
                    logger.bind(registry=self.registry.description).info("mirror {} is up", self.registry.description)
                self.state = "up"
                self._backoff = self.retry_interval
            except RegistryError as error:
                if self.state != "down":
                    logger.bind(registry=self.registry.description).warning(
                        "mirror {} is down: {}; it catches up when back", self.registry.description, error)
                self.state = "down"
                self._actual = None
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception:  # a mirror's bug must never reach the primary
                logger.exception("mirror {} failed unexpectedly; relisting", self.registry.description)
                self._actual = None
                self._retry_at = time.monotonic() + self._backoff

    def _sync(self, desired: dict[str, Service], relist: bool, kept: tuple[Service, ...] = ()) -> None:
        if self.registry.maintain() or relist:
            self._actual = None
        if self._actual is None:
            self._actual = self.registry.services()
        wanted: dict[str, Service] = {}
        for service_id, service in desired.items():
            refusal = self.registry.accepts(service)
            if refusal:
                if self._skipped.get(service_id) != refusal:
                    logger.warning("{}: skipping {}: {}", self.registry.description, service_id, refusal)
                    self._skipped[service_id] = refusal
                continue
            wanted[service_id] = service
        todo = plan(wanted, self._actual, self.hostname, key_of=self.registry.key_of,
                    digest_of=self.registry.digest_of)
        protected = {self.registry.key_of(service) for service in kept}
        todo = Plan(todo.register, tuple(r for r in todo.deregister if r.id not in protected))
        if not todo:
            return
        result = apply(todo, self.registry, self.registry.description)
        if self.metrics is not None:
            self.metrics.applied(self.registry.description, len(result.registered), len(result.deregistered),
                                 len(result.failed))
        for service in result.registered:
            key = self.registry.key_of(service)
            self._actual[key] = RegisteredService(id=key, name=service.name, meta={
                MARKER_SOURCE_KEY: MARKER_SOURCE_VALUE, MARKER_HOST_KEY: self.hostname,
                MARKER_DIGEST_KEY: self.registry.digest_of(service)})
        for gone in result.deregistered:
            self._actual.pop(gone.id, None)
        if result.unavailable:
            raise RegistryError(result.unavailable)
