"""The etcd and SkyDNS2 mirrors against an in-memory etcd v3 gateway on a fake
clock: the lease (granted, kept alive at -ttl-refresh, a lost one replaced and
every key put again), compare-and-set transactions on mod_revision, and keys of
another host or lease never written or removed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType

import pytest
from consul_reg.core.errors import RegistryNotOurs
from consul_reg.core.records import Owner, RegisteredService, Service
from consul_reg.core.snapshot import Snapshot
from consul_reg.mirrors.etcd import LEASES_PREFIX, SWAP_TRIES, EtcdRegistry
from consul_reg.mirrors.keys import HOLDER_KEY
from consul_reg.mirrors.skydns2 import SkyDNS2Registry
from consul_reg.mirrors.worker import BLOCKED_RETRY_SECONDS, MirrorWorker

from tests.unit.fakes import FakeClock
from tests.unit.kv_stubs import Request, StubEtcd

TTL, REFRESH = 30, 10.0
HOST = Owner("h")
MARKER = f"{LEASES_PREFIX}/h/services"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def etcd(clock: FakeClock) -> Iterator[StubEtcd]:
    stub = StubEtcd(clock)
    yield stub
    stub.close()


def mirror(etcd: StubEtcd, clock: FakeClock, owner: str = HOST, prefix: str = "services") -> EtcdRegistry:
    return EtcdRegistry("127.0.0.1", etcd.port, prefix, owner, TTL, REFRESH, clock=clock)


def web(sid: str, address: str = "10.0.0.1", port: int = 80) -> Service:
    return Service(id=sid, name="web", address=address, port=port)


def snap(generation: int, *services: Service) -> Snapshot:
    return Snapshot(generation=generation, desired=MappingProxyType({s.id: s for s in services}))


def step(worker: MirrorWorker) -> None:
    """One step of the worker's thread, on the caller's."""
    snapshot, relist = worker._offer, worker._relist
    worker._relist = False
    assert snapshot is not None
    worker._step(snapshot, relist)


def txns(etcd: StubEtcd) -> list[dict]:
    return [r.json() for r in etcd.requests if r.path == "/v3/kv/txn"]


def on_nth(path: str, n: int, action) -> object:
    """A `before` hook running `action` ahead of the n-th request to `path` (1-based)."""
    seen = [0]

    def before(request: Request) -> None:
        if request.path == path:
            seen[0] += 1
            if seen[0] == n:
                action()
    return before


# -- the lease ------------------------------------------------------------------------------


def test_the_first_use_grants_a_lease_keeps_its_id_on_it_and_writes_every_key_on_it(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    assert registry.maintain() is True, "a new lease: everything is put"
    lease = int(registry.etcd.lease_id)
    assert etcd.leases[lease].ttl == TTL
    registry.register(web("web-1"))
    assert etcd.keys() == {MARKER: (str(lease), lease), "/services/web/web-1": ("10.0.0.1:80", lease)}
    assert registry.maintain() is False


def test_the_lease_is_kept_alive_every_ttl_refresh_and_outlives_its_ttl(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    lease = registry.etcd.lease_id
    clock.advance(REFRESH - 0.1)
    assert registry.maintain() is False and "/v3/lease/keepalive" not in etcd.paths(), "not before -ttl-refresh"
    assert registry.seconds_until_maintenance() == pytest.approx(0.1)
    for _ in range(12):  # 120 s: four times the TTL
        clock.advance(registry.seconds_until_maintenance())
        assert registry.maintain() is False
    assert etcd.paths().count("/v3/lease/keepalive") == 12 and etcd.paths().count("/v3/lease/grant") == 1
    assert registry.etcd.lease_id == lease and etcd.keys("/services/") == {"/services/web/web-1": ("10.0.0.1:80",
                                                                                                   int(lease))}


def test_a_lost_lease_is_replaced_and_every_key_put_again_on_the_new_one(etcd, clock) -> None:
    """The lease expired (etcd unreachable for longer than the TTL) or was revoked: etcd
    dropped every key on it. At the next keep-alive the mirror takes a new lease, relists
    and puts everything again, the marker included."""
    registry = mirror(etcd, clock)
    worker = MirrorWorker(registry, HOST, retry_interval=0.05, clock=clock)
    worker.offer(snap(1, web("web-1"), web("web-2", port=81)), relist=True)
    step(worker)
    old = int(registry.etcd.lease_id)
    assert set(etcd.keys("/services/")) == {"/services/web/web-1", "/services/web/web-2"}
    etcd.revoke(old)
    assert etcd.keys() == {}
    clock.advance(worker._due_in())  # woken for the keep-alive
    step(worker)
    new = int(registry.etcd.lease_id)
    assert new != old and registry.etcd.previous_leases == set(), "the lost lease is nobody's now"
    assert etcd.keys() == {MARKER: (str(new), new), "/services/web/web-1": ("10.0.0.1:80", new),
                           "/services/web/web-2": ("10.0.0.1:81", new)}


def test_a_write_refused_for_a_lost_lease_gets_a_new_lease_at_once(etcd, clock) -> None:
    """etcd lost the lease between two keep-alives (restarted without its data, or someone
    revoked it) and refuses a put on it: the mirror does not wait for the next keep-alive
    (a third of the TTL, 100 s by default) to take a new lease and put everything again."""
    registry = mirror(etcd, clock)
    worker = MirrorWorker(registry, HOST, retry_interval=0.05, clock=clock)
    worker.offer(snap(1, web("web-1")), relist=True)
    step(worker)
    etcd.revoke(int(registry.etcd.lease_id))
    worker.offer(snap(2, web("web-1"), web("web-2", port=81)))
    step(worker)  # the put of web-2 is refused: "requested lease not found"
    clock.advance(worker._due_in())
    assert clock.now < 1000.0 + REFRESH, "retried on the worker's backoff, not at the next keep-alive"
    step(worker)
    new = int(registry.etcd.lease_id)
    assert etcd.keys("/services/") == {"/services/web/web-1": ("10.0.0.1:80", new),
                                       "/services/web/web-2": ("10.0.0.1:81", new)}


def test_a_restarted_daemon_takes_over_its_previous_runs_keys_and_removes_the_unwanted(etcd, clock) -> None:
    first = mirror(etcd, clock)
    first.maintain()
    first.register(web("web-1"))
    first.register(web("web-2", port=81))
    previous = int(first.etcd.lease_id)
    other = etcd.grant(TTL)
    etcd.put("/services/web/theirs", "192.0.2.9:1", other)
    first.close()  # killed: its lease lives on until the TTL
    second = mirror(etcd, clock)
    worker = MirrorWorker(second, HOST, retry_interval=0.05, clock=clock)
    worker.offer(snap(1, web("web-1")), relist=True)
    step(worker)
    lease = int(second.etcd.lease_id)
    assert lease != previous and second.etcd.previous_leases == {str(previous)}
    assert etcd.keys() == {MARKER: (str(lease), lease), "/services/web/web-1": ("10.0.0.1:80", lease),
                           "/services/web/theirs": ("192.0.2.9:1", other)}
    assert worker._blocked == {}


def test_remove_all_removes_our_keys_revokes_our_leases_and_leaves_the_others(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    other = etcd.grant(TTL)
    etcd.put("/services/web/theirs", "192.0.2.9:1", other)
    registry.remove_all()
    assert etcd.keys() == {"/services/web/theirs": ("192.0.2.9:1", other)} and list(etcd.leases) == [other]


# -- compare-and-set ---------------------------------------------------------------------------


def test_a_new_key_is_put_only_while_absent_never_over_one_another_host_created_meanwhile(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    other = etcd.grant(TTL)
    etcd.before = on_nth("/v3/kv/txn", 1, lambda: etcd.put("/services/web/web-1", "192.0.2.9:1", other))
    with pytest.raises(RegistryNotOurs, match="/services/web/web-1 is held by another daemon"):
        registry.register(web("web-1"))
    assert etcd.keys("/services/") == {"/services/web/web-1": ("192.0.2.9:1", other)}
    (txn,) = txns(etcd)
    assert txn["compare"][0]["mod_revision"] == "0" and txn["compare"][0]["target"] == "MOD"


def test_our_key_is_rewritten_at_the_revision_it_was_read_at(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    revision = etcd.kvs[b"/services/web/web-1"].mod_revision
    registry.register(web("web-1", port=8080))
    lease = int(registry.etcd.lease_id)
    assert etcd.keys("/services/") == {"/services/web/web-1": ("10.0.0.1:8080", lease)}
    assert [t["compare"][0]["mod_revision"] for t in txns(etcd)] == ["0", "0", str(revision)]


def test_our_key_taken_by_another_host_between_two_tries_is_left_to_it(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    other = etcd.grant(TTL)
    # the update's first try (as a new key) finds ours; before its second, another host takes it
    etcd.before = on_nth("/v3/kv/txn", 2, lambda: etcd.put("/services/web/web-1", "192.0.2.9:1", other))
    with pytest.raises(RegistryNotOurs, match="is held by"):
        registry.register(web("web-1", port=8080))
    assert etcd.keys("/services/") == {"/services/web/web-1": ("192.0.2.9:1", other)}


def test_a_key_that_changes_at_every_try_is_left_after_the_last(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    lease = int(registry.etcd.lease_id)
    before = len(txns(etcd))

    def rewrite(request: Request) -> None:  # each try finds the key changed, still on our lease
        if request.path == "/v3/kv/txn":
            etcd.put("/services/web/web-1", "10.0.0.1:80", lease)
    etcd.before = rewrite
    with pytest.raises(RegistryNotOurs, match=f"changed under this daemon at each of {SWAP_TRIES} tries"):
        registry.register(web("web-1", port=8080))
    assert len(txns(etcd)) - before == SWAP_TRIES
    assert etcd.keys("/services/") == {"/services/web/web-1": ("10.0.0.1:80", lease)}


def test_removal_is_a_transaction_that_never_removes_a_key_taken_meanwhile(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    (listed,) = registry.services().values()
    other = etcd.grant(TTL)
    etcd.before = on_nth("/v3/kv/txn", 1, lambda: etcd.put("/services/web/web-1", "192.0.2.9:1", other))
    with pytest.raises(RegistryNotOurs, match="is now held by another daemon"):
        registry.deregister(listed)
    assert etcd.keys("/services/") == {"/services/web/web-1": ("192.0.2.9:1", other)}
    assert "/v3/kv/deleterange" not in etcd.paths()


def test_our_key_is_removed_at_the_revision_read(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    registry.register(web("web-1"))
    (listed,) = registry.services().values()
    revision = etcd.kvs[b"/services/web/web-1"].mod_revision
    registry.deregister(listed)
    assert etcd.keys("/services/") == {}
    last = txns(etcd)[-1]
    assert last["compare"][0]["mod_revision"] == str(revision) and "request_delete_range" in last["success"][0]


@pytest.mark.parametrize("lease", ["another", "none"])
def test_a_key_on_another_lease_or_on_none_is_never_removed(etcd, clock, lease: str) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    held = etcd.grant(TTL) if lease == "another" else 0
    etcd.put("/services/web/web-1", "192.0.2.9:1", held)
    record = RegisteredService(id="/services/web/web-1", name="web")
    with pytest.raises(RegistryNotOurs, match="not removed"):
        registry.deregister(record)
    assert etcd.keys("/services/") == {"/services/web/web-1": ("192.0.2.9:1", held)}
    assert txns(etcd) == []


def test_the_listing_tells_ours_from_others_and_names_the_holders(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    ours = int(registry.etcd.lease_id)
    other = etcd.grant(TTL)
    etcd.put("/services/web/mine", "10.0.0.1:80", ours)
    etcd.put("/services/web/theirs", "192.0.2.9:1", other)
    etcd.put("/services/web/by-hand", "192.0.2.9:2")
    etcd.put("/services/web/h:web:80", "192.0.2.9:3", other)  # this host's default ID: taken back
    etcd.put("/services2/web/mine", "10.0.0.1:80", ours)  # another prefix that shares the text
    listed = registry.services()
    assert sorted(listed) == ["/services/web/by-hand", "/services/web/h:web:80", "/services/web/mine",
                              "/services/web/theirs"]
    assert {k for k, r in listed.items() if r.owned_by(HOST)} == {"/services/web/mine", "/services/web/h:web:80"}
    assert listed["/services/web/theirs"].meta[HOLDER_KEY] == f"etcd lease {other}"
    assert listed["/services/web/by-hand"].meta[HOLDER_KEY] == "a key on no lease (not consul-reg's)"
    blue = Owner("h", "blue")
    assert not mirror(etcd, clock, blue).services()["/services/web/h:web:80"].owned_by(blue), \
        "another --instance of the host takes nothing back"


def test_the_holder_of_a_contested_key_is_named_from_its_lease_marker(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    registry.maintain()
    theirs = etcd.grant(TTL)
    etcd.put(f"{LEASES_PREFIX}/h2/services", str(theirs), theirs)
    etcd.put("/services/web/web-1", "192.0.2.9:1", theirs)
    with pytest.raises(RegistryNotOurs) as refused:
        registry.register(web("web-1"))
    assert f"host 'h2''s consul-reg (etcd lease {theirs}, value '192.0.2.9:1')" in str(refused.value)


def test_the_worker_writes_around_a_key_another_host_holds_and_takes_it_once_released(etcd, clock) -> None:
    registry = mirror(etcd, clock)
    worker = MirrorWorker(registry, HOST, retry_interval=0.05, clock=clock)
    other = etcd.grant(TTL)
    etcd.put("/services/web/web-1", "192.0.2.9:1", other)
    worker.offer(snap(1, web("web-1"), web("web-2", port=81)), relist=True)
    step(worker)
    lease = int(registry.etcd.lease_id)
    assert etcd.keys("/services/") == {"/services/web/web-1": ("192.0.2.9:1", other),
                                       "/services/web/web-2": ("10.0.0.1:81", lease)}
    etcd.revoke(other)  # the other host is gone
    assert worker._due_in() == BLOCKED_RETRY_SECONDS
    clock.advance(BLOCKED_RETRY_SECONDS)
    step(worker)
    assert etcd.keys("/services/") == {"/services/web/web-1": ("10.0.0.1:80", lease),
                                       "/services/web/web-2": ("10.0.0.1:81", lease)}


def test_an_offer_arriving_during_a_write_is_applied_right_after_it(etcd, clock) -> None:
    """Offers are numbered: the one made while the worker is inside a transaction is
    pending when that step ends, and the next step writes it."""
    registry = mirror(etcd, clock)
    worker = MirrorWorker(registry, HOST, retry_interval=0.05, clock=clock)
    worker.offer(snap(1, web("web-1")), relist=True)
    etcd.before = on_nth("/v3/kv/txn", 1, lambda: worker.offer(snap(2, web("web-2", port=81))))
    step(worker)
    assert set(etcd.keys("/services/")) == {"/services/web/web-1"}
    assert worker._due_in() == 0, "snapshot 2 is pending"
    step(worker)
    assert set(etcd.keys("/services/")) == {"/services/web/web-2"} and worker._due_in() == REFRESH


# -- SkyDNS2 -----------------------------------------------------------------------------------


def test_skydns2_puts_dns_records_on_the_lease_under_the_reversed_domain(etcd, clock) -> None:
    registry = SkyDNS2Registry("127.0.0.1", etcd.port, "skydns.local", HOST, TTL, 60, REFRESH, clock=clock)
    worker = MirrorWorker(registry, HOST, retry_interval=0.05, clock=clock)
    worker.offer(snap(1, web("web-1"), Service(id="web_1", name="web", address="10.0.0.1", port=81)), relist=True)
    step(worker)
    lease = int(registry.etcd.lease_id)
    ((key, (value, on)),) = etcd.keys("/skydns/").items()
    assert key == "/skydns/local/skydns/web/web-1" and on == lease
    assert json.loads(value) == {"host": "10.0.0.1", "port": 80, "ttl": 60}
    assert etcd.keys(LEASES_PREFIX) == {f"{LEASES_PREFIX}/h/skydns/local/skydns": (str(lease), lease)}


def test_skydns2_leaves_a_record_another_host_holds(etcd, clock) -> None:
    registry = SkyDNS2Registry("127.0.0.1", etcd.port, "skydns.local", HOST, TTL, 0, REFRESH, clock=clock)
    registry.maintain()
    other = etcd.grant(TTL)
    etcd.put("/skydns/local/skydns/web/web-1", '{"host":"192.0.2.9"}', other)
    with pytest.raises(RegistryNotOurs):
        registry.register(web("web-1"))
    record = RegisteredService(id="/skydns/local/skydns/web/web-1", name="web")
    with pytest.raises(RegistryNotOurs):
        registry.deregister(record)
    assert etcd.keys("/skydns/") == {"/skydns/local/skydns/web/web-1": ('{"host":"192.0.2.9"}', other)}
