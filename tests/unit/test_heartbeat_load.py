"""The agent cannot keep up with the TTL updates asked: one clear warning naming
the settings to change, the metrics' figures; a burst it absorbs is no overload."""

from __future__ import annotations

import pytest
from loguru import logger

from consul_reg.probes.scheduler import ProbeScheduler
from consul_reg.probes.load import LoadWatch
from tests.unit.fakes import FakeAgent, FakeClock, FakeDocker
from tests.unit.test_heartbeat import running, worker


@pytest.fixture
def lines():
    captured: list[str] = []
    sink = logger.add(lambda message: captured.append(str(message)), level="INFO", format="{level} {message}")
    yield captured
    logger.remove(sink)


def window(watch: LoadWatch, clock: FakeClock, sent: int, late: int, lateness: float = 4.0) -> None:
    for n in range(sent):
        watch.sent(lateness if n < late else 0.01)
    clock.advance(30)


def test_an_agent_serving_less_than_asked_gets_one_warning_naming_the_settings(lines) -> None:
    clock = FakeClock()
    loads: list[tuple[float, float, bool]] = []
    watch = LoadWatch(clock, lambda *load: loads.append(load))
    window(watch, clock, sent=2700, late=2000)  # 90/s served
    watch.tick(lambda: 200.0, 2000)
    assert loads == [(200.0, 90.0, True)] and watch.overloaded
    warning = [line for line in lines if line.startswith("WARNING")]
    assert len(warning) == 1 and "SERVICE_HEARTBEAT_INTERVAL" in warning[0] and "-resync" in warning[0]
    assert "90 TTL updates/s" in warning[0] and "ask for 200/s" in warning[0]
    for _ in range(5):  # it lasts: no new warning before REPEAT_SECONDS
        window(watch, clock, sent=2700, late=2000)
        watch.tick(lambda: 200.0, 2000)
    assert len([line for line in lines if line.startswith("WARNING")]) == 1
    window(watch, clock, sent=1500, late=0)  # the intervals were lengthened: 50/s asked, all in time
    watch.tick(lambda: 50.0, 2000)
    assert not watch.overloaded and loads[-1] == (50.0, 50.0, False)
    assert any(line.startswith("INFO") and "keeps up" in line for line in lines)


def test_a_burst_the_agent_absorbs_is_no_overload(lines) -> None:
    clock = FakeClock()
    watch = LoadWatch(clock)
    window(watch, clock, sent=2000, late=1500)  # every check reported at once after a restart, late
    watch.tick(lambda: 50.0, 500)  # but only 50/s are asked: the agent serves more
    assert not watch.overloaded and not [line for line in lines if line.startswith("WARNING")]


def test_nothing_is_judged_before_a_window_ends() -> None:
    clock = FakeClock()
    loads: list = []
    watch = LoadWatch(clock, lambda *load: loads.append(load))
    watch.sent(10.0)
    clock.advance(29)
    watch.tick(lambda: 100.0, 1)
    assert loads == []


def test_the_scheduler_reports_the_rate_its_checks_ask_and_what_went_out() -> None:
    clock = FakeClock()
    agent = FakeAgent()
    loads: list[tuple[float, float, bool]] = []
    probes = ProbeScheduler(agent, FakeDocker(), lambda *a: None, clock=clock, on_load=lambda *l: loads.append(l))
    for n in range(100):
        service = worker(n, interval=2.0)
        agent.checks[service.checks[0].check_id] = ("critical", "")
        probes.set_container(service.container_id, [service], running())
    assert probes.asked_rate() == pytest.approx(50.0)
    for _ in range(300):  # 30 s in steps of 0.1 s: every check reports on time
        probes.run_due()
        clock.advance(0.1)
    probes.run_due()
    asked, served, overloaded = loads[-1]
    assert asked == pytest.approx(50.0) and 40 < served < 60 and not overloaded


def test_first_reports_queued_behind_a_slow_agent_do_not_stay_a_herd() -> None:
    """The random phase after a check's first report counts from its delivery: the
    checks whose first report waited behind the others are not all due again at once."""
    clock = FakeClock()
    agent = FakeAgent()
    update = agent.update_check

    def slow(check_id: str, status: str, output: str) -> None:
        if agent.updates < 40:
            clock.advance(0.5)  # each first report takes half a second to be answered
        update(check_id, status, output)

    agent.update_check = slow  # type: ignore[method-assign]
    probes = ProbeScheduler(agent, FakeDocker(), lambda *a: None, clock=clock)
    delivered: dict[str, float] = {}
    for n in range(40):
        service = worker(n, interval=10.0)
        agent.checks[service.checks[0].check_id] = ("critical", "")
        probes.set_container(service.container_id, [service], running())
    with probes._wake:  # the first round only: take the 40 first reports due now
        firsts = [probes._take_due() for _ in range(40)]
    for task, status, _, due in firsts:  # type: ignore[misc]
        probes._send(task, *probes._status_of(task.probe, status), due)
    assert clock.now == 1000.0 + 40 * 0.5  # all 40 first reports went out, one after another
    for n in range(40):
        check = f"service:w{n}:heartbeat"
        delivered[check] = 1000.0 + (n + 1) * 0.5
        due = probes._due_at[check]
        assert delivered[check] + 1.0 <= due <= delivered[check] + 10.0, (check, due)
