"""The Consul KV mirror through the project's Consul client against an in-memory
KV on 127.0.0.1: every write and removal a check-and-set on the ModifyIndex the
owner was read at, keys told apart by their owner tag (Flags), and this host's
default IDs taken back from whoever wrote them, never removed."""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

import pytest
from consul_reg.consul.agent import ConsulClient, ConsulEndpoint
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.core.records import Owner, RegisteredService, Service
from consul_reg.core.snapshot import Snapshot
from consul_reg.mirrors.consulkv import CAS_TRIES, ConsulKVRegistry
from consul_reg.mirrors.keys import HOLDER_KEY, owner_tag
from consul_reg.mirrors.worker import MirrorWorker

from tests.unit.fakes import FakeClock
from tests.unit.kv_stubs import Request, StubConsul

HOST, OTHER = Owner("h"), Owner("h2")
OURS, THEIRS = owner_tag(HOST), owner_tag(OTHER)


@pytest.fixture
def consul() -> Iterator[StubConsul]:
    stub = StubConsul()
    yield stub
    stub.close()


def mirror(consul: StubConsul, owner: str = HOST) -> ConsulKVRegistry:
    return ConsulKVRegistry(ConsulClient(ConsulEndpoint("http", "127.0.0.1", consul.port)), "svc", owner)


def web(sid: str, address: str = "10.0.0.1", port: int = 80) -> Service:
    return Service(id=sid, name="web", address=address, port=port)


def writes(consul: StubConsul, method: str = "PUT") -> list[Request]:
    return [r for r in consul.requests if r.method == method]


def before_each(consul: StubConsul, method: str, action) -> None:
    def before(request: Request) -> None:
        if request.method == method:
            action()
    consul.before = before


def before_first(consul: StubConsul, method: str, action) -> None:
    done: list[bool] = []

    def before(request: Request) -> None:
        if request.method == method and not done:
            done.append(True)
            action()
    consul.before = before


# -- writes ------------------------------------------------------------------------------------


def test_a_new_key_is_written_only_while_absent_with_our_owner_tag(consul) -> None:
    mirror(consul).register(web("web-1"))
    assert consul.value("svc/web/web-1") == ("10.0.0.1:80", OURS)
    (put,) = writes(consul)
    assert put.query == {"flags": str(OURS), "cas": "0"}


def test_a_key_another_host_created_since_the_read_is_never_written_over(consul) -> None:
    before_first(consul, "PUT", lambda: consul.write("svc/web/web-1", "192.0.2.9:1", THEIRS))
    with pytest.raises(RegistryNotOurs, match=f"svc/web/web-1 is held by another host's consul-reg \\(owner tag "
                                              f"{THEIRS}, value '192.0.2.9:1'\\)"):
        mirror(consul).register(web("web-1"))
    assert consul.value("svc/web/web-1") == ("192.0.2.9:1", THEIRS)


def test_our_key_is_rewritten_on_the_index_it_was_read_at(consul) -> None:
    index = consul.write("svc/web/web-1", "10.0.0.1:80", OURS)
    mirror(consul).register(web("web-1", port=8080))
    assert consul.value("svc/web/web-1") == ("10.0.0.1:8080", OURS)
    (put,) = writes(consul)
    assert put.query == {"flags": str(OURS), "cas": str(index)}


def test_our_key_taken_by_another_host_since_the_read_is_left_to_it(consul) -> None:
    consul.write("svc/web/web-1", "10.0.0.1:80", OURS)
    before_first(consul, "PUT", lambda: consul.write("svc/web/web-1", "192.0.2.9:1", THEIRS))
    with pytest.raises(RegistryNotOurs, match="is held by another host's consul-reg"):
        mirror(consul).register(web("web-1", port=8080))
    assert consul.value("svc/web/web-1") == ("192.0.2.9:1", THEIRS)


def test_a_key_another_host_holds_is_not_even_tried(consul) -> None:
    consul.write("svc/web/web-1", "192.0.2.9:1", THEIRS)
    with pytest.raises(RegistryNotOurs):
        mirror(consul).register(web("web-1"))
    assert writes(consul) == [] and consul.value("svc/web/web-1") == ("192.0.2.9:1", THEIRS)


def test_a_key_that_changes_at_every_try_is_left_after_the_last(consul) -> None:
    consul.write("svc/web/web-1", "10.0.0.1:80", OURS)
    before_each(consul, "PUT", lambda: consul.write("svc/web/web-1", "10.0.0.1:80", OURS))
    with pytest.raises(RegistryNotOurs, match=f"changed under this daemon at each of {CAS_TRIES} tries"):
        mirror(consul).register(web("web-1", port=8080))
    assert len(writes(consul)) == CAS_TRIES and consul.value("svc/web/web-1") == ("10.0.0.1:80", OURS)


# -- removals ----------------------------------------------------------------------------------


def listed(consul: StubConsul, key: str, owner: str = HOST) -> RegisteredService:
    return mirror(consul, owner).services()[key]


def test_our_key_is_removed_on_the_index_it_was_read_at(consul) -> None:
    index = consul.write("svc/web/web-1", "10.0.0.1:80", OURS)
    mirror(consul).deregister(listed(consul, "svc/web/web-1"))
    assert "svc/web/web-1" not in consul.kv
    (delete,) = writes(consul, "DELETE")
    assert delete.query == {"cas": str(index)}


def test_a_key_taken_since_the_read_is_never_removed(consul) -> None:
    consul.write("svc/web/web-1", "10.0.0.1:80", OURS)
    record = listed(consul, "svc/web/web-1")
    before_first(consul, "DELETE", lambda: consul.write("svc/web/web-1", "192.0.2.9:1", THEIRS))
    with pytest.raises(RegistryNotOurs, match="svc/web/web-1 is now held by another host's consul-reg"):
        mirror(consul).deregister(record)
    assert consul.value("svc/web/web-1") == ("192.0.2.9:1", THEIRS)


@pytest.mark.parametrize("flags", [THEIRS, 0])
def test_a_key_someone_else_wrote_is_never_removed(consul, flags: int) -> None:
    consul.write("svc/web/web-1", "192.0.2.9:1", flags)
    with pytest.raises(RegistryNotOurs, match="not removed"):
        mirror(consul).deregister(RegisteredService(id="svc/web/web-1", name="web"))
    assert writes(consul, "DELETE") == [] and consul.value("svc/web/web-1") == ("192.0.2.9:1", flags)


def test_a_key_already_gone_is_removed_without_a_write(consul) -> None:
    mirror(consul).deregister(RegisteredService(id="svc/web/web-1", name="web"))
    assert writes(consul, "DELETE") == []


# -- listing and the default IDs ----------------------------------------------------------------


def test_the_listing_tells_ours_from_others_and_stays_in_its_folder(consul) -> None:
    consul.write("svc/web/mine", "10.0.0.1:80", OURS)
    consul.write("svc/web/theirs", "192.0.2.9:1", THEIRS)
    consul.write("svc/web/by-hand", "192.0.2.9:2", 0)
    consul.write("svc/old/h:old:80", "10.0.0.1:82", 0)  # ours, written before owner tags
    consul.write("svc/web/h:web:80", "192.0.2.9:3", THEIRS)  # our default ID, taken: listed as absent
    consul.write("svc2/web/mine", "10.0.0.1:80", OURS)  # shares the text, not the folder
    found = mirror(consul).services()
    assert sorted(found) == ["svc/old/h:old:80", "svc/web/by-hand", "svc/web/mine", "svc/web/theirs"]
    assert {k for k, r in found.items() if r.owned_by(HOST)} == {"svc/old/h:old:80", "svc/web/mine"}
    assert found["svc/web/theirs"].meta[HOLDER_KEY] == f"another host's consul-reg (owner tag {THEIRS}, value " \
        "'192.0.2.9:1')"
    assert found["svc/web/by-hand"].meta[HOLDER_KEY] == "a writer other than consul-reg (Flags 0, value " \
        "'192.0.2.9:2')"


def test_the_rightful_host_takes_its_default_id_back_on_its_index_and_never_removes_it(consul) -> None:
    index = consul.write("svc/web/h:web:80", "192.0.2.9:1", THEIRS)
    registry = mirror(consul)
    registry.remove_all()  # -deregister-on-exit: it did not write it
    assert consul.value("svc/web/h:web:80") == ("192.0.2.9:1", THEIRS)
    with pytest.raises(RegistryNotOurs):  # another --instance of the host takes nothing back
        mirror(consul, Owner("h", "blue")).register(web("h:web:80"))
    registry.register(web("h:web:80", port=32768))
    assert consul.value("svc/web/h:web:80") == ("10.0.0.1:32768", OURS)
    assert writes(consul)[-1].query == {"flags": str(OURS), "cas": str(index)}


def test_remove_all_removes_only_our_keys(consul) -> None:
    consul.write("svc/web/mine", "10.0.0.1:80", OURS)
    consul.write("svc/old/h:old:80", "10.0.0.1:82", 0)
    consul.write("svc/web/theirs", "192.0.2.9:1", THEIRS)
    mirror(consul).remove_all()
    assert sorted(consul.kv) == ["svc/web/theirs"]


def test_the_identity_is_the_agents_node_id(consul) -> None:
    registry = mirror(consul)
    assert registry.identity() == "node-1"
    consul.node_id = "node-2"  # an agent that came back empty
    assert registry.identity() == "node-2"


# -- through the worker ------------------------------------------------------------------------


def test_the_worker_puts_everything_back_after_the_agent_lost_its_kv(consul) -> None:
    clock = FakeClock()
    registry = mirror(consul)
    worker = MirrorWorker(registry, HOST, retry_interval=0.05, clock=clock)
    worker.offer(Snapshot(generation=1, desired=MappingProxyType({"web-1": web("web-1")})), relist=True)
    step(worker)
    assert consul.value("svc/web/web-1") == ("10.0.0.1:80", OURS) and worker._due_in() == 3600.0
    consul.kv.clear()
    worker.poke()  # what the identity watch does on a new node ID
    assert worker._due_in() == 0
    step(worker)
    assert consul.value("svc/web/web-1") == ("10.0.0.1:80", OURS)


def step(worker: MirrorWorker) -> None:
    """One step of the worker's thread, on the caller's."""
    snapshot, relist = worker._offer, worker._relist
    worker._relist = False
    assert snapshot is not None
    worker._step(snapshot, relist)
