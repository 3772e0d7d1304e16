"""ZooKeeper refusing one node (someone else's ACL on `/services/<name>`, an
ephemeral parent): the real ZooKeeperRegistry on a fake kazoo client, driven
step by step by its MirrorWorker on a fake clock. The refused node costs
that node only: the others are written, the mirror stays up, one warning per
node and cause, and it is tried again quietly every REFUSED_RETRY_SECONDS;
only a lost connection or session takes the mirror down. A call kazoo never
answers takes the mirror down after CALL_SECONDS, never holding its thread."""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import pytest
from kazoo.exceptions import (
    ConnectionLoss,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
)
from kazoo.client import KazooState
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat
from loguru import logger

from consul_reg.mirrors.worker import REFUSED_RETRY_SECONDS, MirrorWorker
from consul_reg.core.records import Service
from consul_reg.mirrors import zookeeper
from consul_reg.mirrors.zookeeper import CALL_SECONDS, FRESH_SESSION_AFTER_SECONDS, ZooKeeperRegistry
from consul_reg.core.snapshot import Snapshot
from tests.unit.fakes import FakeClock

SESSION = 0x51
FOREIGN = 0x99


class FakeKazoo:
    """A znode tree in memory, with the parts of ZooKeeper's rules the registry meets:
    a parent's ACL (`denied`: no CREATE, READ nor DELETE under it), ephemeral nodes
    without children, versions. `calls` counts the writes tried."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[bytes, int, int]] = {"/": (b"", 0, 0)}  # path -> (data, owner, version)
        self.denied: set[str] = set()
        self.connected = True
        self.client_id = (SESSION, b"")
        self.calls: list[tuple[str, str]] = []
        self.lost = False
        # Every call queued and never answered, as kazoo does with one made while it
        # reconnects to a server that refuses its session (a wiped server).
        self.unanswered = False
        self.timeouts: list[float | None] = []  # what each answer was waited for

    def _answer(self, call, *args, **kwargs) -> FakeAnswer:
        return FakeAnswer(self, lambda: call(*args, **kwargs))

    def exists_async(self, *args, **kwargs) -> FakeAnswer:
        return self._answer(self.exists, *args, **kwargs)

    def get_children_async(self, *args, **kwargs) -> FakeAnswer:
        return self._answer(self.get_children, *args, **kwargs)

    def get_async(self, *args, **kwargs) -> FakeAnswer:
        return self._answer(self.get, *args, **kwargs)

    def create_async(self, *args, **kwargs) -> FakeAnswer:
        return self._answer(self.create, *args, **kwargs)

    def set_async(self, *args, **kwargs) -> FakeAnswer:
        return self._answer(self.set, *args, **kwargs)

    def delete_async(self, *args, **kwargs) -> FakeAnswer:
        return self._answer(self.delete, *args, **kwargs)

    def ensure_path_async(self, path: str) -> FakeAnswer:
        return self._answer(lambda: path in self.nodes or bool(self.create(path, b"", makepath=True)))

    def _check_connection(self) -> None:
        if self.lost:
            raise ConnectionLoss()

    def _stat(self, path: str) -> ZnodeStat:
        _, owner, version = self.nodes[path]
        return ZnodeStat(0, 0, 0, 0, version, 0, 0, owner, 0, 0, 0)

    def exists(self, path: str) -> ZnodeStat | None:  # needs no permission in ZooKeeper
        self._check_connection()
        return self._stat(path) if path in self.nodes else None

    def get_children(self, path: str) -> list[str]:
        self._check_connection()
        if path not in self.nodes:
            raise NoNodeError()
        if path in self.denied:
            raise NoAuthError()
        prefix = path.rstrip("/") + "/"
        return [p[len(prefix):] for p in self.nodes if p.startswith(prefix) and "/" not in p[len(prefix):]]

    def get(self, path: str) -> tuple[bytes, ZnodeStat]:
        self._check_connection()
        if path not in self.nodes:
            raise NoNodeError()
        return self.nodes[path][0], self._stat(path)

    def create(self, path: str, value: bytes, ephemeral: bool = False, makepath: bool = False) -> str:
        self.calls.append(("create", path))
        self._check_connection()
        parent = path.rsplit("/", 1)[0] or "/"
        if parent not in self.nodes:
            if not makepath:
                raise NoNodeError()
            self.create(parent, b"", makepath=True)
        if parent in self.denied:
            raise NoAuthError()
        if self.nodes[parent][1]:
            raise NoChildrenForEphemeralsError()
        if path in self.nodes:
            raise NodeExistsError()
        self.nodes[path] = (value, SESSION if ephemeral else 0, 0)
        return path

    def set(self, path: str, value: bytes, version: int = -1) -> ZnodeStat:
        self.calls.append(("set", path))
        self._check_connection()
        _, owner, current = self.nodes[path]
        self.nodes[path] = (value, owner, current + 1)
        return self._stat(path)

    def delete(self, path: str, version: int = -1) -> None:
        self.calls.append(("delete", path))
        self._check_connection()
        if path.rsplit("/", 1)[0] in self.denied:
            raise NoAuthError()
        del self.nodes[path]

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeAnswer:
    """kazoo's IAsyncResult for one call: its `get(timeout)` answers at once, or,
    while the fake's calls go unanswered, raises what kazoo raises once the timeout
    passed (KazooTimeoutError); with no timeout it would wait for ever (an error here)."""

    def __init__(self, kazoo: FakeKazoo, call) -> None:
        self._kazoo, self._call = kazoo, call

    def get(self, block: bool = True, timeout: float | None = None):
        self._kazoo.timeouts.append(timeout)
        if self._kazoo.unanswered:
            if timeout is None:
                raise AssertionError("waited for ever for a call kazoo never answers")
            raise KazooTimeoutError()
        return self._call()


def service(name: str, port: int) -> Service:
    return Service(id=f"h:c-{name}:{port}", name=name, address="10.0.0.1", port=port, container_id=f"c-{name}")


def snapshot(generation: int, *services: Service) -> Snapshot:
    return Snapshot(generation=generation, desired=MappingProxyType({s.id: s for s in services}))


def step(worker: MirrorWorker) -> None:
    """One step of the worker's thread, on the caller's."""
    taken, relist = worker._offer, worker._relist
    worker._relist = False
    assert taken is not None
    worker._step(taken, relist)


@pytest.fixture
def zk():
    fake = FakeKazoo()
    registry = ZooKeeperRegistry("127.0.0.1", 1, "services", "h")
    registry._client.close()
    registry._client = fake  # type: ignore[assignment]
    registry._started = True
    clock = FakeClock()
    worker = MirrorWorker(registry, "h", retry_interval=0.05, clock=clock)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    yield fake, worker, clock, warnings
    logger.remove(sink)


def mine(fake: FakeKazoo) -> set[str]:
    return {path for path, (_, owner, _) in fake.nodes.items() if owner == SESSION}


@pytest.mark.parametrize("refusal", ["acl", "ephemeral parent"])
def test_one_refused_node_leaves_the_others_written_and_is_warned_once(zk, refusal: str) -> None:
    fake, worker, clock, warnings = zk
    fake.nodes["/services"] = (b"", 0, 0)
    if refusal == "acl":  # someone else's ACL on /services/payments: no READ, no CREATE for this daemon
        fake.nodes["/services/payments"] = (b"", 0, 0)
        fake.denied.add("/services/payments")
        cause = "NoAuthError"
    else:  # another session's ephemeral node where the daemon's parent node would be
        fake.nodes["/services/payments"] = (b"", FOREIGN, 0)
        cause = "NoChildrenForEphemeralsError"
    # The refused service is planned between the others: nothing after it may be lost.
    services = [service("api", 80), service("payments", 81), service("web", 82)]
    worker.offer(snapshot(1, *services), relist=True)
    step(worker)
    assert mine(fake) == {"/services/api/10.0.0.1:80", "/services/web/10.0.0.1:82"}
    assert worker.state == "up" and worker._applied == 1
    assert len(warnings) == 1 and "/services/payments/10.0.0.1:81 not written" in warnings[0] \
        and cause in warnings[0], warnings

    # Later passes (another container came) neither warn again nor try the refused node again...
    tries = fake.calls.count(("create", "/services/payments/10.0.0.1:81"))
    worker.offer(snapshot(2, *services, service("db", 83)))
    step(worker)
    assert "/services/db/10.0.0.1:83" in mine(fake)
    assert fake.calls.count(("create", "/services/payments/10.0.0.1:81")) == tries
    # ...until the retry time: then it is tried again, quietly, and the mirror stays up.
    assert worker._due_in() == REFUSED_RETRY_SECONDS
    clock.advance(REFUSED_RETRY_SECONDS)
    assert worker._due_in() == 0
    step(worker)
    assert fake.calls.count(("create", "/services/payments/10.0.0.1:81")) == tries + 1
    assert worker.state == "up" and len(warnings) == 1, warnings

    # The owner lifts the refusal: the node is written at the next retry, and nothing is left to retry.
    fake.denied.clear()
    del fake.nodes["/services/payments"]
    clock.advance(REFUSED_RETRY_SECONDS)
    step(worker)
    assert "/services/payments/10.0.0.1:81" in mine(fake)
    assert worker._due_in() == 3600.0 and worker._refused == {}


def test_a_new_cause_for_the_same_node_is_warned_again(zk) -> None:
    fake, worker, clock, warnings = zk
    fake.nodes["/services"] = (b"", 0, 0)
    fake.nodes["/services/payments"] = (b"", 0, 0)
    fake.denied.add("/services/payments")
    worker.offer(snapshot(1, service("payments", 81)), relist=True)
    step(worker)
    fake.denied.clear()
    fake.nodes["/services/payments"] = (b"", FOREIGN, 0)  # now an ephemeral parent instead
    clock.advance(REFUSED_RETRY_SECONDS)
    step(worker)
    assert [w.split(": ", 2)[2].split(":")[0] for w in warnings] == ["NoAuthError", "NoChildrenForEphemeralsError"], \
        warnings


def test_a_node_that_cannot_be_removed_is_warned_once_and_the_others_go(zk) -> None:
    fake, worker, clock, warnings = zk
    web, payments = service("web", 80), service("payments", 81)
    worker.offer(snapshot(1, web, payments), relist=True)
    step(worker)
    assert len(mine(fake)) == 2
    fake.denied.add("/services/payments")  # someone else's ACL put on the parent since: no DELETE under it
    worker.offer(snapshot(2))  # both containers gone
    step(worker)
    assert mine(fake) == {"/services/payments/10.0.0.1:81"} and worker.state == "up"
    worker.offer(snapshot(3, service("api", 82)))
    step(worker)
    clock.advance(REFUSED_RETRY_SECONDS)
    step(worker)
    assert fake.calls.count(("delete", "/services/payments/10.0.0.1:81")) == 2  # once, then at the retry
    assert "/services/api/10.0.0.1:82" in mine(fake) and worker.state == "up"
    assert len(warnings) == 1 and "could not be removed" in warnings[0] and "NoAuthError" in warnings[0], warnings


def test_a_node_this_daemon_may_not_read_is_never_taken_for_free(zk) -> None:
    """A foreign node whose data cannot be read is still listed by its stat: left as it is."""
    fake, worker, clock, warnings = zk
    fake.nodes["/services"] = (b"", 0, 0)
    fake.nodes["/services/web"] = (b"", 0, 0)
    fake.nodes["/services/web/10.0.0.1:80"] = (b"theirs", FOREIGN, 0)
    original = fake.get
    fake.get = lambda path: (_ for _ in ()).throw(NoAuthError()) if path.endswith(":80") else original(path)
    worker.offer(snapshot(1, service("web", 80)), relist=True)
    step(worker)
    assert fake.nodes["/services/web/10.0.0.1:80"] == (b"theirs", FOREIGN, 0)
    assert ("create", "/services/web/10.0.0.1:80") not in fake.calls and worker.state == "up"
    assert len(warnings) == 1 and "is held by ZooKeeper session 0x99" in warnings[0], warnings


def test_only_a_lost_connection_takes_the_mirror_down(zk) -> None:
    fake, worker, clock, warnings = zk
    worker.offer(snapshot(1, service("web", 80)), relist=True)
    step(worker)
    fake.lost = True
    worker.offer(snapshot(2, service("web", 80), service("api", 81)))
    step(worker)
    assert worker.state == "down" and worker._refused == {}
    assert len(warnings) == 1 and "is down" in warnings[0] and "ConnectionLoss" in warnings[0], warnings


def test_a_call_kazoo_never_answers_takes_the_mirror_down_then_it_catches_up(zk) -> None:
    """kazoo queues a call made while it reconnects, and a wiped server refuses its session
    for ever: the call is given up after CALL_SECONDS, the mirror is down (its thread free
    for the fresh session), and once calls are answered again everything is written."""
    fake, worker, clock, warnings = zk
    worker.offer(snapshot(1, service("api", 80)), relist=True)
    step(worker)
    assert mine(fake) == {"/services/api/10.0.0.1:80"} and worker.state == "up"
    fake.unanswered = True
    fake.timeouts.clear()
    worker.offer(snapshot(2, service("api", 80), service("web", 81)))
    step(worker)  # returns: a call without an answer never holds the worker
    assert worker.state == "down" and any("KazooTimeoutError" in w for w in warnings), warnings
    assert fake.timeouts and set(fake.timeouts) == {CALL_SECONDS}
    assert worker._due_in() is not None and worker._due_in() > 0, "retried on the backoff, not in a tight loop"
    fake.unanswered = False
    clock.advance(worker._due_in())
    step(worker)
    assert worker.state == "up"
    assert mine(fake) == {"/services/api/10.0.0.1:80", "/services/web/10.0.0.1:81"}


class ListeningKazoo(FakeKazoo):
    """A KazooClient stand-in with its state listeners: each one is a server of its own,
    empty (a fresh session on a wiped server); `start` connects, `stop` says LOST."""

    def __init__(self, hosts: str = "", timeout: float = 10.0, connection_retry=None) -> None:
        super().__init__()
        self.connected = False
        self.listeners: list = []

    def add_listener(self, listener) -> None:
        self.listeners.append(listener)

    def tell(self, state: str) -> None:
        for listener in self.listeners:
            listener(state)

    def start(self, timeout: float = 15.0) -> None:
        self.connected = True
        self.tell(KazooState.CONNECTED)

    def stop(self) -> None:
        self.connected = False
        self.tell(KazooState.LOST)


def test_after_a_fresh_session_the_old_clients_end_is_not_taken_for_an_outage(monkeypatch) -> None:
    """The server lost its data: a fresh session is opened 2 s into the outage and every
    node created again. Stopping the old client says LOST on its listener; taken for this
    mirror's state, it would start an outage clock on a connected mirror, and the worker
    would step without pause from 2 s later on (every step another fresh session)."""
    clock = FakeClock()
    monkeypatch.setattr(zookeeper, "KazooClient", ListeningKazoo)
    monkeypatch.setattr(zookeeper, "time", SimpleNamespace(monotonic=clock))
    registry = ZooKeeperRegistry("127.0.0.1", 1, "services", "h")
    worker = MirrorWorker(registry, "h", retry_interval=0.05, clock=clock)
    registry.listen(worker.poke)
    worker.offer(snapshot(1, service("api", 80)), relist=True)
    step(worker)
    old = registry._client
    assert mine(old) == {"/services/api/10.0.0.1:80"} and worker.state == "up"

    old.connected = False  # the server went away; it comes back empty and refuses the old session
    old.tell(KazooState.SUSPENDED)
    clock.advance(FRESH_SESSION_AFTER_SECONDS + 0.1)
    assert worker._due_in() == 0
    step(worker)
    fresh = registry._client
    assert fresh is not old and fresh.connected
    assert mine(fresh) == {"/services/api/10.0.0.1:80"} and worker.state == "up"

    clock.advance(FRESH_SESSION_AFTER_SECONDS + 5)
    assert registry.seconds_until_maintenance() == 3600.0
    assert worker._due_in() == 3600.0, "an idle mirror sleeps: no step until the next offer"
