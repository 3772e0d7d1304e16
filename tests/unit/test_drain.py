"""The drainer with a fake agent and a fake clock: a drain ends at its timeout,
at the container's death, or at once when the container starts again."""

from __future__ import annotations

from consul_reg.drain import REASON_PREFIX, Drainer
from tests.unit.fakes import FakeAgent, FakeClock


def draining() -> tuple[FakeClock, FakeAgent, Drainer]:
    clock, agent = FakeClock(), FakeAgent()
    drainer = Drainer(agent, timeout=30, clock=clock)
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
    assert not [c for c in agent.calls if c[0] != "maintenance on"]


def test_a_death_whose_records_are_kept_stays_in_maintenance_until_a_start() -> None:
    clock, agent, drainer = draining()
    drainer.on_die("c1", records_kept=True)
    assert drainer.next_deadline() is None, "a dead container's drain has no timeout to wake for"
    clock.advance(3600)
    drainer.expire()
    assert set(agent.maintenance) == {"s1", "s2"}
    drainer.on_start("c1")
    assert agent.maintenance == {}


def test_a_death_without_kept_records_forgets_the_drain() -> None:
    clock, agent, drainer = draining()
    drainer.on_die("c1")
    agent.maintenance.clear()  # the deregistration removed them
    drainer.on_start("c1")
    clock.advance(60)
    drainer.expire()
    assert not [c for c in agent.calls if c[0] != "maintenance on"]


def test_a_kept_drain_is_forgotten_with_its_container() -> None:
    _, agent, drainer = draining()
    drainer.on_kill("db", "c2", ("s3",), "TERM", "")
    drainer.on_die("c1", records_kept=True)
    drainer.on_die("c2", records_kept=True)
    drainer.forget("c1")
    drainer.keep_only({"c1"})  # a full pass no longer lists c2
    drainer.on_start("c1")
    drainer.on_start("c2")
    assert set(agent.maintenance) == {"s1", "s2", "s3"}, "a drain outlived its container"


def test_a_kill_after_a_missed_start_drains_again() -> None:
    clock, agent, drainer = draining()
    drainer.on_die("c1", records_kept=True)
    agent.maintenance.clear()
    drainer.on_kill("web", "c1", ("s1",), "15", "")  # its start event was missed
    assert agent.maintenance["s1"].startswith(REASON_PREFIX) and drainer.next_deadline() == clock.now + 30
