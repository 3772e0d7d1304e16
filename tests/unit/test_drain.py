"""The drainer with a fake agent and a fake clock: a drain ends at its timeout,
at the container's death, or at once when the container starts again."""

from __future__ import annotations

from consul_reg.drain import Drainer
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


def test_a_death_forgets_the_drain() -> None:
    clock, agent, drainer = draining()
    drainer.on_die("c1")
    assert drainer.next_deadline() is None
    agent.maintenance.clear()  # the deregistration removed them
    drainer.on_start("c1")
    clock.advance(60)
    drainer.expire()
    assert not [c for c in agent.calls if c[0] != "maintenance on"]


def test_a_second_kill_while_draining_keeps_the_first_deadline() -> None:
    clock, agent, drainer = draining()
    clock.advance(10)
    drainer.on_kill("web", "c1", ("s1", "s2"), "15", "")
    assert drainer.next_deadline() == clock.now + 20
    assert agent.calls.count(("maintenance on", "s1")) == 1
