"""The drainer with a fake agent behind the ownership guard and a fake clock: a
drain ends at its timeout, at the container's death, or at once when the container
starts again; maintenance goes only on records the guard reads as ours, and
clearing reads the agent once for all the drains that end together."""

from __future__ import annotations

from consul_reg.sync.drain import Drainer
from consul_reg.core.records import Owner, RegisteredService, marker_meta
from consul_reg.consul.guard import OwnershipGuard
from tests.unit.fakes import FakeAgent, FakeClock

OWNER = Owner("h")


def ours(agent: FakeAgent, container_id: str, *service_ids: str) -> None:
    """Records of this daemon for `container_id`, as the agent lists them."""
    for service_id in service_ids:
        agent.records[service_id] = RegisteredService(service_id, "web", meta=marker_meta("h", container_id))


def draining() -> tuple[FakeClock, FakeAgent, Drainer]:
    clock, agent = FakeClock(), FakeAgent()
    ours(agent, "c1", "s1", "s2")
    drainer = Drainer(OwnershipGuard(agent, OWNER), timeout=30, clock=clock)
    drainer.on_kill("web", "c1", ("s1", "s2"), "15", "")
    assert set(agent.maintenance) == {"s1", "s2"} and drainer.next_deadline() == clock.now + 30
    return clock, agent, drainer


def test_a_start_ends_the_drain_at_once_and_clears_only_its_own_maintenance() -> None:
    clock, agent, drainer = draining()
    agent.maintenance["s2"] = "operator: disk swap"
    clock.advance(1)
    drainer.on_start("c1")
    assert agent.maintenance == {"s2": "operator: disk swap"} and drainer.next_deadline() is None
    clock.advance(60)
    drainer.expire()
    assert agent.maintenance == {"s2": "operator: disk swap"}


def test_a_start_of_a_container_not_draining_writes_nothing() -> None:
    _, agent, drainer = draining()
    drainer.on_start("other")
    assert set(agent.maintenance) == {"s1", "s2"}
    assert not [c for c in agent.calls if c[0] not in ("maintenance on", "services matching")]


def test_a_death_forgets_the_drain() -> None:
    clock, agent, drainer = draining()
    drainer.on_die("c1")
    assert drainer.next_deadline() is None
    agent.maintenance.clear()  # the deregistration removed them
    drainer.on_start("c1")
    clock.advance(60)
    drainer.expire()
    assert not [c for c in agent.calls if c[0] not in ("maintenance on", "services matching")]


def test_a_second_kill_while_draining_keeps_the_first_deadline() -> None:
    clock, agent, drainer = draining()
    clock.advance(10)
    drainer.on_kill("web", "c1", ("s1", "s2"), "15", "")
    assert drainer.next_deadline() == clock.now + 20
    assert agent.calls.count(("maintenance on", "s1")) == 1


def test_maintenance_goes_only_on_records_the_guard_reads_as_ours_for_that_container() -> None:
    """The loop's listing can be older than an operator's registration of the same ID
    (-resync 0): the guard's read at the stop is what counts. Not ours: registered by
    hand since, another daemon's, or ours for another container."""
    clock, agent = FakeClock(), FakeAgent()
    ours(agent, "c1", "mine")
    ours(agent, "c2", "sibling")
    agent.records["taken"] = RegisteredService("taken", "payments")  # by hand, after the loop's listing
    agent.records["other"] = RegisteredService("other", "x", meta=marker_meta("h2", "c1"))
    drainer = Drainer(OwnershipGuard(agent, OWNER), timeout=30, clock=clock)
    drainer.on_kill("web", "c1", ("mine", "taken", "other", "sibling", "gone"), "SIGTERM", "")
    assert set(agent.maintenance) == {"mine"}
    assert [c for c in agent.calls if c[0] == "services matching"] == [
        ("services matching", "gone,mine,other,sibling,taken")], "one read for the whole stop"
    clock.advance(31)
    drainer.expire()
    assert agent.maintenance == {} and ("maintenance off", "mine") in agent.calls
    assert not [c for c in agent.writes() if c[1] != "mine"]


def test_clearing_reads_the_agent_once_for_every_drain_that_ends_together() -> None:
    clock, agent = FakeClock(), FakeAgent()
    drainer = Drainer(OwnershipGuard(agent, OWNER), timeout=30, clock=clock)
    for container in ("c1", "c2", "c3", "c4"):
        ids = tuple(f"{container}-{port}" for port in range(3))
        ours(agent, container, *ids)
        drainer.on_kill(container, container, ids, "15", "")
    assert len(agent.maintenance) == 12
    agent.maintenance["c1-0"] = "operator: disk swap"
    clock.advance(31)
    drainer.expire()  # all four drains end together
    drainer.on_kill("c1", "c1", ("c1-1",), "15", "")
    drainer.on_kill("c2", "c2", ("c2-1",), "15", "")
    drainer.on_start("c1", "c2")  # a batch that restarted both
    reads = [c for c in agent.calls if c[0] == "maintenance reasons"]
    assert len(reads) == 2, reads
    assert agent.maintenance == {"c1-0": "operator: disk swap"}
    assert len([c for c in agent.calls if c[0] == "maintenance off"]) == 11 + 2
