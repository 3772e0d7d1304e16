"""Secondary registries (Consul KV, etcd, SkyDNS2, ZooKeeper), one thread each.

The sync loop offers every mirror each new Snapshot (never a queue: a mirror
that was down only needs the newest). Each worker reconciles on its own
thread with the same plan as the primary (desired against what it holds
under its prefix, minimal writes, only its own keys written or removed), so
a mirror that is down or slow never delays the primary or the others.
Offers are numbered: one that arrives while the worker is writing is applied
right after that write, never lost. A record the registry refuses on its own
(a ZooKeeper node under someone else's ACL) costs that record only: warned
once per record and cause, tried again quietly every REFUSED_RETRY_SECONDS.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from loguru import logger

from consul_reg.core.backoff import Backoff, Clock
from consul_reg.core.errors import RegistryError, RegistryNotOurs, RegistryRefused
from consul_reg.core.plan import Plan, apply, plan
from consul_reg.core.protocols import LoopMetrics, MirrorRegistry, NoMetrics
from consul_reg.core.records import MARKER_DIGEST_KEY, RegisteredService, Service, owner_meta
from consul_reg.core.snapshot import Snapshot
from consul_reg.mirrors.keys import HOLDER_KEY

MAX_BACKOFF_SECONDS = 2.0  # a mirror that comes back converges within seconds
BLOCKED_RETRY_SECONDS = 5.0  # keys held by someone else (an old session, lease) are looked at again
REFUSED_RETRY_SECONDS = 30.0  # a node the registry refused (someone else's ACL) is tried again, quietly
STOP_DEADLINE_SECONDS = 5.0
WATCH_UP_SECONDS, WATCH_DOWN_SECONDS = 2.0, 0.5  # how often a registry's identity is looked at


class MirrorWorker:
    def __init__(self, registry: MirrorRegistry, hostname: str, retry_interval: float,
                 clock: Clock = time.monotonic, metrics: LoopMetrics = NoMetrics()) -> None:
        self.registry = registry
        self.hostname = hostname
        self.state = "starting"
        self.metrics = metrics
        self._clock = clock
        self._backoff = Backoff(min(retry_interval, MAX_BACKOFF_SECONDS), MAX_BACKOFF_SECONDS, clock)
        self._wake = threading.Condition()
        self._offer: Snapshot | None = None
        self._offered = 0  # generation of the newest offer
        self._applied = 0  # generation last written in full
        self._relist = True
        self._stopping = False
        self._stopped = threading.Event()  # the watch thread sleeps on this, never on the worker's condition
        self._remove_all = False
        self._blocked_since: float | None = None
        self._actual: dict[str, RegisteredService] | None = None
        self._skipped: dict[str, str] = {}  # service ID -> why this mirror cannot hold it (warned once)
        self._blocked: dict[str, str] = {}  # key -> warned
        self._refused: dict[str, _Refusal] = {}  # key -> why the registry refused it (warned once per cause)
        self._refused_retry_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"mirror {registry.description}", daemon=True)
        registry.listen(self.poke)

    def start(self) -> None:
        self._thread.start()
        if self.registry.replaceable:  # an agent's KV, which may restart empty
            threading.Thread(target=self._watch, name=f"watch {self.registry.description}", daemon=True).start()

    def _watch(self) -> None:
        """Pokes the worker when the registry comes back after an outage or was
        replaced (an agent that restarted empty). A cheap local read every few
        seconds: no load on the servers, whatever the number of hosts."""
        known: str | None = None
        failing = False
        while not self._stopping:
            try:
                identity = self.registry.identity()
            except Exception as error:
                if not failing:
                    logger.debug("{}: not answering: {}", self.registry.description, error)
                failing = True
            else:
                if failing or (known is not None and identity != known):
                    self.poke()
                known, failing = identity, False
            self._stopped.wait(WATCH_UP_SECONDS if not failing else WATCH_DOWN_SECONDS)

    def offer(self, snapshot: Snapshot, relist: bool = False) -> None:
        with self._wake:
            self._offer = snapshot
            self._offered = snapshot.generation
            self._relist = self._relist or relist
            self._wake.notify()

    def stop(self, remove_all: bool = False) -> None:
        """Stop the thread; with `remove_all` (-deregister-on-exit) remove every
        record of this daemon first, within a deadline."""
        with self._wake:
            self._stopping = True
            self._remove_all = remove_all
            self._wake.notify()
        self._stopped.set()
        self._thread.join(timeout=STOP_DEADLINE_SECONDS + 1)
        try:
            self.registry.close()
        except Exception:  # closing a client whose server is gone must not fail the shutdown
            pass

    # -- the worker thread -----------------------------------------------------

    def poke(self) -> None:
        """The registry noticed something (reconnected, lost its session): look at once."""
        with self._wake:
            self._relist = True
            self._backoff.succeeded()
            self._wake.notify()

    def _pending(self) -> bool:
        return self._offered > self._applied or self._relist

    def _due_in(self) -> float | None:
        """Seconds until the worker must step; None: nothing to do before an offer."""
        if self._offer is None:
            return None
        now = self._clock()
        if not self._backoff.ready():
            return (self._backoff.retry_at or now) - now
        if self._pending():
            return 0.0
        waits = [self.registry.seconds_until_maintenance()]
        if self._blocked_since is not None:
            waits.append(self._blocked_since + BLOCKED_RETRY_SECONDS - now)
        if self._refused_retry_at is not None:
            waits.append(self._refused_retry_at - now)
        return max(0.0, min(waits))

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping:
                    due_in = self._due_in()
                    if due_in is not None and due_in <= 0:
                        break
                    self._wake.wait(due_in)
                if self._stopping:
                    break
                snapshot, relist = self._offer, self._relist
                self._relist = False
            assert snapshot is not None
            self._step(snapshot, relist)
        if self._remove_all:
            self._remove_everything()

    def _step(self, snapshot: Snapshot, relist: bool) -> None:
        try:
            self._sync(snapshot, relist)
            if self.state != "up":
                logger.bind(registry=self.registry.description).info("mirror {} is up", self.registry.description)
            self.state = "up"
            self._backoff.succeeded()
            with self._wake:
                self._applied = max(self._applied, snapshot.generation)
        except RegistryError as error:
            if self.state != "down":
                logger.bind(registry=self.registry.description).warning(
                    "mirror {} is down: {}; it catches up when back", self.registry.description, error)
            self.state = "down"
            self._actual = None
            self._backoff.failed()
        except Exception:  # a mirror's bug must never reach the primary
            logger.exception("mirror {} failed unexpectedly; relisting", self.registry.description)
            self._actual = None
            self._backoff.failed()

    def _sync(self, snapshot: Snapshot, relist: bool) -> None:
        if self.registry.maintain() or relist or self._blocked_since is not None:
            self._actual = None
        if self._actual is None:
            self._actual = self.registry.services()
        wanted: dict[str, Service] = {}
        for service_id, service in snapshot.desired.items():
            refusal = self.registry.accepts(service)
            if refusal:
                if self._skipped.get(service_id) != refusal:
                    logger.warning("{}: skipping {}: {}", self.registry.description, service_id, refusal)
                    self._skipped[service_id] = refusal
                continue
            wanted[service_id] = service
        self._skipped = {k: v for k, v in self._skipped.items() if k in snapshot.desired}
        retrying = self._refused_retry_at is not None and self._clock() >= self._refused_retry_at
        todo = plan(wanted, self._actual, self.hostname, key_of=self.registry.key_of,
                    digest_of=self.registry.digest_of, skip_register={} if retrying else self._skip(wanted))
        protected = {self.registry.key_of(service) for service in snapshot.kept}
        if not retrying:
            protected |= {key for key, refusal in self._refused.items() if refusal.digest is None}
        todo = Plan(todo.register, tuple(r for r in todo.deregister if r.id not in protected), todo.blocked)
        self._note_blocked(todo)
        self._forget_refusals(wanted)
        if retrying:
            self._refused_retry_at = None
        if todo:
            self._apply(todo)
        if self._refused and self._refused_retry_at is None:
            self._refused_retry_at = self._clock() + REFUSED_RETRY_SECONDS
        elif not self._refused:
            self._refused_retry_at = None

    def _apply(self, todo: Plan) -> None:
        assert self._actual is not None
        contested = _Contested(self.registry)
        result = apply(todo, contested, self.registry.description)
        self.metrics.applied(self.registry.description, len(result.registered), len(result.deregistered),
                             len(result.failed))
        for service in result.registered:
            key = self.registry.key_of(service)
            self._actual[key] = RegisteredService(id=key, name=service.name, meta={
                **owner_meta(self.hostname), MARKER_DIGEST_KEY: self.registry.digest_of(service)})
            self._refused.pop(key, None)
        for gone in result.deregistered:
            self._actual.pop(gone.id, None)
            self._refused.pop(gone.id, None)
        self._note_refused(contested.refused)
        if len(result.failed) > contested.refusals:
            self._actual = None  # relist at the next step: a refused write may mean someone else holds it
        if contested.keys:  # taken by another host since the listing: apply warned; looked at again later
            self._blocked.update(dict.fromkeys(contested.keys, "warned"))
            self._blocked_since = self._clock()
        if result.unavailable:
            raise RegistryError(result.unavailable)

    def _skip(self, wanted: dict[str, Service]) -> dict[str, str]:
        """Services whose node the registry refused as they are now: not tried again
        before REFUSED_RETRY_SECONDS, unless their record changed."""
        skip = {}
        for service_id, service in wanted.items():
            refusal = self._refused.get(self.registry.key_of(service))
            if refusal is not None and refusal.digest is not None:
                skip[service_id] = refusal.digest
        return skip

    def _note_refused(self, refused: dict[str, _Refusal]) -> None:
        """One warning per node and cause: the same refusal at each retry is not repeated."""
        for key, refusal in refused.items():
            known = self._refused.get(key)
            if known is None or known.cause != refusal.cause:
                if refusal.digest is None:
                    logger.warning("{}: {} could not be removed: {}; tried again every {:g}s",
                                   self.registry.description, key, refusal.cause, REFUSED_RETRY_SECONDS)
                else:
                    logger.warning("{}: {} not written: {}; the other nodes are, and it is tried again every {:g}s",
                                   self.registry.description, key, refusal.cause, REFUSED_RETRY_SECONDS)
            self._refused[key] = refusal

    def _forget_refusals(self, wanted: dict[str, Service]) -> None:
        """A refusal is kept while its service is wanted, or while the node it could not
        remove is still listed as ours."""
        keys = {self.registry.key_of(service) for service in wanted.values()} | set(self._actual or ())
        self._refused = {key: refusal for key, refusal in self._refused.items() if key in keys}

    def _note_blocked(self, todo: Plan) -> None:
        keys = {self.registry.key_of(service): current for service, current in todo.blocked}
        for key, current in keys.items():
            if key not in self._blocked:
                spelling = "" if current.id == key else f" as {current.id} (a key that differs only in case)"
                logger.warning("{}: {} is held{} by {}: left as it is, not written (looked at again every {:g}s)",
                               self.registry.description, key, spelling,
                               current.meta.get(HOLDER_KEY, "another host, lease or session"), BLOCKED_RETRY_SECONDS)
        self._blocked = {key: "warned" for key in keys}
        self._blocked_since = self._clock() if keys else None

    def _remove_everything(self) -> None:
        try:
            self.registry.remove_all()
            logger.info("removed this daemon's records from {}", self.registry.description)
        except Exception as error:
            logger.error("could not remove this daemon's records from {}: {}", self.registry.description, error)


@dataclass(frozen=True)
class _Refusal:
    digest: str | None  # what was refused: this record (its digest), or None: the node's removal
    cause: str


class _Contested:
    """The registry as `apply` sees it, noting the keys a write found held by
    someone else (taken since the listing the plan was made from), and the
    nodes it refused."""

    def __init__(self, registry: MirrorRegistry) -> None:
        self._registry = registry
        self.description = registry.description
        self.keys: list[str] = []
        self.refused: dict[str, _Refusal] = {}
        self.refusals = 0  # calls refused (two services may share a node)

    def services(self) -> dict[str, RegisteredService]:
        return self._registry.services()

    def register(self, service: Service) -> None:
        try:
            self._registry.register(service)
        except RegistryNotOurs:
            self.keys.append(self._registry.key_of(service))
            raise
        except RegistryRefused as error:
            self.refused[self._registry.key_of(service)] = _Refusal(self._registry.digest_of(service), error.cause)
            self.refusals += 1
            raise

    def deregister(self, service: RegisteredService) -> None:
        try:
            self._registry.deregister(service)
        except RegistryRefused as error:
            self.refused[service.id] = _Refusal(None, error.cause)
            self.refusals += 1
            raise

    def close(self) -> None:
        self._registry.close()
